"""Reported QAT and export failures, each with its right behaviour."""

import keras
import numpy as np
import pytest

from keras_cost.datasets import load_digits
from keras_cost.quantization import QuantizeWrapper, TFLiteModel, export_tflite, quantize_model


def float_kernel_ops(model):
    runner = model if isinstance(model, TFLiteModel) else TFLiteModel(model)
    return [
        op["name"]
        for op in runner.op_details
        if op["name"] in ("FULLY_CONNECTED", "CONV_2D") and "float32" in op["input_types"]
    ]


@pytest.fixture(scope="module")
def digits():
    (x_train, y_train), _ = load_digits()
    return x_train[:512], y_train[:512]


def fit_classifier(model, x, y, epochs):
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("conv_activation", ["relu", None])
def test_conv_relu_then_batchnorm(conv_activation, digits):
    # Conv2D(relu) -> BN, and the control Conv2D -> BN -> ReLU.
    x, y = digits
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation=conv_activation),
        keras.layers.BatchNormalization(),
    ]
    if conv_activation is None:
        layers.append(keras.layers.ReLU())
    layers += [keras.layers.Flatten(), keras.layers.Dense(10)]
    model = fit_classifier(keras.Sequential(layers), x, y, epochs=2)

    qat = fit_classifier(quantize_model(model), x, y, epochs=1)
    runner = TFLiteModel(export_tflite(qat, representative_data=x[:256], quantize="int8"))
    step = runner.output_details[0]["scale"]
    difference = np.abs(runner.predict(x[:256]) - qat.predict(x[:256], verbose=0))
    assert float_kernel_ops(runner) == []
    assert np.percentile(difference, 99) <= 4 * step


@pytest.mark.parametrize("source", ["float", "qat"])
def test_concatenate_different_ranges(source, rng):
    # One branch in [0, 1], the other in about [-6, 6].
    inputs = keras.Input((4,), name="x")
    unit = keras.layers.Dense(4, activation="sigmoid")(inputs)
    wide = keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(inputs)
    merged = keras.layers.Concatenate()([unit, wide])
    model = keras.Model(inputs, keras.layers.Dense(3)(merged))
    x = rng.uniform(-1, 1, (256, 4)).astype("float32")
    if source == "qat":
        model = quantize_model(model)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        model.fit(x, np.zeros((256, 3)), epochs=1, verbose=0)

    runner = TFLiteModel(export_tflite(model, representative_data=x, quantize="int8"))
    step = runner.output_details[0]["scale"]
    difference = np.abs(runner.predict(x) - model.predict(x, verbose=0))
    assert np.percentile(difference, 99) <= 2 * step + 1e-5


def test_nested_conv_bn_submodel(digits):
    # A Conv-BN-ReLU sub-model used as a layer, then pooling and Dense(5).
    x, y = digits
    block = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ],
        name="block",
    )
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.MaxPooling2D()(block(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(5)(hidden))
    five = y % 5
    model = fit_classifier(model, x, five, epochs=3)

    qat = fit_classifier(quantize_model(model), x, five, epochs=1)
    assert isinstance(qat.get_layer("block").layers[0], QuantizeWrapper)
    flatbuffer = export_tflite(qat, representative_data=x[:256], quantize="int8")
    logits = TFLiteModel(flatbuffer).predict(x[:256])
    agreement = np.mean(logits.argmax(1) == qat.predict(x[:256], verbose=0).argmax(1))
    assert agreement >= 0.99
    assert float_kernel_ops(flatbuffer) == []


@keras.saving.register_keras_serializable(package="keras_cost_tests")
class WrappedNet(keras.Model):
    """A subclassed model that applies QuantizeWrapper in its constructor."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = QuantizeWrapper(keras.layers.Dense(units, activation="relu"))
        self.head = QuantizeWrapper(keras.layers.Dense(2))

    def call(self, inputs):
        return self.head(self.hidden(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_trains_saves_exports(tmp_path, rng):
    x = rng.normal(size=(64, 3)).astype("float32")
    model = WrappedNet()
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, rng.normal(size=(64, 2)), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)

    model.save(tmp_path / "net.keras")
    loaded = keras.models.load_model(tmp_path / "net.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)

    runner = TFLiteModel(export_tflite(model, representative_data=x, quantize="int8"))
    step = runner.output_details[0]["scale"]
    assert np.percentile(np.abs(runner.predict(x) - expected), 99) <= 2 * step


def test_uncalled_subclassed_export_rejected():
    with pytest.raises(ValueError, match=r"keras.Model\(inputs, model\(inputs\)\)"):
        export_tflite(WrappedNet())


def test_add_branches_int8(rng):
    # A residual Add of two wrapped branches; TFLite's int8 ADD rescales
    # each input, so the branches keep their own ranges.
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(6, activation="relu")(inputs)
    shortcut = keras.layers.Dense(6)(inputs)
    merged = keras.layers.Add()([hidden, shortcut])
    model = keras.Model(inputs, keras.layers.Dense(3)(merged))
    x = rng.uniform(-1, 1, (256, 6)).astype("float32")
    qat = quantize_model(model)
    qat.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    qat.fit(x, np.zeros((256, 3)), epochs=1, verbose=0)

    runner = TFLiteModel(export_tflite(qat, representative_data=x, quantize="int8"))
    step = runner.output_details[0]["scale"]
    difference = np.abs(runner.predict(x) - qat.predict(x, verbose=0))
    assert "ADD" in runner.ops
    assert float_kernel_ops(runner) == []
    assert np.percentile(difference, 99) <= 3 * step + 1e-5
