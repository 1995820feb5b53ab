"""End-to-end tests of the `keras-cost` console script, run in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

KERAS_COST = os.path.join(os.path.dirname(sys.executable), "keras-cost")


def run_command(*args, timeout=600):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [KERAS_COST, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def test_help_lists_demo():
    result = run_command("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_demo_rejects_sparsity_of_one(tmp_path):
    result = run_command("demo", "--out", str(tmp_path), "--sparsity", "1.0")
    assert result.returncode == 2
    assert "sparsity=1.0" in result.stderr
    assert "training" not in result.stdout


def test_demo_rejects_zero_epochs(tmp_path):
    result = run_command("demo", "--out", str(tmp_path), "--epochs", "0")
    assert result.returncode == 2
    assert "Received: 0" in result.stderr


def test_demo_rejects_text_seed(tmp_path):
    result = run_command("demo", "--out", str(tmp_path), "--seed", "abc")
    assert result.returncode == 2
    assert "'abc'" in result.stderr


def test_unknown_command_fails():
    result = run_command("shrink-everything")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.slow
def test_demo_meets_its_targets(tmp_path):
    result = run_command("demo", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]

    for name in ["report.md", "report.json", "tradeoff.png", "student_int8.tflite"]:
        assert (tmp_path / name).is_file(), name
    assert "| teacher (float) |" in result.stdout

    stages = {row["stage"]: row for row in json.loads((tmp_path / "report.json").read_text())["stages"]}
    teacher = stages["teacher (float)"]
    student = stages["student (distilled)"]
    float_tflite = stages["student pruned .tflite float32"]
    int8_tflite = stages["student pruned QAT .tflite int8"]
    assert teacher["accuracy"] >= 0.97
    assert int8_tflite["accuracy"] >= student["accuracy"] - 0.015
    assert int8_tflite["file_bytes"] <= 0.3 * float_tflite["file_bytes"]
    assert int8_tflite["non_zeros"] <= 0.3 * int8_tflite["parameters"]
    # Leftover temporary files would mean an atomic write was not finished.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_demo_rejects_file_as_out(tmp_path):
    existing_file = tmp_path / "report.txt"
    existing_file.write_text("keep me")
    result = run_command("demo", "--out", str(existing_file))
    assert result.returncode == 2
    assert "is an existing file, not a folder" in result.stderr
    assert existing_file.read_text() == "keep me"
