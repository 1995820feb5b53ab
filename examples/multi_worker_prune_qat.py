"""Train a pruned, quantization-aware digits classifier on two workers.

Run it with:

    python examples/multi_worker_prune_qat.py

The script plays two roles.

- Run plainly, it is the launcher. It picks two free ports on 127.0.0.1,
  starts itself twice with `--worker`, each time with its own `TF_CONFIG`
  (worker 0 is the chief), and waits for both. It then loads the chief's
  `.keras` file, exports it to a full-int8 TFLite file and compares the two
  on the digits test split. It stops both workers if they run past
  `--timeout`.
- Run with `--worker`, it is one worker of the cluster that `TF_CONFIG`
  describes. On a real cluster, start it that way once per machine and set
  `--output-dir` to a folder that every worker can read and write.

Each worker trains in two stages under
`keras_cost.distribute.strategy_from_environment()`, a
`MultiWorkerMirroredStrategy` that Keras 3 `model.fit` can run under:

1. Pruning. `PruneCallback` raises the sparsity of every kernel from 0 to
   50%. The masks are kernel constraints, so they hold inside every
   training step and are identical on both workers.
2. Quantization-aware training (QAT). `quantize_model` wraps the pruned
   layers in `QuantizeWrapper`s, which keep the pruning constraints, and a
   short fine-tuning teaches the model its int8 ranges.

`MultiWorkerBackupAndRestore` lets a restarted run resume after a worker
fails, and `save_model_on_chief` keeps only the chief's `.keras` file. Each
worker also writes `worker_<index>.json` with a checksum of its weights, so
the launcher can show that both workers ended with the same model.

Both workers share the machine's CPUs, so this shows the mechanics of
multi-worker training, not a speed-up. Only loopback addresses are used.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

NUM_WORKERS = 2
# Every worker receives GLOBAL_BATCH_SIZE / NUM_WORKERS examples per step.
GLOBAL_BATCH_SIZE = 64
TARGET_SPARSITY = 0.5
SEED = 0
MODEL_FILE = "pruned_qat.keras"
TFLITE_FILE = "pruned_qat_int8.tflite"
SUMMARY_FILE = "summary.json"
# Digits examples used to calibrate the int8 model's input range.
NUM_CALIBRATION_EXAMPLES = 256


# The worker.


def build_model():
    """Build and compile a small digits classifier in the current strategy scope."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_mlp",
    )
    compile_model(model, learning_rate=0.01)
    return model


