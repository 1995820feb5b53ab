import keras
import numpy as np
import pytest

from keras_cost.quantization import ActivationQuantizer, QuantizedConcatenate


def test_activation_range_frozen_at_inference():
    layer = ActivationQuantizer(ema_decay=0.5)
    layer(np.array([[0.0, 2.0]], "float32"), training=True)
    layer(np.array([[0.0, 100.0]], "float32"))
    assert float(layer.output_max) == 2.0


def test_activation_moving_average():
    layer = ActivationQuantizer(ema_decay=0.5)
    layer(np.array([[0.0, 2.0]], "float32"), training=True)
    layer(np.array([[0.0, 4.0]], "float32"), training=True)
    assert float(layer.output_max) == 3.0


def test_activation_clips_to_range():
    layer = ActivationQuantizer()
    layer(np.array([[0.0, 1.0]], "float32"), training=True)
    out = keras.ops.convert_to_numpy(layer(np.array([[5.0, -5.0]], "float32")))
    np.testing.assert_array_equal(out, [[1.0, 0.0]])


def test_concatenate_values():
    layer = QuantizedConcatenate(axis=1)
    a = np.array([[0.0, 1.0]], "float32")
    b = np.array([[-2.0, 3.0]], "float32")
    out = keras.ops.convert_to_numpy(layer([a, b], training=True))
    step = 5.0 / 255
    np.testing.assert_allclose(out, [[0.0, 1.0, -2.0, 3.0]], atol=step / 2 + 1e-6)
    assert out.shape == (1, 4)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ActivationQuantizer, {"num_bits": 4, "ema_decay": 0.9}),
        (QuantizedConcatenate, {"axis": 1, "num_bits": 6, "ema_decay": 0.5}),
    ],
)
def test_config_round_trip(cls, kwargs):
    layer = cls(**kwargs)
    clone = cls.from_config(layer.get_config())
    for key, value in kwargs.items():
        assert getattr(clone, key) == value


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ActivationQuantizer, {"num_bits": 9}, "num_bits=9"),
        (ActivationQuantizer, {"ema_decay": -0.1}, "ema_decay=-0.1"),
        (QuantizedConcatenate, {"axis": 1.5}, "axis=1.5"),
    ],
)
def test_invalid_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
