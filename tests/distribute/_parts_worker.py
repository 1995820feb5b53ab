"""One worker of a two-worker cluster that trains `_parts.py` cases.

Usage: python _parts_worker.py OUT_DIR CASE [CASE ...]

The task comes from `TF_CONFIG`. Each case is trained for 50 steps under
`keras_cost.distribute.strategy_from_environment()`, and its results go to
OUT_DIR/<case>_<task index>.npz. A case that raises writes its traceback to
OUT_DIR/<case>_<task index>.error and ends the worker with exit status 1,
because the other worker cannot go on alone: its next collective would wait
for this one.
"""

import importlib.util
import os
import pathlib
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def load_parts():
    path = pathlib.Path(__file__).with_name("_parts.py")
    spec = importlib.util.spec_from_file_location("_parts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    out_dir = pathlib.Path(sys.argv[1])
    case_names = sys.argv[2:]

    import keras

    from keras_cost import distribute

    tf_config = distribute.read_tf_config()
    task_index = tf_config["task"]["index"] if tf_config else 0
    strategy = distribute.strategy_from_environment()
    parts = load_parts()
    for name in case_names:
        try:
            keras.utils.set_random_seed(0)
            results = parts.run_case(name, strategy)
        except Exception:
            (out_dir / f"{name}_{task_index}.error").write_text(traceback.format_exc())
            raise SystemExit(1)
        results["replicas"] = strategy.num_replicas_in_sync
        results["is_chief"] = distribute.is_chief(strategy)
        np.savez(out_dir / f"{name}_{task_index}.npz", **results)
        print(f"{name} done", flush=True)


if __name__ == "__main__":
    main()
