"""BatchNormalization folding in quantize_model."""

import keras
import numpy as np
import pytest

from keras_cost.quantization import (
    QuantizedConcatenate,
    QuantizeWrapper,
    TFLiteModel,
    export_tflite,
    quantize_model,
)

KERNEL_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


def randomize_batch_norms(model, rng):
    """Give every BatchNormalization non-trivial moving statistics, gamma and beta."""
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        channels = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(size=channels))
        layer.moving_variance.assign(rng.uniform(0.2, 3.0, size=channels))
        if layer.scale:
            layer.gamma.assign(rng.normal(size=channels))
        if layer.center:
            layer.beta.assign(rng.normal(size=channels))


def unwrap(model):
    """Return a float model that runs the QAT model's inner layers without fake quantization."""

    def inner(layer):
        if isinstance(layer, QuantizeWrapper):
            return layer.layer
        if isinstance(layer, QuantizedConcatenate):
            return keras.layers.Concatenate(axis=layer.axis)
        return layer

    if isinstance(model, keras.Sequential):
        return keras.Sequential([keras.Input(model.inputs[0].shape[1:])] + [inner(x) for x in model.layers])
    return keras.models.clone_model(model, clone_function=inner)


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def sequential_model(rng):
    # Conv2D with a bias, DepthwiseConv2D without one and a Dense, each
    # followed by a BatchNormalization; center and scale are each turned off once.
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False),
            keras.layers.BatchNormalization(center=False),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
            keras.layers.BatchNormalization(scale=False, epsilon=0.01),
        ]
    )
    randomize_batch_norms(model, rng)
    return model


def test_sequential_folds_all(rng):
    qat = quantize_model(sequential_model(rng))
    assert layer_types(qat) == ["QuantizeWrapper", "ReLU", "QuantizeWrapper", "Flatten", "QuantizeWrapper"]
    assert isinstance(qat, keras.Sequential)


def test_sequential_matches_original(rng):
    model = sequential_model(rng)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    expected = model(x, training=False)
    folded = unwrap(quantize_model(model))
    np.testing.assert_allclose(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_kernel_and_bias_match_numpy(rng):
    model = keras.Sequential(
        [keras.Input((5, 2)), keras.layers.Conv1D(3, 2), keras.layers.BatchNormalization(epsilon=0.1)]
    )
    randomize_batch_norms(model, rng)
    kernel, bias = model.layers[0].get_weights()
    gamma, beta, mean, variance = model.layers[1].get_weights()

    wrapper = quantize_model(model).layers[0]
    scale = gamma / np.sqrt(variance + 0.1)
    np.testing.assert_allclose(wrapper.layer.kernel.numpy(), kernel * scale, rtol=1e-6)
    np.testing.assert_allclose(wrapper.layer.bias.numpy(), beta + (bias - mean) * scale, rtol=1e-6, atol=1e-7)
    assert wrapper.name == "quant_" + model.layers[0].name


def test_depthwise_channel_order(rng):
    # Output channel i * depth_multiplier + m comes from kernel[..., i, m].
    model = keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            keras.layers.DepthwiseConv2D(1, depth_multiplier=3, use_bias=False),
            keras.layers.BatchNormalization(center=False),
        ]
    )
    model.layers[0].kernel.assign(np.ones((1, 1, 2, 3)))
    model.layers[1].gamma.assign(np.arange(1.0, 7.0))
    model.layers[1].moving_variance.assign(np.full(6, 1.0 - 1e-3))

    kernel = quantize_model(model).layers[0].layer.kernel.numpy()
    np.testing.assert_allclose(kernel[0, 0], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], rtol=1e-6)


