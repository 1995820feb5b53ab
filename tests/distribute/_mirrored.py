"""Fit on two logical CPU devices and on one, in one subprocess.

Usage: python _mirrored.py OUT_PATH

Logical devices can only be configured before TensorFlow initializes its
devices, so this runs in a fresh process. Writes the weights of both runs
to OUT_PATH (.npz).
"""

import importlib.util
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

NUM_STEPS = 50
# 80 examples are 5 global batches of 16, so 10 epochs are 50 steps.
NUM_EXAMPLES = 80


def load_worker_module():
    """Import `_worker.py`, which contains the shared test model and data."""
    path = pathlib.Path(__file__).with_name("_worker.py")
    spec = importlib.util.spec_from_file_location("_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(worker, strategy):
    with strategy.scope():
        model = worker.build_model()
    epochs = NUM_STEPS * worker.GLOBAL_BATCH_SIZE // NUM_EXAMPLES
    worker.fit(model, epochs, num_examples=NUM_EXAMPLES)
    return model


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu,
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

    worker = load_worker_module()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two_devices = train(worker, mirrored)
    one_device = train(worker, tf.distribute.get_strategy())

    np.savez(
        sys.argv[1],
        replicas=mirrored.num_replicas_in_sync,
        two_device_steps=int(two_devices.optimizer.iterations.numpy()),
        one_device_steps=int(one_device.optimizer.iterations.numpy()),
        **{f"two_{i}": w for i, w in enumerate(two_devices.get_weights())},
        **{f"one_{i}": w for i, w in enumerate(one_device.get_weights())},
    )


if __name__ == "__main__":
    main()
