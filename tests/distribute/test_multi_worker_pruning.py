"""`PruneCallback` on two real workers on 127.0.0.1, through a crash and resume.

The chief stops itself after epoch 2 of 4, just after its backup. Both
workers then restart from the backup and finish, and the run must end with
the masks and weights of an uninterrupted one-process run.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _load_cluster_helpers():
    path = pathlib.Path(__file__).with_name("_cluster.py")
    spec = importlib.util.spec_from_file_location("_cluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster_helpers()
worker = cluster.load_module("_worker")
NUM_KERNELS = 2
EPOCHS = 4
CRASH_AFTER_EPOCH = 2
STEPS_PER_EPOCH = worker.NUM_EXAMPLES // worker.GLOBAL_BATCH_SIZE


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """Crash the pruned two-worker run, resume it; return both results."""
    root = tmp_path_factory.mktemp("pruned")
    backup_dir = root / "backup"
    first_dir = root / "first"
    second_dir = root / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    common_args = ("--prune", "--epochs", str(EPOCHS), "--backup", str(backup_dir))

    chief_code = cluster.run_until_chief_crashes(
        first_dir, *common_args, "--crash-after-epoch", str(CRASH_AFTER_EPOCH)
    )
    assert chief_code == worker.CRASH_EXIT_CODE, cluster.log_tail(first_dir, 0)

    codes = cluster.run_workers(second_dir, *common_args)
    cluster.check_exit_codes(codes, second_dir)
    return [cluster.result(second_dir, index) for index in range(cluster.NUM_WORKERS)]


@pytest.fixture(scope="module")
def uninterrupted_reference():
    model = worker.build_model()
    worker.fit(model, EPOCHS, callbacks=[worker.make_prune_callback()])
    return model.get_weights(), worker.kernel_masks(model)


def test_pruned_resume_step(resumed_run):
    for result in resumed_run:
        assert int(result["start_iterations"]) == CRASH_AFTER_EPOCH * STEPS_PER_EPOCH


def test_pruned_masks_binary(resumed_run):
    for result in resumed_run:
        for i in range(NUM_KERNELS):
            values = set(np.unique(result[f"mask_{i}"]).tolist())
            assert values == {0.0, 1.0}


def test_pruned_masks_identical(resumed_run):
    for i in range(NUM_KERNELS):
        np.testing.assert_array_equal(
            resumed_run[0][f"mask_{i}"], resumed_run[1][f"mask_{i}"]
        )


def test_pruned_masks_half_zero(resumed_run):
    for i in range(NUM_KERNELS):
        mask = resumed_run[0][f"mask_{i}"]
        assert mask.sum() == mask.size - round(0.5 * mask.size)


def test_pruned_zeros_follow_mask(resumed_run):
    kernels = cluster.weights(resumed_run[0])[0::2]
    for i, kernel in enumerate(kernels):
        np.testing.assert_array_equal(kernel != 0, resumed_run[0][f"mask_{i}"] == 1)


def test_pruned_masks_match_reference(resumed_run, uninterrupted_reference):
    _, expected_masks = uninterrupted_reference
    for i in range(NUM_KERNELS):
        np.testing.assert_array_equal(resumed_run[0][f"mask_{i}"], expected_masks[i])


def test_pruned_weights_match_reference(resumed_run, uninterrupted_reference):
    expected_weights, _ = uninterrupted_reference
    for weight, expected in zip(cluster.weights(resumed_run[0]), expected_weights):
        np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)
