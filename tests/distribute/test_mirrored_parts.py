"""Every keras-cost part under `MirroredStrategy` over two logical CPU devices.

One subprocess trains each case of `_parts.py` for 50 steps twice: on two
replicas and on one device with the same global batch. The runs must end
with the same weights, the same logged metrics and state variables (masks,
gates, quantizer ranges, optimizer steps) that are identical on both
replicas.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from keras_cost.cost.flops import count_flops

pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).parent
SCRIPT = HERE / "_mirrored_parts.py"
CASES = (
    "prune",
    "prune_apoz",
    "l0",
    "qat_export",
    "distill",
    "distill_unlabeled",
    "distill_features",
)
# Seven cases of two 50-step fits each took about 60 s of CPU time, and 110
# to 150 s on 2 CPU cores shared with other jobs.
RUN_TIMEOUT_S = 400
ATOL = 1e-5


def _load_parts():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_parts", HERE / "_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parts = _load_parts()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored_parts")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *CASES],
        env=env,
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    return out


def load(out_dir, case):
    """Return the (two replicas, one device) results of `case`."""
    error = out_dir / f"{case}.error"
    if error.exists():
        pytest.fail(f"case {case!r} raised:\n{error.read_text()}")
    return np.load(out_dir / f"{case}_two.npz"), np.load(out_dir / f"{case}_one.npz")


def replica_keys(result):
    return [key for key in result.files if key.startswith("replicas/")]


# Checks shared by every case.


def test_parts_two_replicas(out_dir):
    mirrored, _ = load(out_dir, "prune")
    assert int(mirrored["replicas"]) == 2


@pytest.mark.parametrize("case", CASES)
def test_parts_50_steps(out_dir, case):
    mirrored, single = load(out_dir, case)
    assert int(mirrored["iterations"]) == parts.NUM_STEPS
    assert int(single["iterations"]) == parts.NUM_STEPS


@pytest.mark.parametrize("case", CASES)
def test_parts_match_one_device(out_dir, case):
    mirrored, single = load(out_dir, case)
    assert int(mirrored["num_weights"]) == int(single["num_weights"])
    for i in range(int(mirrored["num_weights"])):
        np.testing.assert_allclose(
            mirrored[f"weight_{i}"], single[f"weight_{i}"], rtol=0, atol=ATOL,
            err_msg=f"weight {i}",
        )


@pytest.mark.parametrize("case", CASES)
def test_parts_state_identical_on_replicas(out_dir, case):
    mirrored, _ = load(out_dir, case)
    keys = replica_keys(mirrored)
    assert keys
    for key in keys:
        values = mirrored[key]
        assert values.shape[0] == 2, key
        np.testing.assert_array_equal(values[0], values[1], err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_parts_state_matches_one_device(out_dir, case):
    mirrored, single = load(out_dir, case)
    for key in replica_keys(mirrored):
        np.testing.assert_allclose(mirrored[key][0], single[key][0], rtol=0, atol=ATOL, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_parts_logged_loss_global(out_dir, case):
    # A loss logged per replica, or not unscaled, would differ from one device.
    mirrored, single = load(out_dir, case)
    np.testing.assert_allclose(mirrored["history/loss"], single["history/loss"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", CASES)
def test_parts_loss_decreased(out_dir, case):
    # Guards the comparisons above against runs that never trained.
    mirrored, _ = load(out_dir, case)
    assert mirrored["history/loss"][-1] < mirrored["history/loss"][0]


# PruneCallback.


def test_prune_masks_binary(out_dir):
    mirrored, _ = load(out_dir, "prune")
    for i in range(2):
        values = set(np.unique(mirrored[f"replicas/mask_{i}"]).tolist())
        assert values == {0.0, 1.0}, f"mask {i}"


def test_prune_masks_match_one_device(out_dir):
    mirrored, single = load(out_dir, "prune")
    for i in range(2):
        np.testing.assert_array_equal(mirrored[f"replicas/mask_{i}"][0], single[f"replicas/mask_{i}"][0])


def test_prune_target_sparsity(out_dir):
    mirrored, _ = load(out_dir, "prune")
    for i in range(2):
        mask = mirrored[f"replicas/mask_{i}"][0]
        assert int((mask == 0).sum()) == round(0.5 * mask.size), f"mask {i}"


def test_prune_zeros_follow_mask(out_dir):
    mirrored, _ = load(out_dir, "prune")
    for i in range(2):
        for replica in range(2):
            kernel = mirrored[f"replicas/kernel_{i}"][replica]
            mask = mirrored[f"replicas/mask_{i}"][replica]
            np.testing.assert_array_equal(kernel != 0, mask == 1)


def test_prune_sparsity_logged(out_dir):
    mirrored, single = load(out_dir, "prune")
    np.testing.assert_array_equal(mirrored["history/sparsity"], single["history/sparsity"])
    assert mirrored["history/sparsity"][-1] == 0.5


def test_prune_accuracy_global(out_dir):
    mirrored, single = load(out_dir, "prune")
    np.testing.assert_allclose(mirrored["history/accuracy"], single["history/accuracy"], atol=ATOL)


def test_prune_units_masks_match_one_device(out_dir):
    mirrored, single = load(out_dir, "prune_apoz")
    np.testing.assert_array_equal(mirrored["replicas/mask_0"][0], single["replicas/mask_0"][0])


def test_prune_units_half_removed(out_dir):
    # Neuron granularity removes whole kernel columns: 3 of the 6 hidden units.
    mirrored, _ = load(out_dir, "prune_apoz")
    mask = mirrored["replicas/mask_0"][0]
    column_sums = mask.sum(axis=0)
    assert int((column_sums == 0).sum()) == 3
    assert int((column_sums == mask.shape[0]).sum()) == 3


# CostCallback, which ran next to PruneCallback.


def test_cost_logs_present(out_dir):
    mirrored, _ = load(out_dir, "prune")
    for key in parts.COST_LOG_KEYS:
        values = mirrored[f"history/{key}"]
        assert values.shape == (parts.EPOCHS,), key
        assert np.all(np.isfinite(values)), key
        assert np.all(values > 0), key


def test_cost_counts_global_examples(out_dir):
    # 50 steps of the global batch, not of the per-replica batch of 8.
    mirrored, _ = load(out_dir, "prune")
    assert int(mirrored["cost/steps"]) == parts.NUM_STEPS
    assert int(mirrored["cost/examples"]) == parts.NUM_STEPS * parts.GLOBAL_BATCH_SIZE


def test_cost_train_flops(out_dir):
    # Forward FLOPs per example of Dense(8 -> 6, relu) -> Dense(6 -> 3):
    # 2 * (8 * 6 + 6 * 3) multiply-adds, 6 + 3 bias adds and 6 ReLUs, 147.
    # Training counts 3 forward passes per example.
    mirrored, _ = load(out_dir, "prune")
    examples = parts.NUM_STEPS * parts.GLOBAL_BATCH_SIZE
    assert float(mirrored["cost/train_flops"]) == 3 * 147 * examples


def test_cost_flops_count_reference():
    # Checks the 147 used above against the library's own count.
    total, _, _ = count_flops(parts.build_mlp())
    assert total == 147


def test_cost_flops_match_one_device(out_dir):
    mirrored, single = load(out_dir, "prune")
    np.testing.assert_array_equal(mirrored["history/train_flops"], single["history/train_flops"])


# l0_regularize.


def test_l0_gates_trained(out_dir):
    mirrored, _ = load(out_dir, "l0")
    log_alpha = mirrored["replicas/log_alpha"][0]
    assert not np.allclose(log_alpha, 3.0)


def test_l0_noise_state_advanced(out_dir):
    # The gate noise seed advances once per step on every replica.
    mirrored, single = load(out_dir, "l0")
    np.testing.assert_array_equal(mirrored["replicas/seed_state"][0], single["replicas/seed_state"][0])


def test_l0_inference_gates(out_dir):
    mirrored, single = load(out_dir, "l0")
    np.testing.assert_allclose(mirrored["gates"], single["gates"], rtol=0, atol=ATOL)


# quantize_model.


def test_qat_ranges_set(out_dir):
    mirrored, _ = load(out_dir, "qat_export")
    for i in range(2):
        assert float(mirrored[f"replicas/output_range_set_{i}"][0]) == 1.0, f"layer {i}"


def test_qat_ranges_contain_zero(out_dir):
    mirrored, _ = load(out_dir, "qat_export")
    for i in range(2):
        assert float(mirrored[f"replicas/output_min_{i}"][0]) <= 0.0, f"layer {i}"
        assert float(mirrored[f"replicas/output_max_{i}"][0]) >= 0.0, f"layer {i}"


def test_qat_export_runs(out_dir):
    # The model still contains MirroredVariables when it is exported.
    mirrored, _ = load(out_dir, "qat_export")
    assert "export_error" not in mirrored.files, str(mirrored["export_error"])


def test_qat_export_matches_keras(out_dir):
    mirrored, _ = load(out_dir, "qat_export")
    if "export_error" in mirrored.files:
        pytest.fail(str(mirrored["export_error"]))
    gap = np.abs(mirrored["tflite_outputs"] - mirrored["keras_outputs"]).max()
    assert gap <= 2 * float(mirrored["output_scale"])


def test_qat_export_matches_one_device(out_dir):
    mirrored, single = load(out_dir, "qat_export")
    if "export_error" in mirrored.files:
        pytest.fail(str(mirrored["export_error"]))
    gap = np.abs(mirrored["tflite_outputs"] - single["tflite_outputs"]).max()
    assert gap <= float(single["output_scale"])


# DistillerModel.


def test_distill_adapter_matches_one_device(out_dir):
    mirrored, single = load(out_dir, "distill_features")
    for i in range(2):
        np.testing.assert_allclose(
            mirrored[f"adapter_{i}"], single[f"adapter_{i}"], rtol=0, atol=ATOL
        )


@pytest.mark.parametrize("case", ("distill", "distill_unlabeled", "distill_features"))
def test_distill_teacher_frozen(out_dir, case):
    mirrored, _ = load(out_dir, case)
    teacher = parts.build_mlp(hidden=12, seed=2).get_weights()
    for i, expected in enumerate(teacher):
        np.testing.assert_array_equal(mirrored[f"teacher_{i}"], expected)


@pytest.mark.parametrize("key", ("student_loss", "distillation_loss", "accuracy"))
def test_distill_logs_global(out_dir, key):
    mirrored, single = load(out_dir, "distill")
    np.testing.assert_allclose(mirrored[f"history/{key}"], single[f"history/{key}"], rtol=0, atol=ATOL)
