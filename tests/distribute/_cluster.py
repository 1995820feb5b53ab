"""Start and stop the two `_worker.py` processes of a multi-worker test.

Test modules load this file with `load_helpers()`, because pytest's
importlib import mode does not put the test folder on `sys.path`.
"""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent
WORKER_SCRIPT = HERE / "_worker.py"
# Generous for two TensorFlow start-ups on 2 shared CPU cores: a run of the
# test model took 20 to 50 s there, mostly importing TensorFlow.
RUN_TIMEOUT_S = 150
# How long the surviving worker may take to notice that its peer is gone
# before the test stops it, as a cluster manager would.
SURVIVOR_GRACE_S = 5
NUM_WORKERS = 2
NUM_WEIGHTS = 4


def load_module(name):
    """Import `tests/distribute/<name>.py` by path and return the module."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def start_workers(out_dir, *worker_args, worker_script=WORKER_SCRIPT):
    """Start one `worker_script` process per task of a loopback cluster and return them."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(NUM_WORKERS)]
    processes = []
    try:
        for index in range(NUM_WORKERS):
            tf_config = {
                "cluster": {"worker": addresses},
                "task": {"type": "worker", "index": index},
            }
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
            env["TF_CPP_MIN_LOG_LEVEL"] = "2"
            env["CUDA_VISIBLE_DEVICES"] = ""
            with open(out_dir / f"worker_{index}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, str(worker_script), str(out_dir), *worker_args],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
    except BaseException:
        stop(processes)
        raise
    return processes


def stop(processes):
    """Kill every process that is still running and reap it."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def log_tail(out_dir, index):
    log = (out_dir / f"worker_{index}.log").read_text(errors="replace")
    return log[-3000:]


def wait(process, deadline, out_dir, index):
    """Wait for one worker until `deadline`, and fail the test if it runs longer."""
    remaining = max(deadline - time.monotonic(), 0.1)
    try:
        return process.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker {index} timed out. Log tail:\n{log_tail(out_dir, index)}")


def run_workers(out_dir, *worker_args):
    """Run both workers to the end and return their exit codes."""
    processes = start_workers(out_dir, *worker_args)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        return [
            wait(process, deadline, out_dir, index)
            for index, process in enumerate(processes)
        ]
    finally:
        stop(processes)


def run_until_chief_crashes(out_dir, *worker_args):
    """Run until the chief exits, then stop the other worker.

    Returns the chief's exit code. The surviving worker is blocked in a
    collective or failing, and a cluster manager would restart it.
    """
    processes = start_workers(out_dir, *worker_args)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        chief_code = wait(processes[0], deadline, out_dir, 0)
        try:
            processes[1].wait(timeout=SURVIVOR_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        return chief_code
    finally:
        stop(processes)


def check_exit_codes(codes, out_dir):
    for index, code in enumerate(codes):
        assert code == 0, log_tail(out_dir, index)


def result(out_dir, index):
    """Load the .npz result that worker `index` wrote."""
    path = out_dir / f"result_{index}.npz"
    assert path.exists(), log_tail(out_dir, index)
    return np.load(path)


def weights(result_arrays):
    """Return the model weights from a worker's .npz result."""
    return [result_arrays[f"arr_{i}"] for i in range(NUM_WEIGHTS)]
