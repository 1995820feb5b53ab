"""Tests of sparsity() and strip_pruning()."""

import keras
import numpy as np
import pytest

from keras_cost.pruning import PruningMask
from keras_cost.pruning import SparsityReport
from keras_cost.pruning import sparsity
from keras_cost.pruning import strip_pruning


def _model():
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")]
    )


def test_sparsity_counts_by_hand():
    model = _model()
    model.get_layer("a").kernel.assign(np.array([[0, 1, 1]] * 4, "float32"))
    model.get_layer("b").kernel.assign(np.zeros((3, 2), "float32"))

    report = sparsity(model)

    assert isinstance(report, SparsityReport)
    assert report.kernels == {"a/kernel": 4 / 12, "b/kernel": 1.0}
    assert report.zeros == 10
    assert report.size == 18
    assert report.overall == 10 / 18


def test_sparsity_excludes_bias():
    model = _model()
    model.get_layer("a").bias.assign(np.zeros(3, "float32"))
    model.get_layer("a").kernel.assign(np.ones((4, 3), "float32"))
    model.get_layer("b").kernel.assign(np.ones((3, 2), "float32"))
    assert sparsity(model).overall == 0.0


def test_sparsity_selected_layers():
    model = _model()
    assert list(sparsity(model, layers=["b"]).kernels) == ["b/kernel"]


def test_strip_unpruned_raises():
    with pytest.raises(ValueError, match="contains no pruning mask"):
        strip_pruning(_model())


def test_strip_all_ones_warns():
    model = _model()
    kernel = model.get_layer("a").kernel
    kernel.constraint = PruningMask(np.ones((4, 3)))
    with pytest.warns(UserWarning, match="remove no weight"):
        strip_pruning(model)


def test_strip_keeps_weights():
    model = _model()
    mask = (np.arange(12).reshape(4, 3) % 2).astype("float32")
    layer = model.get_layer("a")
    layer.kernel.assign(layer.kernel.numpy() * mask)
    layer.kernel.constraint = PruningMask(mask)
    layer.kernel_constraint = layer.kernel.constraint

    stripped = strip_pruning(model)

    for before, after in zip(model.get_weights(), stripped.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert stripped.get_layer("a").kernel.constraint is None
    assert "PruningMask" not in str(stripped.get_config())


def test_strip_rejects_tf_keras():
    import tf_keras

    legacy = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    with pytest.raises(TypeError, match="Keras 2"):
        strip_pruning(legacy)
