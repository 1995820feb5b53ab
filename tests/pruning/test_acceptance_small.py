"""Small versions of the properties that benchmarks/pruning_acceptance.py measures."""

import zlib

import keras
import numpy as np
import pytest

from keras_cost.callbacks.prune import PruneCallback
from keras_cost.pruning import ConstantSparsity
from keras_cost.pruning import l0_regularize
from keras_cost.pruning import shrink
from keras_cost.pruning import sparsity
from keras_cost.pruning import strip_pruning


def _mlp():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="hidden_1"),
            keras.layers.Dense(5, activation="relu", name="hidden_2"),
            keras.layers.Dense(3, name="logits"),
        ]
    )


def _mlp_parameters(first, second):
    # Dense 6 -> first -> second -> 3, with biases.
    return 6 * first + first + first * second + second + second * 3 + 3


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=64)
    return x, y


def _compile(model):
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _kill_units(model, layer_name, units):
    # A large negative bias keeps a ReLU unit at 0 on every input, so its
    # APoZ is 100%.
    bias = model.get_layer(layer_name).bias
    values = bias.numpy()
    values[units] = -100.0
    bias.assign(values)


@pytest.fixture(scope="module")
def apoz_model():
    keras.utils.set_random_seed(0)
    model = _mlp()
    _kill_units(model, "hidden_1", [1, 4])
    _kill_units(model, "hidden_2", [3])
    _compile(model)
    callbacks = [
        PruneCallback(
            ConstantSparsity(2 / 8, begin_step=3, end_step=3),
            criterion="apoz", granularity="neuron", layers=["hidden_1"],
        ),
        PruneCallback(
            ConstantSparsity(1 / 5, begin_step=3, end_step=3),
            criterion="apoz", granularity="neuron", layers=["hidden_2"],
        ),
    ]
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=2, callbacks=callbacks, verbose=0)
    return model


def _dead_units(model, layer_name):
    kernel = model.get_layer(layer_name).kernel.numpy()
    return np.flatnonzero(np.all(kernel == 0, axis=0)).tolist()


def test_apoz_callbacks_per_layer_first(apoz_model):
    assert _dead_units(apoz_model, "hidden_1") == [1, 4]


def test_apoz_callbacks_per_layer_second(apoz_model):
    assert _dead_units(apoz_model, "hidden_2") == [3]


def test_apoz_shrink_parameter_count(apoz_model):
    small = shrink(strip_pruning(apoz_model))
    assert small.count_params() == _mlp_parameters(6, 4)


def test_apoz_shrink_outputs_equal(apoz_model):
    small = shrink(strip_pruning(apoz_model))
    x, _ = _data()
    expected = apoz_model.predict(x, verbose=0)
    difference = np.max(np.abs(expected - small.predict(x, verbose=0)))
    assert difference <= 1e-5


@pytest.fixture(scope="module")
def gated_model():
    keras.utils.set_random_seed(0)
    gated = l0_regularize(_mlp(), l0_lambda=1e-3)
    # log_alpha = -10 gives an inference gate of exactly 0.
    for name, closed in (("hidden_1_l0", [0, 2, 5]), ("hidden_2_l0", [4])):
        log_alpha = gated.get_layer(name).log_alpha
        values = log_alpha.numpy()
        values[closed] = -10.0
        log_alpha.assign(values)
    return gated


def test_l0_shrink_parameter_count(gated_model):
    small = shrink(strip_pruning(gated_model))
    assert small.count_params() == _mlp_parameters(5, 4)


def test_l0_shrink_outputs_equal(gated_model):
    small = shrink(strip_pruning(gated_model))
    x, _ = _data()
    expected = gated_model.predict(x, verbose=0)
    difference = np.max(np.abs(expected - small.predict(x, verbose=0)))
    assert difference <= 1e-5


def _zipped(model):
    raw = b"".join(w.tobytes() for w in model.get_weights())
    return len(zlib.compress(raw, 9))


def test_zip_80_percent_three_times_smaller():
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    _compile(model)
    dense_size = _zipped(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64)).astype("float32")
    y = rng.integers(0, 10, size=32)
    callback = PruneCallback(ConstantSparsity(0.8, begin_step=0, end_step=0))
    model.fit(x, y, batch_size=32, epochs=1, callbacks=[callback], verbose=0)
    stripped = strip_pruning(model)

    assert abs(sparsity(stripped).overall - 0.8) < 1e-3
    assert dense_size / _zipped(stripped) >= 3.0
