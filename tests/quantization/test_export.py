import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cost.datasets import load_digits
from keras_cost.quantization import TFLiteModel, export_tflite, quantize_model

KERNEL_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_1D")


def float_kernel_ops(model):
    runner = model if isinstance(model, TFLiteModel) else TFLiteModel(model)
    return [
        op["name"]
        for op in runner.op_details
        if op["name"] in KERNEL_OPS and "float32" in op["input_types"]
    ]


def dense_model():
    return keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])


def test_float_export_matches_keras(rng):
    model = dense_model()
    x = rng.normal(size=(5, 4)).astype("float32")
    runner = TFLiteModel(export_tflite(model))
    np.testing.assert_allclose(runner.predict(x), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("quantize", ["float16", "dynamic"])
def test_other_modes_run(quantize, rng):
    model = dense_model()
    x = rng.normal(size=(5, 4)).astype("float32")
    runner = TFLiteModel(export_tflite(model, quantize=quantize))
    np.testing.assert_allclose(runner.predict(x), model.predict(x, verbose=0), atol=0.05)


def test_unknown_mode():
    with pytest.raises(ValueError, match=r"'int8', 'float16', 'dynamic'.*quantize='int4'"):
        export_tflite(dense_model(), quantize="int4")


def test_int8_needs_data():
    with pytest.raises(ValueError, match="representative_data=None"):
        export_tflite(dense_model(), quantize="int8")


def test_data_without_int8_rejected(rng):
    with pytest.raises(ValueError, match="quantize='int8'"):
        export_tflite(dense_model(), representative_data=rng.random((4, 4)))


def test_int16_data_rejected():
    # int16 audio samples for a float model must be scaled, not cast.
    audio = np.arange(-40, 40, dtype="int16").reshape(20, 4)
    with pytest.raises(ValueError, match=r"int16.*32768"):
        export_tflite(dense_model(), representative_data=audio, quantize="int8")


def test_missing_batch_axis():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"batch axis is missing.*reshape\(-1, 1\)"):
        export_tflite(model, representative_data=np.ones((1,), "float32"), quantize="int8")


def test_wrong_shape(rng):
    with pytest.raises(ValueError, match=r"\(8, 5\).*\(None, 4\)"):
        export_tflite(dense_model(), representative_data=rng.random((8, 5)), quantize="int8")


def test_wrong_dict_keys(rng):
    with pytest.raises(ValueError, match=r"Missing: \['x'\]. Unknown: \['y'\]"):
        export_tflite(dense_model(), representative_data={"y": rng.random((8, 4))}, quantize="int8")


def test_list_rejected(rng):
    with pytest.raises(ValueError, match="dict keyed by input name"):
        export_tflite(dense_model(), representative_data=[rng.random((8, 4))], quantize="int8")


def test_nan_data_rejected():
    data = np.full((4, 4), np.nan, "float32")
    with pytest.raises(ValueError, match="NaN"):
        export_tflite(dense_model(), representative_data=data, quantize="int8")


def test_dataset_of_pairs(rng):
    x = rng.random((16, 4)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(16))).batch(4)
    runner = TFLiteModel(export_tflite(dense_model(), representative_data=dataset, quantize="int8"))
    assert runner.input_details[0]["dtype"] == "int8"


def test_unbatched_dataset_rejected(rng):
    dataset = tf.data.Dataset.from_tensor_slices(rng.random((16, 4)).astype("float32"))
    with pytest.raises(ValueError, match="batch axis is missing"):
        export_tflite(dense_model(), representative_data=dataset, quantize="int8")


def test_path_written(tmp_path):
    path = tmp_path / "model.tflite"
    flatbuffer = export_tflite(dense_model(), path=path)
    assert path.read_bytes() == flatbuffer
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_failed_export_keeps_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"good")
    with pytest.raises(ValueError):
        export_tflite(dense_model(), path=path, quantize="int8", representative_data=np.ones((2, 9)))
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.tflite"]


