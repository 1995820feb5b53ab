"""keras-cost parts on two real workers on 127.0.0.1.

Both workers train each case of `_parts.py` (distillation, QAT, pruning with
cost logging, L0 gates and L-BFGS) with `MultiWorkerMirroredStrategy`, one
replica each. A case runs 50 steps, or 20 iterations for L-BFGS. This test
process trains the same cases alone with the same global batch, and the
workers must end identical to each other and to that run.
"""

import importlib.util
import pathlib
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).parent
WORKER_SCRIPT = HERE / "_parts_worker.py"
NUM_WORKERS = 2
# Five cases on two workers, with two TensorFlow start-ups, took 60 to 120 s
# on 2 busy CPU cores.
RUN_TIMEOUT_S = 300
# Collectives sum the gradients of the two workers in another order than
# one device does, so the weights agree to float32 round-off only.
RTOL = 1e-5
ATOL = 1e-5


def _load(name):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster = _load("_cluster")
parts = _load("_parts")
CASES = ("distill", "qat", "prune", "l0", "lbfgs")
EXPECTED_STEPS = {case: parts.NUM_STEPS for case in CASES}
EXPECTED_STEPS["lbfgs"] = parts.LBFGS_ITERATIONS


def _log_tail(out_dir, index):
    return (out_dir / f"worker_{index}.log").read_text(errors="replace")[-3000:]


def _start_workers(out_dir):
    return cluster.start_workers(out_dir, *CASES, worker_script=WORKER_SCRIPT)


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("multi_worker_parts")
    processes = _start_workers(out_dir)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        for index, process in enumerate(processes):
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                code = process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {index} timed out. Log tail:\n{_log_tail(out_dir, index)}")
            assert code == 0, _log_tail(out_dir, index)
    finally:
        cluster.stop(processes)
    return out_dir


@pytest.fixture(scope="module")
def reference():
    """Train every case in this process, on one device."""
    results = {}
    for case in CASES:
        keras.utils.set_random_seed(0)
        results[case] = parts.run_case(case, tf.distribute.get_strategy())
    return results


def load(out_dir, case):
    """Return the results of both workers for `case`."""
    results = []
    for index in range(NUM_WORKERS):
        error = out_dir / f"{case}_{index}.error"
        if error.exists():
            pytest.fail(f"case {case!r} raised on worker {index}:\n{error.read_text()}")
        results.append(np.load(out_dir / f"{case}_{index}.npz"))
    return results


def test_workers_two_replicas(worker_dir):
    for result in load(worker_dir, CASES[0]):
        assert int(result["replicas"]) == NUM_WORKERS


def test_workers_one_chief(worker_dir):
    chiefs = [bool(result["is_chief"]) for result in load(worker_dir, CASES[0])]
    assert chiefs == [True, False]


@pytest.mark.parametrize("case", CASES)
def test_workers_steps(worker_dir, case):
    for result in load(worker_dir, case):
        assert int(result["iterations"]) == EXPECTED_STEPS[case]


@pytest.mark.parametrize("case", CASES)
def test_workers_identical(worker_dir, case):
    first, second = load(worker_dir, case)
    for i in range(int(first["num_weights"])):
        np.testing.assert_array_equal(first[f"weight_{i}"], second[f"weight_{i}"])


@pytest.mark.parametrize("case", CASES)
def test_workers_state_identical(worker_dir, case):
    first, second = load(worker_dir, case)
    keys = [key for key in first.files if key.startswith("replicas/")]
    assert keys
    for key in keys:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_workers_match_one_process(worker_dir, reference, case):
    chief, _ = load(worker_dir, case)
    expected = reference[case]
    assert int(chief["num_weights"]) == expected["num_weights"]
    for i in range(expected["num_weights"]):
        np.testing.assert_allclose(
            chief[f"weight_{i}"], expected[f"weight_{i}"], rtol=RTOL, atol=ATOL,
            err_msg=f"weight {i}",
        )


@pytest.mark.parametrize("case", CASES)
def test_workers_state_match_one_process(worker_dir, reference, case):
    chief, _ = load(worker_dir, case)
    expected = reference[case]
    for key in (key for key in chief.files if key.startswith("replicas/")):
        np.testing.assert_allclose(
            chief[key][0], expected[key][0], rtol=RTOL, atol=ATOL, err_msg=key
        )


@pytest.mark.parametrize("case", CASES)
def test_workers_logged_loss_global(worker_dir, reference, case):
    chief, _ = load(worker_dir, case)
    np.testing.assert_allclose(
        chief["history/loss"], reference[case]["history/loss"], rtol=RTOL, atol=ATOL
    )


def test_workers_distill_teacher_frozen(worker_dir):
    teacher = parts.build_mlp(hidden=12, seed=2).get_weights()
    for result in load(worker_dir, "distill"):
        for i, expected in enumerate(teacher):
            np.testing.assert_array_equal(result[f"teacher_{i}"], expected)


def test_workers_prune_masks_binary(worker_dir):
    for result in load(worker_dir, "prune"):
        for i in range(2):
            values = set(np.unique(result[f"replicas/mask_{i}"]).tolist())
            assert values == {0.0, 1.0}, f"mask {i}"


def test_workers_prune_target_sparsity(worker_dir):
    for result in load(worker_dir, "prune"):
        for i in range(2):
            mask = result[f"replicas/mask_{i}"][0]
            assert int((mask == 0).sum()) == round(0.5 * mask.size), f"mask {i}"


def test_workers_cost_logs_present(worker_dir):
    for result in load(worker_dir, "prune"):
        for key in parts.COST_LOG_KEYS:
            values = result[f"history/{key}"]
            assert values.shape == (parts.EPOCHS,), key
            assert np.all(np.isfinite(values)), key


def test_workers_cost_counts_global_examples(worker_dir):
    # Each worker runs 50 steps of 8 examples, which are 50 global batches.
    examples = parts.NUM_STEPS * parts.GLOBAL_BATCH_SIZE
    for result in load(worker_dir, "prune"):
        assert int(result["cost/examples"]) == examples
        # 147 forward FLOPs per example, 3 forward passes per training example.
        assert float(result["cost/train_flops"]) == 3 * 147 * examples


def test_workers_lbfgs_evaluations(worker_dir, reference):
    # The line search tries the same points on both workers and on one device.
    expected = reference["lbfgs"]["function_evaluations"]
    for result in load(worker_dir, "lbfgs"):
        assert int(result["function_evaluations"]) == expected
