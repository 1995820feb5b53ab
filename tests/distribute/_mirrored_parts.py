"""Run `_parts.py` cases on two logical CPU devices and on one, in one process.

Usage: python _mirrored_parts.py OUT_DIR CASE [CASE ...]

Logical devices can only be configured before TensorFlow initializes its
devices, so this runs in a fresh process. For each case it writes
OUT_DIR/<case>_two.npz (MirroredStrategy over two devices) and
OUT_DIR/<case>_one.npz (the default strategy, one device). A case that
raises writes its traceback to OUT_DIR/<case>.error instead, and the other
cases still run.
"""

import importlib.util
import os
import pathlib
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf


def load_parts():
    path = pathlib.Path(__file__).with_name("_parts.py")
    spec = importlib.util.spec_from_file_location("_parts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    out_dir = pathlib.Path(sys.argv[1])
    case_names = sys.argv[2:]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

    import keras

    parts = load_parts()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name in case_names:
        start = time.monotonic()
        try:
            keras.utils.set_random_seed(0)
            two_devices = parts.run_case(name, mirrored)
            keras.utils.set_random_seed(0)
            one_device = parts.run_case(name, tf.distribute.get_strategy())
        except Exception:
            (out_dir / f"{name}.error").write_text(traceback.format_exc())
            continue
        two_devices["replicas"] = mirrored.num_replicas_in_sync
        np.savez(out_dir / f"{name}_two.npz", **two_devices)
        np.savez(out_dir / f"{name}_one.npz", **one_device)
        print(f"{name}: {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
