import keras
import matplotlib.image
import pytest

from keras_cost.cost import ModelCost
from keras_cost.cost import compare
from keras_cost.cost import model_cost
from keras_cost.cost import plot_tradeoff


def _reports():
    small = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)], name="small")
    large = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64)], name="large")
    tflite = ModelCost("small.tflite", "tflite", file_bytes=900, zipped_bytes=700,
                       latency_seconds=2e-6)
    return [model_cost(small), model_cost(large), tflite]


def test_compare_rows():
    table, rows = compare(_reports())
    assert [row["name"] for row in rows] == ["small", "large", "small.tflite"]
    assert rows[0]["flops"] == 2 * 8 * 4 + 4
    assert rows[2]["latency_seconds"] == 2e-6


def test_compare_markdown():
    table, _ = compare(_reports())
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| small | keras | 36 | ")
    assert "| n/a |" in lines[2]
    assert "2.0 µs" in lines[4]


def test_compare_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        compare([])


def test_compare_rejects_dicts():
    with pytest.raises(TypeError, match="reports\\[0\\]"):
        compare([{"name": "x"}])


def test_plot_writes_png(tmp_path):
    path = tmp_path / "tradeoff.png"
    result = plot_tradeoff(_reports(), path, accuracies=[0.8, 0.9, 0.79])
    image = matplotlib.image.imread(path)
    assert result == path
    assert image.shape[0] == 480
    assert image.shape[1] == 1200


def test_plot_rejects_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="one value per report"):
        plot_tradeoff(_reports(), tmp_path / "p.png", accuracies=[0.5])


def test_plot_rejects_nan(tmp_path):
    with pytest.raises(ValueError, match="accuracies\\[1\\]=nan"):
        plot_tradeoff(_reports(), tmp_path / "p.png", accuracies=[0.5, float("nan"), 0.4])
