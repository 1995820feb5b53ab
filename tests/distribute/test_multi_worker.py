"""Two real workers on 127.0.0.1 training with `model.fit`.

Each test starts `_worker.py` twice as subprocesses, with a `TF_CONFIG`
that points both at free loopback ports, and kills whatever is still
running when the test ends.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from keras_cost.distribute import MultiWorkerBackupAndRestore

# Every test here starts TensorFlow processes, 20 to 60 s each on 2 cores.
pytestmark = pytest.mark.slow


def _load_cluster_helpers():
    path = pathlib.Path(__file__).with_name("_cluster.py")
    spec = importlib.util.spec_from_file_location("_cluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster_helpers()
worker = cluster.load_module("_worker")
NUM_WORKERS = cluster.NUM_WORKERS


def _reference_run(epochs):
    """Train the worker's model in this process, on one device."""
    model = worker.build_model()
    history = worker.fit(model, epochs)
    return model, history


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    """Run both workers for 2 epochs once; return their results and folder."""
    out_dir = tmp_path_factory.mktemp("two_workers")
    codes = cluster.run_workers(out_dir, "--epochs", "2", "--checkpoint")
    cluster.check_exit_codes(codes, out_dir)
    results = [cluster.result(out_dir, index) for index in range(NUM_WORKERS)]
    return results, out_dir


@pytest.fixture(scope="module")
def reference_run():
    """Train the same model for 2 epochs in this process, on one device."""
    model, history = _reference_run(epochs=2)
    return model.get_weights(), history


def test_fit_runs_global_steps(two_worker_run):
    results, _ = two_worker_run
    steps = 2 * worker.NUM_EXAMPLES // worker.GLOBAL_BATCH_SIZE

    assert int(results[0]["replicas"]) == NUM_WORKERS
    for result in results:
        assert int(result["iterations"]) == steps


def test_fit_workers_identical(two_worker_run):
    results, _ = two_worker_run
    for weight_0, weight_1 in zip(cluster.weights(results[0]), cluster.weights(results[1])):
        np.testing.assert_array_equal(weight_0, weight_1)


def test_fit_matches_one_process(two_worker_run, reference_run):
    results, _ = two_worker_run
    expected_weights, _ = reference_run
    for weight, expected in zip(cluster.weights(results[0]), expected_weights):
        np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)


def test_fit_logs_global_metrics(two_worker_run, reference_run):
    results, _ = two_worker_run
    _, expected_history = reference_run
    for result in results:
        history = json.loads(str(result["history"]))
        np.testing.assert_allclose(
            history["loss"], expected_history["loss"], rtol=1e-5
        )
        np.testing.assert_allclose(
            history["accuracy"], expected_history["accuracy"], rtol=1e-6
        )


def test_reduce_nested_values(two_worker_run):
    results, _ = two_worker_run
    # Replica values are 1.0 and 2.0.
    for result in results:
        assert float(result["nested_sum_0"]) == 3.0
        assert float(result["nested_sum_1"]) == 3.0


def test_reduce_scalar_along_axis(two_worker_run):
    results, _ = two_worker_run
    for result in results:
        assert float(result["scalar_mean"]) == 1.5


def test_chief_role(two_worker_run):
    results, _ = two_worker_run
    assert bool(results[0]["is_chief"])
    assert not bool(results[1]["is_chief"])


def test_save_on_chief_only(two_worker_run):
    _, out_dir = two_worker_run
    saved = sorted(path.name for path in out_dir.glob("*.keras"))
    assert saved == ["checkpoint_1.keras", "checkpoint_2.keras", "model.keras"]


def test_saved_model_loads_fresh(two_worker_run):
    results, out_dir = two_worker_run
    # A fresh process loads the chief's file with plain Keras, no scope.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras, keras_cost, numpy as np; "
            "m = keras.models.load_model(sys.argv[1]); "
            "np.savez(sys.argv[2], *m.get_weights())",
            str(out_dir / "model.keras"),
            str(out_dir / "loaded.npz"),
        ],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        timeout=cluster.RUN_TIMEOUT_S,
    )
    assert loaded.returncode == 0, loaded.stderr.decode()[-3000:]
    loaded_weights = np.load(out_dir / "loaded.npz")
    for weight, expected in zip(cluster.weights(loaded_weights), cluster.weights(results[0])):
        np.testing.assert_array_equal(weight, expected)


def test_stock_strategy_fit_fails(tmp_path):
    """Keras 3 `fit` still fails under TensorFlow's own strategy.

    When this test fails, Keras has fixed multi-worker `fit`, and the
    `reduce` override in `keras_cost.distribute.MultiWorkerMirroredStrategy`
    can be removed.
    """
    codes = cluster.run_workers(
        tmp_path, "--stock", "--epochs", "1", "--expect-error"
    )
    cluster.check_exit_codes(codes, tmp_path)
    for index in range(NUM_WORKERS):
        error = str(cluster.result(tmp_path, index)["error"])
        assert "PerReplica" in error


def test_backup_resumes_after_crash(tmp_path):
    backup_dir = tmp_path / "backup"
    first_dir = tmp_path / "first"
    second_dir = tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    steps_per_epoch = worker.NUM_EXAMPLES // worker.GLOBAL_BATCH_SIZE

    chief_code = cluster.run_until_chief_crashes(
        first_dir,
        "--epochs",
        "4",
        "--backup",
        str(backup_dir),
        "--crash-after-epoch",
        "2",
    )
    assert chief_code == worker.CRASH_EXIT_CODE, cluster.log_tail(first_dir, 0)
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2

    codes = cluster.run_workers(second_dir, "--epochs", "4", "--backup", str(backup_dir))
    cluster.check_exit_codes(codes, second_dir)
    results = [cluster.result(second_dir, index) for index in range(NUM_WORKERS)]
    reference, _ = _reference_run(epochs=4)

    for result in results:
        assert int(result["start_iterations"]) == 2 * steps_per_epoch
    for result in results:
        assert int(result["iterations"]) == 4 * steps_per_epoch
    for weight_0, weight_1 in zip(cluster.weights(results[0]), cluster.weights(results[1])):
        np.testing.assert_array_equal(weight_0, weight_1)
    # Resuming gives the weights of an uninterrupted run.
    for weight, expected in zip(cluster.weights(results[0]), reference.get_weights()):
        np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)
    # The chief deletes the backup after a normal end of training.
    assert not backup_dir.exists()


def test_backup_unshared_folder_raises(tmp_path):
    # A backup after 1 epoch, written by one process, that worker 1 cannot see.
    backup_dir = tmp_path / "backup"
    model = worker.build_model()
    backup = MultiWorkerBackupAndRestore(backup_dir, delete_checkpoint=False)
    worker.fit(model, 1, callbacks=[backup])

    codes = cluster.run_workers(
        tmp_path,
        "--epochs",
        "2",
        "--backup",
        str(backup_dir),
        "--worker-1-backup",
        str(tmp_path / "empty"),
        "--expect-error",
    )
    cluster.check_exit_codes(codes, tmp_path)
    for index in range(NUM_WORKERS):
        error = str(cluster.result(tmp_path, index)["error"])
        assert "restored different training steps" in error
