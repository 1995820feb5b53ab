import keras
import numpy as np
import pytest

from keras_cost.quantization import QuantizeWrapper
from keras_cost.quantization.fake_quant import MIN_RANGE


def symmetric_int8_reference(kernel):
    # numpy reference of narrow-range symmetric 8-bit fake quantization.
    bound = np.abs(kernel).max()
    scale = 2 * bound / 254
    return np.clip(np.round(kernel / scale), -127, 127) * scale


def test_dense_matches_reference(rng):
    layer = QuantizeWrapper(keras.layers.Dense(3, activation="relu"))
    x = rng.normal(size=(4, 5)).astype("float32")
    layer(x)
    kernel, bias = layer.layer.get_weights()
    layer.output_min.assign(-1.0)
    layer.output_max.assign(1.0)

    expected = np.maximum(x @ symmetric_int8_reference(kernel) + bias, 0)
    step = 2.0 / 255
    np.testing.assert_allclose(layer(x), np.clip(expected, -1, 1), atol=step / 2 + 1e-6)


def test_conv_matches_reference(rng):
    layer = QuantizeWrapper(keras.layers.Conv2D(2, 3, use_bias=False))
    x = rng.normal(size=(1, 4, 4, 1)).astype("float32")
    layer(x)
    layer.output_min.assign(-20.0)
    layer.output_max.assign(20.0)
    kernel = symmetric_int8_reference(layer.layer.get_weights()[0])

    expected = np.zeros((1, 2, 2, 2), "float32")
    for i in range(2):
        for j in range(2):
            patch = x[0, i : i + 3, j : j + 3, :]
            expected[0, i, j] = np.tensordot(patch, kernel, axes=3)
    step = 40.0 / 255
    np.testing.assert_allclose(layer(x), expected, atol=step / 2 + 1e-5)


def test_per_channel_conv_ranges(rng):
    layer = QuantizeWrapper(keras.layers.Conv2D(2, 1, use_bias=False), per_channel=True)
    layer(np.ones((1, 2, 2, 1), "float32"))
    layer.layer.kernel.assign(np.array([[[[1.0, 0.01]]]], "float32"))
    quantized = keras.ops.convert_to_numpy(layer.quantized_kernel())
    # Each channel is exact at its own bound; one shared range would round
    # 0.01 to a multiple of 1/127.
    np.testing.assert_allclose(quantized.ravel(), [1.0, 0.01], rtol=1e-6)


def test_output_not_quantized(rng):
    layer = QuantizeWrapper(keras.layers.Dense(2, use_bias=False), quantize_output=False)
    x = rng.normal(size=(4, 3)).astype("float32")
    layer(x)
    expected = x @ keras.ops.convert_to_numpy(layer.quantized_kernel())
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_ranges_update_in_training_only(rng):
    layer = QuantizeWrapper(keras.layers.Dense(2), ema_decay=0.5)
    x = rng.normal(size=(8, 3)).astype("float32")
    layer(x, training=True)
    first = layer(x, training=False)
    first_min = float(layer.output_min)

    layer(10 * x, training=False)
    assert float(layer.output_min) == first_min
    layer(10 * x, training=True)
    assert float(layer.output_min) < first_min
    assert first.shape == (8, 2)


def test_first_batch_sets_range():
    layer = QuantizeWrapper(keras.layers.Dense(1, use_bias=False, kernel_initializer="ones"))
    layer(np.array([[1.0], [3.0]], "float32"), training=True)
    assert float(layer.output_min) == 1.0
    assert float(layer.output_max) == 3.0
    assert float(layer.output_range_set) == 1.0


def test_zero_kernel_stays_zero():
    layer = QuantizeWrapper(keras.layers.Dense(2, kernel_initializer="zeros", bias_initializer="zeros"))
    out = layer(np.ones((3, 4), "float32"), training=True)
    assert np.all(keras.ops.convert_to_numpy(layer.quantized_kernel()) == 0.0)
    assert np.all(keras.ops.convert_to_numpy(out) == 0.0)
    assert float(layer.output_max) - float(layer.output_min) == 0.0


def test_constant_bias_kept(rng):
    layer = QuantizeWrapper(
        keras.layers.Dense(
            3,
            kernel_initializer=keras.initializers.Constant(0.5),
            bias_initializer=keras.initializers.Constant(5.0),
        )
    )
    zeros = np.zeros((4, 2), "float32")
    layer(zeros, training=True)
    out = keras.ops.convert_to_numpy(layer(zeros))
    step = 5.0 / 255
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 5.0, atol=step / 2)


