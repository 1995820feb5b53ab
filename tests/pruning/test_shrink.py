"""Tests of shrink(): removing pruned units keeps the outputs."""

import keras
import numpy as np
import pytest

from keras_cost.callbacks.prune import PruneCallback
from keras_cost.pruning import ConstantSparsity
from keras_cost.pruning import shrink


def _kill_units(layer, units):
    kernel = layer.kernel.numpy()
    kernel[..., units] = 0.0
    layer.kernel.assign(kernel)


def _randomize(model, seed=0):
    # Non-trivial biases and batch-norm statistics, so folding is exercised.
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights(
            [rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in v.path
             else rng.normal(size=w.shape).astype("float32")
             for v, w in zip(layer.weights, layer.get_weights())]
        )


def test_shrink_dense_chain():
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
         keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    )
    _randomize(model)
    _kill_units(model.layers[0], [1, 4, 6])
    _kill_units(model.layers[1], [0, 2])
    x = np.random.default_rng(1).normal(size=(20, 6)).astype("float32")

    small = shrink(model)

    assert [layer.units for layer in small.layers] == [5, 3, 3]
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_shrink_parameter_count():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    _kill_units(model.layers[0], [0, 1, 2, 3])
    small = shrink(model)
    # Dense(6 -> 4) and Dense(4 -> 3): 28 + 15 parameters.
    assert small.count_params() == 43


def test_shrink_conv_batchnorm_conv():
    model = keras.Sequential(
        [keras.Input((9, 9, 2)), keras.layers.Conv2D(6, 3, activation="relu"),
         keras.layers.BatchNormalization(), keras.layers.Conv2D(4, 3),
         keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    _randomize(model)
    _kill_units(model.layers[0], [0, 3])
    x = np.random.default_rng(1).normal(size=(8, 9, 9, 2)).astype("float32")

    small = shrink(model)

    assert small.layers[0].filters == 4
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_shrink_conv_pool_flatten_dense():
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, activation="relu"),
         keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    _randomize(model)
    _kill_units(model.layers[0], [2, 5])
    x = np.random.default_rng(1).random((8, 8, 8, 1)).astype("float32")

    small = shrink(model)

    assert small.layers[0].filters == 4
    assert small.layers[-1].kernel.shape == (3 * 3 * 4, 10)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_shrink_same_padding_constant_raises():
    model = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, padding="same"),
         keras.layers.Conv2D(2, 3, padding="same")]
    )
    _randomize(model)
    _kill_units(model.layers[0], [1])
    with pytest.raises(ValueError, match="padding='same'"):
        shrink(model)


def test_shrink_after_neuron_pruning():
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(20, activation="relu"), keras.layers.Dense(4)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    callback = PruneCallback(ConstantSparsity(0.5), granularity="neuron", layers=["dense"])
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    small = shrink(model)

    assert small.layers[0].units == 10
    assert small.layers[0].kernel.constraint is None
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_shrink_rejects_functional():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(TypeError, match="keras.Sequential"):
        shrink(model)