def functional_model(rng):
    # A Conv2D -> BN -> ReLU branch and a Conv2D -> BN branch merged by a
    # Concatenate, then a Dense -> BN head.
    inputs = keras.Input((6, 6, 2), name="image")
    left = keras.layers.Conv2D(3, 3, name="left")(inputs)
    left = keras.layers.BatchNormalization(name="left_bn")(left)
    left = keras.layers.ReLU(name="left_relu")(left)
    right = keras.layers.Conv2D(3, 3, name="right")(inputs)
    right = keras.layers.BatchNormalization(name="right_bn")(right)
    merged = keras.layers.Concatenate(name="merge")([left, right])
    hidden = keras.layers.Dense(4, name="head")(keras.layers.Flatten(name="flat")(merged))
    outputs = keras.layers.BatchNormalization(name="head_bn")(hidden)
    model = keras.Model(inputs, outputs)
    randomize_batch_norms(model, rng)
    return model


def test_functional_folds_all(rng):
    qat = quantize_model(functional_model(rng))
    names = [layer.name for layer in qat.layers]
    assert not any(name.endswith("_bn") for name in names)
    assert isinstance(qat.get_layer("quant_left"), QuantizeWrapper)
    assert isinstance(qat.get_layer("quant_head"), QuantizeWrapper)


def test_functional_matches_original(rng):
    model = functional_model(rng)
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    expected = model(x, training=False)
    folded = unwrap(quantize_model(model))
    np.testing.assert_allclose(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_folded_concatenate_input_shares_range(rng):
    # right_bn fed the Concatenate, so the folded right conv takes its range.
    qat = quantize_model(functional_model(rng))
    assert qat.get_layer("quant_right").quantize_output is False
    assert qat.get_layer("quant_left").quantize_output is True


def test_nested_model_folds(rng):
    block = keras.Sequential(
        [keras.Input((5, 5, 1)), keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()],
        name="block",
    )
    randomize_batch_norms(block, rng)
    inputs = keras.Input((5, 5, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(block(inputs))))
    x = rng.normal(size=(4, 5, 5, 1)).astype("float32")

    qat = quantize_model(model)
    assert layer_types(qat.get_layer("block")) == ["QuantizeWrapper"]
    unwrapped_block = unwrap(qat.get_layer("block"))
    np.testing.assert_allclose(unwrapped_block(x), block(x, training=False), rtol=1e-5, atol=1e-5)


def test_original_unchanged(rng):
    model = functional_model(rng)
    before = [weight.copy() for weight in model.get_weights()]
    types_before = layer_types(model)
    qat = quantize_model(model)
    qat.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    qat.fit(x, rng.normal(size=(16, 4)), epochs=1, verbose=0)

    assert layer_types(model) == types_before
    for expected, actual in zip(before, model.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_fold_off_keeps_batch_norm(rng):
    with pytest.warns(UserWarning, match=r"left_bn, left_relu, right_bn, head_bn\. "):
        qat = quantize_model(functional_model(rng), fold_batch_norm=False)
    assert isinstance(qat.get_layer("left_bn"), keras.layers.BatchNormalization)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_fold_option_invalid(value, rng):
    with pytest.raises(ValueError, match=r"fold_batch_norm=" + repr(value)):
        quantize_model(functional_model(rng), fold_batch_norm=value)


def shared_output_model():
    # The conv output feeds both the BatchNormalization and an Add.
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    normalized = keras.layers.BatchNormalization(name="bn")(conv)
    return keras.Model(inputs, keras.layers.Add(name="add")([normalized, conv]))


def channel_axis_model():
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(3, 1, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization(axis=1, name="bn")(conv))


def activation_model():
    return keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            keras.layers.Conv2D(3, 1, activation="relu", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )


def shared_batch_norm_model():
    # One BatchNormalization layer applied to two conv outputs.
    inputs = keras.Input((4, 4, 2))
    batch_norm = keras.layers.BatchNormalization(name="bn")
    first = batch_norm(keras.layers.Conv2D(2, 1, name="conv")(inputs))
    second = batch_norm(keras.layers.Conv2D(2, 1, name="conv_2")(inputs))
    return keras.Model(inputs, keras.layers.Add(name="add")([first, second]))


def training_call_model():
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(2, 1, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(conv, training=True))


def shared_conv_model():
    inputs = keras.Input((4, 4, 2))
    conv = keras.layers.Conv2D(2, 1, name="conv")
    normalized = keras.layers.BatchNormalization(name="bn")(conv(inputs))
    return keras.Model(inputs, conv(normalized))


@pytest.mark.parametrize(
    "build, reason",
    [
        (shared_output_model, "the output of 'conv' also feeds another layer or is a model output"),
        (channel_axis_model, "it normalizes axis 1, not the channel axis -1"),
        (activation_model, "'conv' applies activation 'relu' before it"),
        (shared_batch_norm_model, "it is called more than once"),
        (shared_conv_model, "'conv' is called more than once"),
        (training_call_model, "it is called with training=True"),
    ],
)
def test_unfoldable_kept_and_named(build, reason, rng):
    model = build()
    randomize_batch_norms(model, rng)
    x = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    with pytest.warns(UserWarning) as records:
        qat = quantize_model(model)
    message = str(records[0].message)
    assert f"bn (not folded: {reason})" in message
    assert isinstance(qat.get_layer("bn"), keras.layers.BatchNormalization)
    expected = model(x, training=False)
    np.testing.assert_allclose(unwrap(qat)(x, training=False), expected, rtol=1e-5, atol=1e-5)


def test_wrapper_then_batch_norm_named():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            QuantizeWrapper(keras.layers.Dense(3), name="quant_dense"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    with pytest.warns(UserWarning, match=r"bn \(not folded: 'quant_dense' is already a QuantizeWrapper\)"):
        quantize_model(model)


def test_config_round_trip(rng):
    qat = quantize_model(functional_model(rng))
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    rebuilt = keras.Model.from_config(qat.get_config())
    rebuilt.set_weights(qat.get_weights())
    assert layer_types(rebuilt) == layer_types(qat)
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), qat.predict(x, verbose=0))


def test_keras_file_round_trip(tmp_path, rng):
    qat = quantize_model(sequential_model(rng))
    qat.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
    qat.fit(x, rng.normal(size=(16, 5)), epochs=1, verbose=0)
    qat.save(tmp_path / "folded.keras")
    loaded = keras.models.load_model(tmp_path / "folded.keras")
    assert layer_types(loaded) == layer_types(qat)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))


