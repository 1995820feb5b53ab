"""Tests of L0 regularization with hard-concrete gates."""

import math

import keras
import numpy as np
import pytest

from keras_cost.pruning import L0Gate
from keras_cost.pruning import l0_regularize
from keras_cost.pruning import shrink
from keras_cost.pruning import strip_pruning


def _mlp():
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(24, activation="relu"), keras.layers.Dense(4)]
    )


def _gate(log_alpha):
    gate = L0Gate(keras.layers.Dense(len(log_alpha)), l0_lambda=0.1)
    gate.build((None, 3))
    gate.log_alpha.assign(np.asarray(log_alpha, "float32"))
    return gate


def test_gate_inference_values():
    # clip(sigmoid(a) * 1.2 - 0.1, 0, 1) for a = 3, 0, -5.
    expected = [1.0, 0.5, 0.0]
    gates = keras.ops.convert_to_numpy(_gate([3.0, 0.0, -5.0]).gates(training=False))
    np.testing.assert_allclose(gates, expected, atol=1e-6)


def test_gate_expected_l0_by_hand():
    log_alpha = [3.0, 0.0, -5.0]
    shift = (2.0 / 3.0) * math.log(0.1 / 1.1)
    expected = sum(1.0 / (1.0 + math.exp(-(a - shift))) for a in log_alpha)
    value = float(_gate(log_alpha).expected_open_gates())
    assert value == pytest.approx(expected, rel=1e-5)


def test_gate_training_samples_in_range():
    gates = keras.ops.convert_to_numpy(_gate([0.0] * 200).gates(training=True))
    assert gates.min() >= 0.0
    assert gates.max() <= 1.0
    assert np.any((gates > 0) & (gates < 1))


def test_gate_adds_loss():
    # lambda * E[||W||_0]: each of the 3 units has 3 kernel weights and a
    # bias, so an open gate keeps 4 weights.
    gate = _gate([0.0, 0.0, 0.0])
    gate(keras.ops.ones((1, 3)))
    assert gate.weights_per_unit == 4
    expected = 0.1 * 4 * float(gate.expected_open_gates())
    assert float(gate.losses[0]) == pytest.approx(expected, rel=1e-6)


def test_conv_gate_counts_kernel_slice():
    # A 3x3 Conv2D over 2 channels without bias: 18 weights per filter.
    gate = L0Gate(keras.layers.Conv2D(5, 3, use_bias=False), l0_lambda=0.1)
    gate.build((None, 6, 6, 2))
    assert gate.weights_per_unit == 18


def test_gate_rejects_layer():
    with pytest.raises(TypeError, match="BatchNormalization"):
        L0Gate(keras.layers.BatchNormalization(), l0_lambda=0.1)


def test_gate_rejects_lambda():
    with pytest.raises(ValueError, match="l0_lambda=-1"):
        L0Gate(keras.layers.Dense(2), l0_lambda=-1)


def test_regularize_keeps_outputs():
    model = _mlp()
    x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    gated = l0_regularize(model, l0_lambda=1e-3)
    assert isinstance(gated.layers[0], L0Gate)
    assert not isinstance(gated.layers[1], L0Gate)
    np.testing.assert_allclose(gated.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_regularize_missing_layer():
    with pytest.raises(ValueError, match="No Dense or Conv layer named \\['nope'\\]"):
        l0_regularize(_mlp(), l0_lambda=1e-3, layers=["nope"])


def test_gate_save_load(tmp_path):
    gated = l0_regularize(_mlp(), l0_lambda=1e-3)
    gated.layers[0].log_alpha.assign(np.linspace(-4, 4, 24).astype("float32"))
    x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    path = str(tmp_path / "gated.keras")
    gated.save(path)

    loaded = keras.models.load_model(path)

    config = loaded.layers[0].get_config()
    assert config["l0_lambda"] == 1e-3
    assert config["activation"] == "relu"
    np.testing.assert_array_equal(loaded.layers[0].log_alpha.numpy(), gated.layers[0].log_alpha.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), gated.predict(x, verbose=0), atol=1e-6)


def test_l0_train_strip_shrink():
    # A strong penalty closes gates; stripping folds them, shrinking drops
    # the closed units, and outputs stay those of the gated model.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x[:, :4] * 2.0).astype("float32")
    gated = l0_regularize(_mlp(), l0_lambda=0.003)
    gated.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    gated.fit(x, y, batch_size=32, epochs=20, verbose=0)

    stripped = strip_pruning(gated)
    small = shrink(stripped)

    closed = int((keras.ops.convert_to_numpy(gated.layers[0].gates()) == 0).sum())
    assert closed > 0
    assert small.layers[0].units == 24 - closed
    np.testing.assert_allclose(stripped.predict(x, verbose=0), gated.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(small.predict(x, verbose=0), gated.predict(x, verbose=0), atol=1e-4)


def test_numpy_lambda_accepted():
    gate = L0Gate(keras.layers.Dense(2), l0_lambda=np.float32(1e-4))
    assert gate.l0_lambda == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"l0_lambda": float("inf")}, "finite number >= 0.*l0_lambda=inf"),
        ({"l0_lambda": 1e-4, "initial_log_alpha": float("nan")}, "initial_log_alpha=nan"),
    ],
)
def test_non_finite_settings_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L0Gate(keras.layers.Dense(2), **kwargs)
