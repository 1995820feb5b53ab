"""One training worker for the multi-worker tests, started as a subprocess.

Usage: python _worker.py OUT_DIR [--stock] [--epochs N] [--backup DIR]
[--crash-after-epoch K] [--prune] [--worker-1-backup DIR] [--expect-error]
[--checkpoint]

The task comes from `TF_CONFIG`, or the process trains alone without it.
Results go to OUT_DIR/result_<task index>.npz. The model, data and initial
weights come from seeded NumPy only, so every process and the reference
run in the test start from the same values.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

GLOBAL_BATCH_SIZE = 16
NUM_EXAMPLES = 64
NUM_FEATURES = 8
NUM_CLASSES = 3
# Exit status of a worker that stops itself to simulate a failure.
CRASH_EXIT_CODE = 3


def make_data(num_examples=NUM_EXAMPLES):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_examples, NUM_FEATURES)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(num_examples,)).astype("int64")
    return x, y


def build_model():
    """Build and compile the test model in the current strategy scope."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(1)
    model.set_weights(
        [
            rng.normal(scale=0.5, size=w.shape).astype("float32")
            for w in model.get_weights()
        ]
    )
    return model


def fit(model, epochs, callbacks=(), num_examples=NUM_EXAMPLES):
    """Fit the test model the same way in every process and return the history."""
    x, y = make_data(num_examples)
    history = model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH_SIZE,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )
    return history.history


def make_prune_callback():
    """Prune both kernels to 50%, updating the masks every 2 steps."""
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import ConstantSparsity

    return PruneCallback(ConstantSparsity(0.5, begin_step=0, frequency=2))


def kernel_masks(model):
    """Return each Dense kernel's pruning mask as a NumPy array."""
    return [layer.kernel.constraint.mask.numpy() for layer in model.layers]


def _make_callbacks(args):
    import keras

    from keras_cost.distribute import MultiWorkerBackupAndRestore
    from keras_cost.distribute import MultiWorkerModelCheckpoint

    start = {}

    class RecordStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            start["iterations"] = int(self.model.optimizer.iterations.numpy())

    class CrashAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == args.crash_after_epoch:
                sys.stdout.flush()
                os._exit(CRASH_EXIT_CODE)

    callbacks = []
    if args.backup:
        # First, so that the other callbacks start from the restored state.
        callbacks.append(MultiWorkerBackupAndRestore(args.backup))
    if args.prune:
        callbacks.append(make_prune_callback())
    if args.checkpoint:
        checkpoint_path = os.path.join(args.out_dir, "checkpoint_{epoch}.keras")
        callbacks.append(MultiWorkerModelCheckpoint(checkpoint_path))
    callbacks.append(RecordStart())
    if args.crash_after_epoch:
        callbacks.append(CrashAfterEpoch())
    return callbacks, start


def reduce_examples(strategy):
    """Reduce nested and 0-d per-replica values as Keras 3 `fit` does."""
    import tensorflow as tf

    def replica_value():
        context = tf.distribute.get_replica_context()
        return tf.cast(context.replica_id_in_sync_group, "float32") + 1.0

    values = strategy.run(replica_value)
    nested_sum = strategy.reduce("SUM", (values, {"value": values}), axis=None)
    scalar_mean = strategy.reduce("MEAN", values, axis=0)
    return {
        "nested_sum_0": float(nested_sum[0]),
        "nested_sum_1": float(nested_sum[1]["value"]),
        "scalar_mean": float(scalar_mean),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backup", default="")
    # Lets worker 1 restore from another folder than the chief.
    parser.add_argument("--worker-1-backup", default="")
    parser.add_argument("--crash-after-epoch", type=int, default=0)
    parser.add_argument("--prune", action="store_true")
    parser.add_argument("--checkpoint", action="store_true")
    # Store a ValueError from `fit` in the result instead of failing.
    parser.add_argument("--expect-error", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    from keras_cost import distribute

    tf_config = distribute.read_tf_config()
    task_index = tf_config["task"]["index"] if tf_config else 0
    if task_index == 1 and args.worker_1_backup:
        args.backup = args.worker_1_backup
    result_path = os.path.join(args.out_dir, f"result_{task_index}.npz")

    if args.stock:
        # The strategy Keras users reach for first, without the workaround.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = distribute.strategy_from_environment()
    with strategy.scope():
        model = build_model()

    callbacks, start = _make_callbacks(args)
    if args.expect_error:
        try:
            fit(model, args.epochs, callbacks)
        except ValueError as error:
            np.savez(result_path, error=str(error))
            return
        raise SystemExit("fit ended without the expected ValueError")
    history = fit(model, args.epochs, callbacks)

    distribute.save_model_on_chief(model, os.path.join(args.out_dir, "model.keras"))
    reduced = reduce_examples(strategy)
    if args.prune:
        reduced.update(
            {f"mask_{i}": mask for i, mask in enumerate(kernel_masks(model))}
        )
    np.savez(
        result_path,
        *model.get_weights(),
        iterations=int(model.optimizer.iterations.numpy()),
        start_iterations=start["iterations"],
        is_chief=distribute.is_chief(strategy),
        replicas=strategy.num_replicas_in_sync,
        history=json.dumps(history),
        **reduced,
    )


if __name__ == "__main__":
    main()