def compile_model(model, learning_rate):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def steps_per_epoch(num_examples):
    return -(-num_examples // GLOBAL_BATCH_SIZE)


def fit(model, x, y, epochs, callbacks):
    # Every worker must see the same global batches in the same order, so
    # the data is not shuffled here. The digits loader already returns it in
    # a random order.
    history = model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH_SIZE,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return history.history


def prune(strategy, x, y, epochs, backup_dir):
    """Stage 1: train and prune every kernel to `TARGET_SPARSITY`."""
    import keras_cost
    from keras_cost.distribute import MultiWorkerBackupAndRestore
    from keras_cost.pruning import PolynomialDecay

    with strategy.scope():
        model = build_model()
    # Reach the target one epoch before the end, so the last epoch trains
    # the remaining weights at the final sparsity.
    end_step = max((epochs - 1) * steps_per_epoch(len(x)), 1)
    schedule = PolynomialDecay(
        0.0, TARGET_SPARSITY, begin_step=0, end_step=end_step, frequency=5
    )
    callbacks = [
        # First, so that the pruning callback starts from the restored step.
        MultiWorkerBackupAndRestore(backup_dir),
        keras_cost.PruneCallback(schedule),
    ]
    history = fit(model, x, y, epochs, callbacks)
    return model, history


def quantization_aware_training(strategy, model, x, y, epochs, backup_dir):
    """Stage 2: fine-tune a fake-quantized copy of the pruned model."""
    from keras_cost.distribute import MultiWorkerBackupAndRestore
    from keras_cost.quantization import quantize_model

    with strategy.scope():
        # The copy keeps each layer's PruningMask constraint, so the pruned
        # weights stay at exactly 0.0 while the ranges are learned.
        qat_model = quantize_model(model)
        compile_model(qat_model, learning_rate=0.001)
    history = fit(qat_model, x, y, epochs, [MultiWorkerBackupAndRestore(backup_dir)])
    return qat_model, history


def weights_checksum(model):
    """Return a float64 sum of all weights, equal on workers with equal weights."""
    return float(sum(np.asarray(w, dtype="float64").sum() for w in model.get_weights()))


def run_worker(args):
    """Train on this worker and save the result on the chief."""
    import keras

    import keras_cost
    from keras_cost import distribute

    # Build the strategy before any other TensorFlow op runs.
    strategy = distribute.strategy_from_environment()
    tf_config = distribute.read_tf_config()
    task_index = tf_config["task"]["index"] if tf_config else 0
    chief = distribute.is_chief(strategy)
    output_dir = pathlib.Path(args.output_dir)

    # The same seed on every worker gives the same initial weights.
    keras.utils.set_random_seed(SEED)
    (x_train, y_train), (x_test, y_test) = keras_cost.datasets.load_digits()

    model, prune_history = prune(
        strategy, x_train, y_train, args.prune_epochs, output_dir / "backup_prune"
    )
    if chief:
        print(f"pruning: {prune_history}", flush=True)
    qat_model, qat_history = quantization_aware_training(
        strategy, model, x_train, y_train, args.qat_epochs, output_dir / "backup_qat"
    )
    if chief:
        print(f"QAT: {qat_history}", flush=True)

    # `evaluate` and the save read synchronized metric variables, which
    # starts a collective, so every worker runs them.
    _, test_accuracy = qat_model.evaluate(
        x_test, y_test, batch_size=GLOBAL_BATCH_SIZE, verbose=0
    )
    distribute.save_model_on_chief(qat_model, output_dir / MODEL_FILE)

    report = {
        "task_index": task_index,
        "is_chief": chief,
        "replicas": strategy.num_replicas_in_sync,
        "steps": int(qat_model.optimizer.iterations.numpy()),
        "prune_sparsity": prune_history["sparsity"][-1],
        "qat_loss": qat_history["loss"][-1],
        "test_accuracy": float(test_accuracy),
        "weights_checksum": weights_checksum(qat_model),
    }
    # Each worker writes its own file, so no two workers write the same path.
    (output_dir / f"worker_{task_index}.json").write_text(json.dumps(report, indent=2))


# The launcher.


def free_ports(count):
    """Return `count` distinct TCP ports that were free on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_workers(args, output_dir):
    addresses = [f"127.0.0.1:{port}" for port in free_ports(NUM_WORKERS)]
    worker_args = [
        "--worker",
        "--output-dir", str(output_dir),
        "--prune-epochs", str(args.prune_epochs),
        "--qat-epochs", str(args.qat_epochs),
    ]
    processes = []
    try:
        for index in range(NUM_WORKERS):
            tf_config = {
                "cluster": {"worker": addresses},
                "task": {"type": "worker", "index": index},
            }
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
            # Both workers share this machine's CPUs and no GPU.
            env["CUDA_VISIBLE_DEVICES"] = ""
            with open(output_dir / f"worker_{index}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, os.path.abspath(__file__), *worker_args],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            print(f"started worker {index} (pid {processes[-1].pid}) on {addresses[index]}")
    except BaseException:
        stop_workers(processes)
        raise
    return processes


def stop_workers(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def log_tail(output_dir, index):
    return (output_dir / f"worker_{index}.log").read_text(errors="replace")[-3000:]


def wait_for_workers(processes, output_dir, timeout):
    """Wait for every worker and return an error message, or None on success."""
    deadline = time.monotonic() + timeout
    for index, process in enumerate(processes):
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            code = process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return (
                f"worker {index} timed out after {timeout} s and was stopped. "
                f"Raise --timeout on a slow machine. Log tail:\n"
                f"{log_tail(output_dir, index)}"
            )
        if code != 0:
            # A worker that failed leaves its peer waiting in a collective.
            return f"worker {index} failed with exit status {code}. Log tail:\n{log_tail(output_dir, index)}"
    return None


def evaluate_int8(output_dir):
    """Export the chief's model to int8 TFLite and compare it with Keras."""
    import keras

    import keras_cost
    from keras_cost.quantization import TFLiteModel, export_tflite

    # A fresh process with no custom scope: importing keras_cost is enough.
    model = keras.models.load_model(output_dir / MODEL_FILE)
    (x_train, _), (x_test, y_test) = keras_cost.datasets.load_digits()

    keras_logits = model.predict(x_test, verbose=0)
    export_tflite(
        model,
        output_dir / TFLITE_FILE,
        representative_data=x_train[:NUM_CALIBRATION_EXAMPLES],
        quantize="int8",
    )
    int8_logits = TFLiteModel(str(output_dir / TFLITE_FILE)).predict(x_test)

    keras_predictions = keras_logits.argmax(axis=-1)
    int8_predictions = int8_logits.argmax(axis=-1)
    return {
        "sparsity": keras_cost.pruning.sparsity(model).overall,
        "keras_accuracy": float((keras_predictions == y_test).mean()),
        "int8_accuracy": float((int8_predictions == y_test).mean()),
        "int8_agreement": float((int8_predictions == keras_predictions).mean()),
        "tflite_bytes": (output_dir / TFLITE_FILE).stat().st_size,
    }


def run_launcher(args):
    output_dir = pathlib.Path(
        args.output_dir or tempfile.mkdtemp(prefix="multi_worker_prune_qat_")
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"writing to {output_dir}")

    start = time.monotonic()
    processes = start_workers(args, output_dir)
    try:
        error = wait_for_workers(processes, output_dir, args.timeout)
    finally:
        stop_workers(processes)
    if error:
        print(error, file=sys.stderr)
        return 1
    train_seconds = time.monotonic() - start

    workers = [
        json.loads((output_dir / f"worker_{index}.json").read_text())
        for index in range(NUM_WORKERS)
    ]
    summary = {
        "train_seconds": train_seconds,
        "workers": workers,
        "workers_identical": len({w["weights_checksum"] for w in workers}) == 1,
        **evaluate_int8(output_dir),
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))

    print(f"both workers finished in {train_seconds:.0f} s, {workers[0]['steps']} QAT steps")
    print(f"weights identical on both workers: {summary['workers_identical']}")
    print(f"kernel sparsity: {summary['sparsity']:.3f}")
    print(f"test accuracy: Keras QAT {summary['keras_accuracy']:.3f}, int8 TFLite {summary['int8_accuracy']:.3f}")
    print(f"int8 predictions equal to Keras: {summary['int8_agreement']:.3f}")
    print(f"int8 model: {output_dir / TFLITE_FILE} ({summary['tflite_bytes']} bytes)")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    parser.add_argument(
        "--worker",
        action="store_true",
        help="run as one worker of the cluster in TF_CONFIG instead of launching two",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="folder for the model, backups and reports. Defaults to a new temporary folder",
    )
    parser.add_argument("--prune-epochs", type=int, default=4, help="epochs of pruning, at least 2")
    parser.add_argument("--qat-epochs", type=int, default=2, help="epochs of QAT, at least 1")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds the launcher waits for both workers before stopping them",
    )
    args = parser.parse_args(argv)

    if args.prune_epochs < 2:
        parser.error(f"--prune-epochs must be at least 2. Received: {args.prune_epochs}")
    if args.qat_epochs < 1:
        parser.error(f"--qat-epochs must be at least 1. Received: {args.qat_epochs}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive. Received: {args.timeout}")

    if args.worker and not os.environ.get("TF_CONFIG"):
        parser.error("--worker needs TF_CONFIG, which describes the cluster and this task")
    if args.worker and not args.output_dir:
        parser.error("--worker needs --output-dir, a folder shared by all workers")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    return run_launcher(args)


if __name__ == "__main__":
    sys.exit(main())
