"""End-to-end tests of `keras-cost compress` and `keras-cost report`, run in a subprocess."""

import json
import os
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest

from keras_cost import cli
from keras_cost.datasets import load_digits
from keras_cost.demo import build_teacher
from keras_cost.quantization import TFLiteModel

KERAS_COST = os.path.join(os.path.dirname(sys.executable), "keras-cost")


def run_command(*args, timeout=600):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [KERAS_COST, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def error_lines(result):
    # TensorFlow writes its own log lines to stderr at import; the command's
    # messages are the lines that start with the program name.
    return [line for line in result.stderr.splitlines() if line.startswith("keras-cost")]


def assert_usage_error(result, *fragments):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Epoch" not in result.stdout


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    (x_train, y_train), (x_test, y_test) = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def untrained_cnn(tmp_path_factory):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("model") / "cnn.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = load_digits()
    model = build_teacher()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=32, epochs=10, verbose=0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    model.save(path)
    return path


def test_help_lists_commands():
    result = run_command("--help")
    assert result.returncode == 0
    assert "compress" in result.stdout
    assert "report" in result.stdout


def test_compress_missing_model(tmp_path, digits_npz):
    result = run_command("compress", tmp_path / "absent.keras", "--data", digits_npz, "--out", tmp_path / "out")
    assert_usage_error(result, "absent.keras", "does not exist")
    assert not (tmp_path / "out").exists()


def test_compress_model_not_loadable(tmp_path, digits_npz):
    path = tmp_path / "broken.keras"
    path.write_text("not a zip archive")
    result = run_command("compress", path, "--data", digits_npz, "--out", tmp_path / "out")
    assert_usage_error(result, "broken.keras", "does not load as a Keras model")


def test_compress_data_missing_key(tmp_path, untrained_cnn):
    data = tmp_path / "partial.npz"
    np.savez(data, x_train=np.zeros((2, 8, 8, 1)), y_train=np.zeros(2), x_val=np.zeros((2, 8, 8, 1)))
    result = run_command("compress", untrained_cnn, "--data", data, "--out", tmp_path / "out")
    assert_usage_error(result, "partial.npz", "missing x_test, y_test", "contains x_train, y_train, x_val")


def test_compress_data_shape_mismatch(tmp_path, untrained_cnn):
    data = tmp_path / "flat.npz"
    flat = np.zeros((4, 64), "float32")
    labels = np.arange(4)
    np.savez(data, x_train=flat, y_train=labels, x_test=flat, y_test=labels)
    result = run_command("compress", untrained_cnn, "--data", data, "--out", tmp_path / "out", "--prune", "0.5")
    assert_usage_error(result, "(64,)", "(8, 8, 1)")


def test_compress_unknown_quantize(tmp_path, untrained_cnn, digits_npz):
    result = run_command(
        "compress", untrained_cnn, "--data", digits_npz, "--out", tmp_path, "--quantize", "int4"
    )
    assert_usage_error(result, "--quantize", "'int4'")


def parse_error(capsys, *args):
    # The argument parser checks option values before any TensorFlow work,
    # so calling `main` in-process keeps these checks fast.
    # `test_compress_unknown_quantize` covers the same path through the script.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress", "m.keras", "--data", "d.npz", "--out", "out", *args])
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1
    return lines[0]


def test_compress_sparsity_of_one(capsys):
    line = parse_error(capsys, "--prune", "1")
    assert "--prune" in line
    assert "Received: 1.0" in line


def test_compress_negative_sparsity(capsys):
    line = parse_error(capsys, "--prune", "-0.5")
    assert "Received: -0.5" in line


def test_compress_text_sparsity(capsys):
    line = parse_error(capsys, "--prune", "most")
    assert "Received: 'most'" in line


def test_compress_zero_width(capsys):
    line = parse_error(capsys, "--distill-width", "0")
    assert "--distill-width" in line
    assert "Received: 0.0" in line


def test_compress_width_above_one(capsys):
    line = parse_error(capsys, "--distill-width", "1.5")
    assert "Received: 1.5" in line


def test_compress_negative_budget(capsys):
    line = parse_error(capsys, "--max-accuracy-drop", "-1")
    assert "--max-accuracy-drop" in line
    assert "Received: -1.0" in line


def test_compress_needs_data(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress", "m.keras", "--out", "out"])
    assert exit_info.value.code == 2
    assert "--data" in capsys.readouterr().err


def test_compress_prune_with_search(tmp_path, capsys):
    status = cli.main(
        ["compress", "m.keras", "--data", "d.npz", "--out", str(tmp_path), "--prune", "0.5", "--max-accuracy-drop", "1"]
    )
    assert status == 2
    assert "cannot be combined with --prune" in capsys.readouterr().err


def test_report_missing_model(tmp_path):
    result = run_command("report", tmp_path / "absent.tflite")
    assert_usage_error(result, "absent.tflite", "does not exist")


def test_report_keras_with_data(untrained_cnn, digits_npz):
    result = run_command("report", untrained_cnn, "--data", digits_npz)
    assert result.returncode == 0, result.stderr[-2000:]

    model = keras.models.load_model(untrained_cnn)
    (_, _), (x_test, y_test) = load_digits()
    expected = np.mean(np.argmax(model.predict(x_test, verbose=0), axis=-1) == y_test)
    assert f"| parameters | {model.count_params():,} |" in result.stdout
    assert f"test accuracy: {expected:.2%}" in result.stdout


@pytest.mark.slow
def test_compress_prune_int8_acceptance(tmp_path, trained_teacher, digits_npz):
    out = tmp_path / "out"
    result = run_command(
        "compress", trained_teacher, "--data", digits_npz, "--out", out, "--prune", "0.8", "--quantize", "int8"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ["compressed.keras", "compressed.tflite", "report.md", "report.json", "tradeoff.png"]:
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]

    teacher = keras.models.load_model(trained_teacher)
    weights = b"".join(w.astype("float32").tobytes() for w in teacher.get_weights())
    tflite = (out / "compressed.tflite").read_bytes()
    ratio = len(zlib.compress(weights, 9)) / len(zlib.compress(tflite, 9))
    assert ratio >= 9.0

    (_, _), (x_test, y_test) = load_digits()
    original = np.mean(np.argmax(teacher.predict(x_test, verbose=0), axis=-1) == y_test)
    compressed = np.mean(np.argmax(TFLiteModel(tflite).predict(x_test), axis=-1) == y_test)
    assert compressed >= original - 0.01

    summary = json.loads((out / "report.json").read_text())
    assert summary["tflite_accuracy"] == pytest.approx(compressed)
    assert summary["zipped_size_ratio"] == pytest.approx(ratio, rel=1e-6)

    report = run_command("report", out / "compressed.tflite", "--data", digits_npz)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"test accuracy: {compressed:.2%}" in report.stdout
    assert f"| file bytes | {len(tflite):,} |" in report.stdout


@pytest.mark.slow
def test_compress_search_within_budget(tmp_path, trained_teacher, digits_npz):
    out = tmp_path / "out"
    result = run_command("compress", trained_teacher, "--data", digits_npz, "--out", out, "--max-accuracy-drop", "1")
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((out / "report.json").read_text())
    assert summary["accuracy_drop_points"] <= 1.0
    assert f"chose {summary['chosen']}" in result.stdout
    (_, _), (x_test, y_test) = load_digits()
    tflite = (out / "compressed.tflite").read_bytes()
    compressed = np.mean(np.argmax(TFLiteModel(tflite).predict(x_test), axis=-1) == y_test)
    assert compressed >= summary["original_accuracy"] - 0.01
