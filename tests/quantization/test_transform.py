import warnings

import keras
import numpy as np
import pytest

from keras_cost.quantization import QuantizeWrapper, quantize_model


def wrapped_names(model):
    return [layer.layer.name for layer in model.layers if isinstance(layer, QuantizeWrapper)]


def test_sequential_wrapped(cnn):
    qat = quantize_model(cnn())
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds == ["QuantizeWrapper", "MaxPooling2D", "QuantizeWrapper", "Flatten", "QuantizeWrapper"]
    assert isinstance(qat, keras.Sequential)


def test_weights_copied(cnn, rng):
    model = cnn()
    qat = quantize_model(model)
    for original, wrapper in zip(model.layers[::2], [qat.layers[0], qat.layers[2], qat.layers[4]]):
        for expected, actual in zip(original.get_weights(), wrapper.layer.get_weights()):
            np.testing.assert_array_equal(actual, expected)


def test_original_unchanged_by_fit(cnn, classifier, rng):
    model = cnn()
    before = [w.copy() for w in model.get_weights()]
    qat = classifier(quantize_model(model))
    qat.fit(rng.random((16, 8, 8, 1)), rng.integers(0, 10, 16), epochs=1, verbose=0)
    for expected, actual in zip(before, model.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_functional_nested(rng):
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), keras.layers.Dense(6)], name="inner")
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(2, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(5, 4)).astype("float32")

    qat = quantize_model(model)
    nested = qat.get_layer("inner")
    assert wrapped_names(nested) == ["dense", "dense_1"]
    assert wrapped_names(qat) == ["head"]
    np.testing.assert_allclose(qat(x), model(x), atol=0.5)


def test_float_layers_named():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = keras.layers.Activation("relu", name="act")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    with pytest.warns(UserWarning, match="bn, act"):
        quantize_model(model, fold_batch_norm=False)


def test_passthrough_not_named(cnn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(cnn())


def test_pruned_kernel_stays_pruned(fixed_mask, classifier, rng):
    mask = (rng.random((16, 10)) > 0.5).astype("float32")
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(10, kernel_constraint=fixed_mask(mask))]
    )
    model.layers[0].kernel.assign(model.layers[0].kernel * mask)
    qat = classifier(quantize_model(model))
    qat.fit(rng.random((64, 16)), rng.integers(0, 10, 64), epochs=2, verbose=0)
    kernel = qat.layers[0].layer.kernel.numpy()
    assert np.all(kernel[mask == 0] == 0.0)
    assert qat.layers[0].layer.kernel_constraint is model.layers[0].kernel_constraint


def test_existing_wrapper_copied(rng):
    model = keras.Sequential([keras.Input((3,)), QuantizeWrapper(keras.layers.Dense(2))])
    model.layers[0].output_max.assign(4.0)
    qat = quantize_model(model)
    assert isinstance(qat.layers[0].layer, keras.layers.Dense)
    assert float(qat.layers[0].output_max) == 4.0


def test_subclassed_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="QuantizeWrapper inside"):
        quantize_model(model)


def test_nothing_to_wrap():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no layer"):
        quantize_model(model)


def test_not_a_model():
    with pytest.raises(TypeError, match="Keras 3"):
        quantize_model(keras.layers.Dense(2))


def test_invalid_num_bits(cnn):
    with pytest.raises(ValueError, match="num_bits=0"):
        quantize_model(cnn(), num_bits=0)


def test_activation_bits_default_to_8(cnn):
    qat = quantize_model(cnn(), num_bits=4)
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert [layer.num_bits for layer in wrappers] == [4] * len(wrappers)
    assert [layer.activation_bits for layer in wrappers] == [8] * len(wrappers)


def test_invalid_activation_bits(cnn):
    with pytest.raises(ValueError, match="activation_bits=1"):
        quantize_model(cnn(), activation_bits=1)


def test_per_channel_skips_dense(cnn):
    qat = quantize_model(cnn(), per_channel=True)
    assert qat.layers[0].per_channel is True
    assert qat.layers[4].per_channel is False


def concatenate_model():
    inputs = keras.Input((4,), name="x")
    left = keras.layers.Dense(3, activation="sigmoid", name="left")(inputs)
    right = keras.layers.Dense(3, name="right")(inputs)
    merged = keras.layers.Concatenate(name="merge")([left, right])
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(merged))


def test_concatenate_replaced():
    qat = quantize_model(concatenate_model())
    merge = qat.get_layer("quant_merge")
    assert type(merge).__name__ == "QuantizedConcatenate"
    assert qat.get_layer("quant_left").quantize_output is False
    assert qat.get_layer("quant_right").quantize_output is False
    assert qat.get_layer("quant_head").quantize_output is True


def test_concatenate_shared_range(rng):
    qat = quantize_model(concatenate_model())
    x = rng.normal(size=(16, 4)).astype("float32")
    qat(x, training=True)
    merge = qat.get_layer("quant_merge")
    left = keras.ops.convert_to_numpy(qat.get_layer("quant_left")(x))
    right = keras.ops.convert_to_numpy(qat.get_layer("quant_right")(x))
    assert float(merge.output_min) == pytest.approx(min(left.min(), right.min()), abs=1e-6)
    assert float(merge.output_max) == pytest.approx(max(left.max(), right.max()), abs=1e-6)


@pytest.mark.slow
def test_concatenate_model_fresh_load(tmp_path, fresh_load, rng):
    qat = quantize_model(concatenate_model())
    qat.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(16, 4)).astype("float32")
    qat.fit(x, rng.normal(size=(16, 2)), epochs=1, verbose=0)
    path = tmp_path / "concat.keras"
    qat.save(path)
    np.save(tmp_path / "x.npy", x)
    outputs = fresh_load(path, tmp_path / "x.npy", tmp_path / "y.npy")
    np.testing.assert_array_equal(outputs, qat.predict(x, verbose=0))


def test_prune_callback_mask_kept(tmp_path, rng):
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import ConstantSparsity

    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)]
    )
    model.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(64, 16)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[PruneCallback(ConstantSparsity(0.5))])
    zeros = [layer.kernel.numpy() == 0 for layer in model.layers]

    qat = quantize_model(model)
    qat.compile(optimizer="adam", loss="mse")
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for wrapper, expected in zip(qat.layers, zeros):
        assert np.array_equal(wrapper.layer.kernel.numpy() == 0, expected)

    qat.save(tmp_path / "pruned_qat.keras")
    loaded = keras.models.load_model(tmp_path / "pruned_qat.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
