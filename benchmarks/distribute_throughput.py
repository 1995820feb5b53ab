"""Training throughput of Keras 3 `fit` on 1 and 2 replicas, for information.

Usage: python benchmarks/distribute_throughput.py [--epochs N] [--batch-size B]

Trains a small CNN on the bundled digits images (1,437 training images) and
prints examples per second, measured over every epoch but the first (which
includes tracing), for:

- 1 replica: the default strategy, one process;
- 2 replicas: `tf.distribute.MirroredStrategy` over two logical CPU devices
  in one process;
- 2 replicas: two worker processes on 127.0.0.1 under
  `keras_cost.distribute.MultiWorkerMirroredStrategy`.

The batch size is global: each of 2 replicas gets half of it. On a machine
whose CPU cores are shared, 2 replicas give no speed-up. So the numbers show
the cost of the distribution machinery, not a scaling result.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from keras_cost import distribute
from keras_cost.datasets import load_digits

WORKER_TIMEOUT_S = 600


class EpochTimer(keras.callbacks.Callback):
    """Record the wall time of every epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def build_model():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def measure(strategy, epochs, batch_size):
    """Fit under `strategy` and return the examples per second after epoch 1."""
    (x, y), _ = load_digits()
    with strategy.scope():
        model = build_model()
    timer = EpochTimer()
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    return len(x) * (epochs - 1) / sum(timer.seconds[1:])


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def measure_two_workers(epochs, batch_size):
    """Run two workers of this script on 127.0.0.1 and return the chief's rate."""
    addresses = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    try:
        for index in range(2):
            tf_config = {
                "cluster": {"worker": addresses},
                "task": {"type": "worker", "index": index},
            }
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        "--epochs",
                        str(epochs),
                        "--batch-size",
                        str(batch_size),
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
        outputs = [process.communicate(timeout=WORKER_TIMEOUT_S)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    for process in processes:
        if process.returncode != 0:
            raise RuntimeError(
                f"A benchmark worker failed with exit code {process.returncode}."
            )
    return float(outputs[0].decode().split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="number of epochs per run, at least 2")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size, split across the replicas")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2. Received: {args.epochs}")

    if args.worker:
        strategy = distribute.strategy_from_environment()
        print(measure(strategy, args.epochs, args.batch_size))
        return

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPU cores, global batch {args.batch_size}, "
          f"{args.epochs} epochs (first not timed)")
    rows = [
        ("1", "default strategy", measure(tf.distribute.get_strategy(), args.epochs, args.batch_size)),
        (
            "2",
            "MirroredStrategy, 2 logical CPUs",
            measure(
                tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                args.epochs,
                args.batch_size,
            ),
        ),
        ("2", "MultiWorkerMirroredStrategy, 2 processes", measure_two_workers(args.epochs, args.batch_size)),
    ]
    print("| replicas | strategy | examples/s |")
    print("| --- | --- | --- |")
    for replicas, name, rate in rows:
        print(f"| {replicas} | {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
