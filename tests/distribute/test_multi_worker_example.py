"""Run `examples/multi_worker_prune_qat.py` as a user would, with short training.

The launcher starts two workers on 127.0.0.1, and the test reads the
summary it writes.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "multi_worker_prune_qat.py"
# Three TensorFlow start-ups, 3 short epochs on two workers and an int8
# export took 50 to 70 s on 2 busy CPU cores.
WORKER_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("example")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    command = [
        sys.executable,
        str(EXAMPLE),
        "--output-dir", str(output_dir),
        "--prune-epochs", "2",
        "--qat-epochs", "1",
        "--timeout", str(WORKER_TIMEOUT_S),
    ]
    # A session of its own lets the test stop the launcher and both of its
    # workers together if the launcher hangs.
    launcher = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"the example timed out. Output tail:\n{output.decode(errors='replace')[-3000:]}")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    text = output.decode(errors="replace")
    assert launcher.returncode == 0, text[-3000:]
    return json.loads((output_dir / "summary.json").read_text()), text, output_dir


def test_example_workers_identical(summary):
    report, _, _ = summary
    assert report["workers_identical"]


def test_example_two_replicas(summary):
    report, _, _ = summary
    for worker in report["workers"]:
        assert worker["replicas"] == 2


def test_example_one_chief(summary):
    report, _, _ = summary
    assert [worker["is_chief"] for worker in report["workers"]] == [True, False]


def test_example_sparsity(summary):
    report, _, _ = summary
    assert report["sparsity"] == 0.5


def test_example_workers_pruned(summary):
    report, _, _ = summary
    for worker in report["workers"]:
        assert worker["prune_sparsity"] == 0.5


def test_example_qat_steps(summary):
    # One epoch of 1,437 digits in global batches of 64.
    report, _, _ = summary
    for worker in report["workers"]:
        assert worker["steps"] == 23


def test_example_keras_accuracy(summary):
    # Ten classes: chance is 0.1. Three short epochs reach about 0.9.
    report, _, _ = summary
    assert report["keras_accuracy"] > 0.8


def test_example_int8_agreement(summary):
    report, _, _ = summary
    assert report["int8_agreement"] >= 0.95


def test_example_files(summary):
    _, _, output_dir = summary
    assert (output_dir / "pruned_qat.keras").is_file()
    assert (output_dir / "pruned_qat_int8.tflite").is_file()


def test_example_backups_removed(summary):
    # The chief deletes each stage's backup when its fit ends normally.
    _, _, output_dir = summary
    assert not (output_dir / "backup_prune").exists()
    assert not (output_dir / "backup_qat").exists()


def test_example_prints_result(summary):
    _, text, _ = summary
    assert "weights identical on both workers: True" in text
