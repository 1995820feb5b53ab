"""`MirroredStrategy` over two logical CPU devices against one device."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

# The subprocess starts TensorFlow and trains twice: 20 to 60 s on 2 cores.
pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).with_name("_mirrored.py")
RUN_TIMEOUT_S = 150
NUM_WEIGHTS = 4


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    out_path = tmp_path_factory.mktemp("mirrored") / "weights.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(out_path)],
        env=env,
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    return np.load(out_path)


def test_mirrored_two_replicas(mirrored_run):
    assert int(mirrored_run["replicas"]) == 2


def test_mirrored_runs_50_steps(mirrored_run):
    assert int(mirrored_run["two_device_steps"]) == 50
    assert int(mirrored_run["one_device_steps"]) == 50


def test_mirrored_matches_one_device(mirrored_run):
    for i in range(NUM_WEIGHTS):
        np.testing.assert_allclose(
            mirrored_run[f"two_{i}"], mirrored_run[f"one_{i}"], rtol=0, atol=1e-5
        )


def test_mirrored_weights_changed(mirrored_run):
    # Guards the comparison above against a run that never trained.
    initial = _initial_weights()
    for i in range(NUM_WEIGHTS):
        assert not np.allclose(mirrored_run[f"two_{i}"], initial[i])


def _initial_weights():
    shapes = [(8, 6), (6,), (6, 3), (3,)]
    rng = np.random.default_rng(1)
    return [rng.normal(scale=0.5, size=shape).astype("float32") for shape in shapes]