@pytest.mark.parametrize("pooling", [keras.layers.AveragePooling2D, keras.layers.MaxPooling2D])
def test_pooling_int8_runs(pooling, classifier, rng):
    # Conv2D(8, 3, relu), pooling(2), Flatten, Dense(10).
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            pooling(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    x = rng.random((64, 8, 8, 1)).astype("float32")
    qat = classifier(quantize_model(model))
    qat.fit(x, rng.integers(0, 10, 64), epochs=1, verbose=0)
    for source in (model, qat):
        flatbuffer = export_tflite(source, representative_data=x, quantize="int8")
        outputs = TFLiteModel(flatbuffer).predict(x)
        assert outputs.shape == (64, 10)
        assert float_kernel_ops(flatbuffer) == []


def test_per_channel_conv_int8(classifier, rng):
    model = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    x = rng.random((64, 6, 6, 1)).astype("float32")
    qat = classifier(quantize_model(model, per_channel=True))
    qat.fit(x, rng.integers(0, 3, 64), epochs=1, verbose=0)
    runner = TFLiteModel(export_tflite(qat, representative_data=x, quantize="int8"))
    step = runner.output_details[0]["scale"]
    difference = np.abs(runner.predict(x) - qat.predict(x, verbose=0))
    assert float_kernel_ops(runner) == []
    assert np.percentile(difference, 99) <= 2 * step + 1e-5


def test_zero_and_dead_layers_export(classifier):
    # A 100% pruned (all-zero) kernel, then a ReLU that never fires.
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, kernel_initializer="zeros", bias_initializer="zeros"),
            keras.layers.Dense(
                3, activation="relu", bias_initializer=keras.initializers.Constant(-10.0)
            ),
            keras.layers.Dense(
                2,
                kernel_initializer=keras.initializers.Constant(0.5),
                bias_initializer=keras.initializers.Constant(5.0),
            ),
        ]
    )
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    qat = quantize_model(model)
    qat.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    qat.fit(x, np.zeros((32, 2)), epochs=1, verbose=0)
    for source in (model, qat):
        runner = TFLiteModel(export_tflite(source, representative_data=x, quantize="int8"))
        outputs = runner.predict(x)
        step = runner.output_details[0]["scale"]
        assert np.all(np.isfinite(outputs))
        np.testing.assert_allclose(outputs, 5.0, atol=step / 2 + 1e-6)


@pytest.fixture(scope="module")
def digits_qat():
    """A trained small CNN with a pruned Dense kernel, its QAT copy and exports."""
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0)

    qat = quantize_model(model)
    qat.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    qat.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    int8 = export_tflite(qat, representative_data=x_train[:256], quantize="int8")
    return {
        "float_accuracy": model.evaluate(x_test, y_test, verbose=0)[1],
        "qat_logits": qat.predict(x_test, verbose=0),
        "int8": int8,
        "float_size": len(export_tflite(model)),
        "x_test": x_test,
        "y_test": y_test,
    }


@pytest.mark.slow
def test_digits_int8_agrees(digits_qat):
    logits = TFLiteModel(digits_qat["int8"]).predict(digits_qat["x_test"])
    agreement = np.mean(logits.argmax(1) == digits_qat["qat_logits"].argmax(1))
    assert agreement >= 0.99


@pytest.mark.slow
def test_digits_int8_accuracy(digits_qat):
    logits = TFLiteModel(digits_qat["int8"]).predict(digits_qat["x_test"])
    accuracy = np.mean(logits.argmax(1) == digits_qat["y_test"])
    assert accuracy >= digits_qat["float_accuracy"] - 0.015


@pytest.mark.slow
def test_digits_no_float_kernels(digits_qat):
    assert float_kernel_ops(digits_qat["int8"]) == []


@pytest.mark.slow
def test_digits_all_int8(digits_qat):
    op_types = {
        dtype
        for op in TFLiteModel(digits_qat["int8"]).op_details
        for dtype in op["input_types"] + op["output_types"]
    }
    assert "float32" not in op_types


@pytest.mark.slow
def test_digits_int8_smaller(digits_qat):
    assert len(digits_qat["int8"]) < 0.7 * digits_qat["float_size"]


