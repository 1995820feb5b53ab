"""Tests of prunable layer discovery."""

import keras
import pytest

from keras_cost.pruning import register_prunable_layer
from keras_cost.pruning.layers import find_kernels
from keras_cost.pruning.layers import walk_layers


def test_find_all_layer_types():
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.DepthwiseConv2D(3),
            keras.layers.SeparableConv2D(4, 3),
            keras.layers.Reshape((-1, 4)),
            keras.layers.Conv1D(4, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    names = [kernel.name for kernel in find_kernels(model)]
    assert names == [
        "conv2d/kernel",
        "depthwise_conv2d/kernel",
        "separable_conv2d/depthwise_kernel",
        "separable_conv2d/pointwise_kernel",
        "conv1d/kernel",
        "dense/kernel",
    ]


def test_find_nested_paths():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(inputs)))
    names = [kernel.name for kernel in find_kernels(model)]
    assert names == ["inner/dense/kernel", "head/kernel"]


class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.parts = [keras.layers.Dense(3, name="a"), keras.layers.Dense(3, name="b")]

    def call(self, x):
        return self.parts[1](self.parts[0](x))


def test_find_layers_in_custom_layer():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Block(name="block")(inputs))
    names = [kernel.name for kernel in find_kernels(model)]
    assert names == ["block/a/kernel", "block/b/kernel"]


def test_walk_shared_layer_once():
    dense = keras.layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, dense(dense(inputs)))
    paths = [path for path, _ in walk_layers(model)]
    assert paths.count("shared") == 1


def test_find_by_name():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(2, name="b")]
    )
    assert [k.name for k in find_kernels(model, ["b"])] == ["b/kernel"]


def test_find_by_predicate():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(2, name="b")]
    )
    kernels = find_kernels(model, lambda layer: layer.units == 4)
    assert [k.name for k in kernels] == ["a/kernel"]


def test_find_missing_name():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="a")])
    with pytest.raises(ValueError, match="No layer named \\['z'\\]"):
        find_kernels(model, ["z"])


def test_find_named_unprunable_names_fix():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Embedding(10, 4, name="emb")]
    )
    with pytest.raises(ValueError, match="register_prunable_layer\\(Embedding"):
        find_kernels(model, ["emb"])


def test_find_nothing_prunable():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.1)])
    with pytest.raises(ValueError, match="Dense, Conv1D"):
        find_kernels(model)


def test_find_rejects_non_model():
    with pytest.raises(TypeError, match="model=3"):
        find_kernels(3)


def test_register_prunable_layer():
    class Lookup(keras.layers.Embedding):
        pass

    register_prunable_layer(Lookup, {"embeddings": "embeddings_constraint"})
    model = keras.Sequential([keras.Input((2,), dtype="int32"), Lookup(10, 4, name="lookup")])
    assert [k.name for k in find_kernels(model)] == ["lookup/embeddings"]


def test_register_rejects_non_layer():
    with pytest.raises(TypeError, match="layer_class=<class 'int'>"):
        register_prunable_layer(int, {"kernel": "kernel_constraint"})


def test_register_rejects_empty_kernels():
    with pytest.raises(TypeError, match="kernels=\\{\\}"):
        register_prunable_layer(keras.layers.Embedding, {})