def test_dead_relu_no_nan():
    layer = QuantizeWrapper(
        keras.layers.Dense(
            3, activation="relu", bias_initializer=keras.initializers.Constant(-100.0)
        )
    )
    x = np.ones((4, 2), "float32")
    out_train = keras.ops.convert_to_numpy(layer(x, training=True))
    out = keras.ops.convert_to_numpy(layer(x))
    assert np.all(out_train == 0.0)
    assert np.all(out == 0.0)
    assert float(layer.output_max) == 0.0


def test_dead_relu_gradient_finite():
    layer = QuantizeWrapper(
        keras.layers.Dense(2, activation="relu", bias_initializer=keras.initializers.Constant(-100.0))
    )
    model = keras.Sequential([keras.Input((2,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(np.ones((8, 2)), np.ones((8, 2)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_constraint_applied_after_fit(fixed_mask, rng):
    mask = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "float32")
    dense = keras.layers.Dense(2, kernel_constraint=fixed_mask(mask))
    model = keras.Sequential([keras.Input((3,)), QuantizeWrapper(dense)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(rng.normal(size=(16, 3)), rng.normal(size=(16, 2)), epochs=2, verbose=0)
    kernel = dense.kernel.numpy()
    assert np.all(kernel[mask == 0] == 0.0)
    assert np.all(kernel[mask == 1] != 0.0)


def test_kernel_is_inner_variable():
    dense = keras.layers.Dense(2)
    layer = QuantizeWrapper(dense)
    layer(np.ones((1, 3), "float32"))
    assert any(variable is dense.kernel for variable in layer.trainable_variables)
    assert len(layer.trainable_variables) == 2


def test_mixed_float16_dtypes():
    # Conv2D(16, 3), ReLU, Flatten, Dense(10, float32) under mixed_float16.
    keras.config.set_dtype_policy("mixed_float16")
    conv = QuantizeWrapper(keras.layers.Conv2D(16, 3))
    dense = QuantizeWrapper(keras.layers.Dense(10, dtype="float32"))
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), conv, keras.layers.ReLU(), keras.layers.Flatten(), dense]
    )
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).random((8, 8, 8, 1), dtype="float32")
    history = model.fit(x, np.zeros((8, 10)), batch_size=4, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert conv.compute_dtype == "float16"
    assert dense.compute_dtype == "float32"
    for variable in conv.non_trainable_variables + dense.non_trainable_variables:
        assert variable.dtype == "float32", variable.path
    assert conv.layer.kernel.dtype == "float32"
    assert keras.backend.standardize_dtype(conv.quantized_kernel().dtype) == "float32"
    assert float(conv.output_range_set) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bits": 1}, "num_bits=1"),
        ({"num_bits": 16}, "num_bits=16"),
        ({"num_bits": 8.0}, "num_bits=8.0"),
        ({"ema_decay": 1.0}, "ema_decay=1.0"),
        ({"per_channel": "yes"}, "per_channel='yes'"),
        ({"per_channel": 1}, "per_channel=1"),
        ({"quantize_output": None}, "quantize_output=None"),
        ({"activation_bits": 9}, "activation_bits=9"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeWrapper(keras.layers.Conv2D(2, 3), **kwargs)


def test_dense_per_channel_rejected():
    with pytest.raises(ValueError, match="per_channel=False"):
        QuantizeWrapper(keras.layers.Dense(2), per_channel=True)


def test_unsupported_layer_rejected():
    with pytest.raises(ValueError, match="BatchNormalization"):
        QuantizeWrapper(keras.layers.BatchNormalization())


def test_config_round_trip():
    layer = QuantizeWrapper(
        keras.layers.Conv2D(4, 3, activation="relu"),
        num_bits=6,
        per_channel=True,
        ema_decay=0.9,
        quantize_output=False,
        activation_bits=7,
    )
    config = layer.get_config()
    clone = QuantizeWrapper.from_config(config)
    assert clone.get_config() == config
    assert clone.num_bits == 6
    assert clone.activation_bits == 7
    assert clone.per_channel is True
    assert clone.ema_decay == 0.9
    assert clone.quantize_output is False
    assert clone.layer.filters == 4


def test_default_range_before_training():
    layer = QuantizeWrapper(keras.layers.Dense(1))
    layer(np.ones((1, 1), "float32"))
    assert float(layer.output_min) == -6.0
    assert float(layer.output_max) == 6.0


def test_min_range_constant():
    assert MIN_RANGE > 0


@pytest.mark.slow
def test_save_load_fresh_process(tmp_path, fresh_load, rng):
    # Input(16), Dense(8), Activation("relu"), Dense(2) with both Dense wrapped.
    model = keras.Sequential(
        [
            keras.Input((16,)),
            QuantizeWrapper(keras.layers.Dense(8)),
            keras.layers.Activation("relu"),
            QuantizeWrapper(keras.layers.Dense(2)),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(32, 16)).astype("float32")
    model.fit(x, rng.normal(size=(32, 2)), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)

    path = tmp_path / "qat.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    loaded_same_process = keras.models.load_model(path)
    outputs = fresh_load(path, tmp_path / "x.npy", tmp_path / "y.npy")

    np.testing.assert_array_equal(loaded_same_process.predict(x, verbose=0), expected)
    np.testing.assert_array_equal(outputs, expected)


def test_conv1d_causal_matches_layer(rng):
    conv = keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2, use_bias=False)
    x = rng.normal(size=(2, 10, 2)).astype("float32")
    conv(x)
    layer = QuantizeWrapper(conv, quantize_output=False)
    kernel = symmetric_int8_reference(conv.kernel.numpy())
    reference = keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2, use_bias=False)
    reference(x)
    reference.set_weights([kernel])
    np.testing.assert_allclose(layer(x), reference(x), atol=1e-5)


def test_depthwise_matches_layer(rng):
    depthwise = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    x = rng.normal(size=(1, 5, 5, 2)).astype("float32")
    depthwise(x)
    layer = QuantizeWrapper(depthwise, quantize_output=False)
    kernel, bias = depthwise.get_weights()
    reference = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    reference(x)
    reference.set_weights([symmetric_int8_reference(kernel), bias])
    np.testing.assert_allclose(layer(x), reference(x), atol=1e-5)



def nudged_range(range_min, range_max, num_bits=8):
    # numpy copy of the range nudging of TF's fake-quant op: the zero point
    # is rounded to an integer and the range moves with it.
    steps = 2**num_bits - 1
    scale = (range_max - range_min) / steps
    zero_point = np.round(np.clip(-range_min / scale, 0, steps))
    return -zero_point * scale, (steps - zero_point) * scale


def test_ranges_pass_no_gradient(rng):
    # The kernel range and the moving output range are statistics, as in
    # TFMOT: the gradient is straight-through for outputs inside the
    # (nudged) range and 0 outside it, with no path through the batch
    # minimum and maximum. So d sum(outputs) / dW = x^T @ inside.
    import tensorflow as tf

    layer = QuantizeWrapper(keras.layers.Dense(3))
    x = rng.normal(size=(16, 4)).astype("float32")
    layer(x)
    kernel, bias = layer.layer.get_weights()
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(layer(x, training=True))
    gradient = tape.gradient(loss, layer.layer.kernel)

    # The first training batch sets the range to its own minimum and maximum.
    outputs = x.astype("float64") @ kernel + bias
    low, high = nudged_range(min(outputs.min(), 0.0), max(outputs.max(), 0.0))
    inside = ((outputs >= low - 1e-6) & (outputs <= high + 1e-6)).astype("float64")
    np.testing.assert_allclose(gradient, x.T @ inside, rtol=1e-5, atol=1e-5)


def test_weight_and_output_bits_are_separate(rng):
    # num_bits=4 puts the kernel on 15 levels; the output keeps 8 bits, so
    # with the output range set to [0, 2.55] its values are multiples of 0.01.
    layer = QuantizeWrapper(keras.layers.Dense(3), num_bits=4)
    x = rng.normal(size=(32, 5)).astype("float32")
    layer(x)
    layer.output_min.assign(0.0)
    layer.output_max.assign(2.55)
    layer.output_range_set.assign(1.0)

    kernel = keras.ops.convert_to_numpy(layer.quantized_kernel())
    bound = np.abs(layer.layer.kernel.numpy()).max()
    np.testing.assert_allclose(kernel / (bound / 7), np.round(kernel / (bound / 7)), atol=1e-4)
    assert len(np.unique(kernel)) <= 15

    outputs = keras.ops.convert_to_numpy(layer(x))
    steps = outputs / 0.01
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert len(np.unique(outputs)) > 16


def test_numpy_integer_bits_accepted():
    # A sweep such as `for bits in np.arange(2, 9)` passes NumPy integers.
    layer = QuantizeWrapper(keras.layers.Dense(2), num_bits=np.int64(4), activation_bits=np.int32(6))
    assert (layer.num_bits, layer.activation_bits) == (4, 6)
    assert type(layer.get_config()["num_bits"]) is int