def conv_bn_relu_model(rng):
    # Conv2D -> BN -> ReLU -> Flatten -> Dense(3).
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    randomize_batch_norms(model, rng)
    # A small shift keeps part of every channel above 0, so that the ReLU
    # is not dead on the zero-mean inputs below.
    batch_norm = model.layers[1]
    batch_norm.moving_mean.assign(rng.uniform(-0.2, 0.2, size=4))
    batch_norm.beta.assign(rng.uniform(-0.5, 0.5, size=4))
    return model


@pytest.mark.parametrize("fold_batch_norm", [True, False])
def test_int8_export_ops(fold_batch_norm, rng):
    x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
    qat = quantize_model(conv_bn_relu_model(rng), fold_batch_norm=fold_batch_norm)
    qat.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    qat.fit(x, np.zeros((64, 3)), epochs=1, verbose=0)
    runner = TFLiteModel(export_tflite(qat, representative_data=x, quantize="int8"))

    float_kernels = [
        op["name"]
        for op in runner.op_details
        if op["name"] in KERNEL_OPS and "float32" in op["input_types"]
    ]
    assert float_kernels == []
    assert "CONV_2D" in runner.ops
    batch_norm_ops = [name for name in runner.ops if name in ("MUL", "ADD", "SUB")]
    if fold_batch_norm:
        assert batch_norm_ops == []
        step = runner.output_details[0]["scale"]
        difference = np.abs(runner.predict(x) - qat.predict(x, verbose=0))
        assert np.percentile(difference, 99) <= 3 * step + 1e-5
    else:
        # The control: an unfolded BatchNormalization after a fake-quantized
        # conv output stays as standalone affine ops.
        assert batch_norm_ops != []