def test_interrupted_write_keeps_file(tmp_path):
    from keras_cost.quantization.export import write_atomically

    path = tmp_path / "model.tflite"
    path.write_bytes(b"good")
    # A str cannot be written to a binary file, so the write fails midway.
    with pytest.raises(TypeError):
        write_atomically(path, "not bytes")
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.tflite"]


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv1d_depthwise_int8(per_channel, classifier, rng):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"),
            keras.layers.Reshape((36, 4)),
            keras.layers.Conv1D(4, 3, padding="causal", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    x = rng.random((64, 8, 8, 2)).astype("float32")
    qat = classifier(quantize_model(model, per_channel=per_channel))
    assert [type(layer).__name__ for layer in qat.layers].count("QuantizeWrapper") == 3
    qat.fit(x, rng.integers(0, 3, 64), epochs=1, verbose=0)
    runner = TFLiteModel(export_tflite(qat, representative_data=x, quantize="int8"))
    step = runner.output_details[0]["scale"]
    difference = np.abs(runner.predict(x) - qat.predict(x, verbose=0))
    assert float_kernel_ops(runner) == []
    # Three quantized layers in a row: rounding can add up to three steps.
    assert np.percentile(difference, 99) <= 3 * step + 1e-5


@pytest.mark.parametrize("io_dtype", ["uint8", "float32"])
def test_io_dtype(io_dtype, rng):
    model = dense_model()
    x = rng.random((32, 4)).astype("float32")
    runner = TFLiteModel(export_tflite(model, representative_data=x, quantize="int8", io_dtype=io_dtype))
    assert runner.input_details[0]["dtype"] == io_dtype
    assert runner.output_details[0]["dtype"] == io_dtype
    assert "FULLY_CONNECTED" in runner.ops
    np.testing.assert_allclose(runner.predict(x), model.predict(x, verbose=0), atol=0.05)


def test_io_dtype_invalid():
    with pytest.raises(ValueError, match="io_dtype='int16'"):
        export_tflite(dense_model(), quantize="int8", io_dtype="int16", representative_data=np.ones((2, 4)))


def test_io_dtype_needs_int8():
    with pytest.raises(ValueError, match="only None"):
        export_tflite(dense_model(), io_dtype="uint8")


def test_untrained_ranges_warn(rng):
    qat = quantize_model(dense_model())
    with pytest.warns(UserWarning, match=r"\[-6, 6\]: quant_dense"):
        export_tflite(qat, representative_data=rng.random((8, 4)), quantize="int8")


def nested_into_concatenate():
    # The last wrapped layer of the nested model, and a Dense reached through
    # a Reshape, both feed the outer Concatenate.
    inner_inputs = keras.Input((6,))
    inner_outputs = keras.layers.Dense(5, activation="relu", name="inner_dense")(inner_inputs)
    inner = keras.Model(inner_inputs, inner_outputs, name="inner")
    inputs = keras.Input((6,))
    side = keras.layers.Dense(4, activation="relu", name="side")(inputs)
    side = keras.layers.Reshape((4,), name="side_reshape")(side)
    merged = keras.layers.Concatenate(name="merge")([inner(inputs), side])
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(merged))


def test_concatenate_inputs_through_nesting_and_reshape(classifier, rng):
    x = rng.normal(size=(128, 6)).astype("float32")
    qat = classifier(quantize_model(nested_into_concatenate()))
    qat.fit(x, rng.integers(0, 3, 128), epochs=2, verbose=0)

    # Before, the converter refused: "'tfl.concatenation' op quantization
    # parameters violate the same scale constraint".
    flatbuffer = export_tflite(qat, representative_data=x, quantize="int8")

    assert qat.get_layer("inner").get_layer("quant_inner_dense").quantize_output is False
    assert qat.get_layer("quant_side").quantize_output is False
    assert qat.get_layer("quant_head").quantize_output is True
    agreement = np.mean(
        TFLiteModel(flatbuffer).predict(x).argmax(1) == qat.predict(x, verbose=0).argmax(1)
    )
    assert agreement >= 0.98


def test_missing_channel_axis_named():
    # (200, 8, 8) images for an (8, 8, 1) input: 200 is the batch, the
    # channel axis is what is missing.
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"channel axis is missing.*x\[\.\.\., np\.newaxis\]"):
        export_tflite(model, quantize="int8", representative_data=np.zeros((200, 8, 8), "float32"))


def test_dead_relu_keeps_old_file(tmp_path):
    # The ReLU never fires on the calibration data, so the converter gives it
    # an empty range that LiteRT's XNNPACK delegate cannot prepare.
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                3, activation="relu", bias_initializer=keras.initializers.Constant(-100.0)
            ),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    path = tmp_path / "model.tflite"
    path.write_bytes(b"good")
    with pytest.raises(ValueError, match=r"were 0 on all of `representative_data`.*Relu"):
        export_tflite(model, path=path, representative_data=x, quantize="int8")
    assert path.read_bytes() == b"good"


def test_dead_relu_after_flatten_named():
    # This graph prepares in LiteRT and fails only on its first run.
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(
                32, activation="relu", bias_initializer=keras.initializers.Constant(-100.0)
            ),
            keras.layers.Dense(10),
        ]
    )
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    with pytest.raises(ValueError, match=r"were 0 on all of `representative_data`.*Relu"):
        export_tflite(model, representative_data=x, quantize="int8")


def test_path_folder_rejected(tmp_path):
    with pytest.raises(ValueError, match="but it is a folder"):
        export_tflite(dense_model(), path=tmp_path)


def test_path_missing_folder_rejected(tmp_path):
    path = tmp_path / "missing" / "model.tflite"
    with pytest.raises(ValueError, match="folder of `path` does not exist"):
        export_tflite(dense_model(), path=path)
    assert not (tmp_path / "missing").exists()
