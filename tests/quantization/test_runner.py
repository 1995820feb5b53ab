import keras
import numpy as np
import pytest

from keras_cost.quantization import TFLiteModel, export_tflite


def sum_model():
    # Output x1 + x2 + x2: binding x1 and x2 in the wrong order changes it.
    x1 = keras.Input((1,), name="x1")
    x2 = keras.Input((1,), name="x2")
    total = keras.layers.Add(name="total")([x1, x2, x2])
    return keras.Model([x1, x2], total)


def three_output_model():
    inputs = keras.Input((3,), name="features")
    first = keras.layers.Dense(1, name="first")(inputs)
    square = keras.layers.Reshape((2, 2), name="square")(keras.layers.Dense(4)(inputs))
    last = keras.layers.Dense(1, name="last")(inputs)
    return keras.Model(inputs, [first, square, last])


def test_inputs_bound_by_name_float():
    runner = TFLiteModel(export_tflite(sum_model()))
    output = runner.predict({"x2": np.array([[1.0]]), "x1": np.array([[7.0]])})
    assert output.item() == 9.0


def test_inputs_bound_by_name_int8(rng):
    data = {"x1": rng.uniform(0, 8, (64, 1)), "x2": rng.uniform(0, 2, (64, 1))}
    flatbuffer = export_tflite(sum_model(), representative_data=data, quantize="int8")
    runner = TFLiteModel(flatbuffer)
    output = runner.predict({"x2": np.array([[1.0]]), "x1": np.array([[7.0]])})
    step = runner.output_details[0]["scale"]
    assert abs(output.item() - 9.0) <= 2 * step


def test_outputs_bound_by_name(rng):
    model = three_output_model()
    x = rng.normal(size=(2, 3)).astype("float32")
    expected = dict(zip(["first", "square", "last"], model.predict(x, verbose=0)))
    outputs = TFLiteModel(export_tflite(model)).predict(x)
    assert sorted(outputs) == ["first", "last", "square"]
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, atol=1e-5)


def test_outputs_bound_by_name_int8(rng):
    model = three_output_model()
    x = rng.normal(size=(64, 3)).astype("float32")
    expected = dict(zip(["first", "square", "last"], model.predict(x, verbose=0)))
    runner = TFLiteModel(export_tflite(model, representative_data=x, quantize="int8"))
    outputs = runner.predict(x)
    for detail in runner.output_details:
        name = detail["name"]
        assert outputs[name].shape == expected[name].shape
        np.testing.assert_allclose(outputs[name], expected[name], atol=3 * detail["scale"])


def test_details_describe_int8(rng):
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, name="y")])
    flatbuffer = export_tflite(model, representative_data=rng.random((32, 4)), quantize="int8")
    runner = TFLiteModel(flatbuffer)
    (detail,) = runner.input_details
    assert detail["name"] == "x"
    assert detail["shape"] == (-1, 4)
    assert detail["dtype"] == "int8"
    assert detail["scale"] > 0
    assert -128 <= detail["zero_point"] <= 127
    assert runner.output_names == ["y"]
    assert "FULLY_CONNECTED" in runner.ops


def test_float_input_quantized(rng):
    # The runner must quantize floats with the input's scale and zero point;
    # the result equals feeding hand-quantized int8 values.
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    x = rng.random((16, 4)).astype("float32")
    runner = TFLiteModel(export_tflite(model, representative_data=x, quantize="int8"))
    detail = runner.input_details[0]
    by_hand = np.clip(np.round(x / detail["scale"]) + detail["zero_point"], -128, 127).astype("int8")
    np.testing.assert_array_equal(runner.predict(x), runner.predict(by_hand))
    np.testing.assert_allclose(runner.predict(x), model.predict(x, verbose=0), atol=0.05)


def test_raw_integers_rejected(rng):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    runner = TFLiteModel(export_tflite(model, representative_data=rng.random((8, 4)), quantize="int8"))
    with pytest.raises(ValueError, match="int32"):
        runner.predict(np.ones((2, 4), "int32"))


def test_batches_concatenated(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = rng.normal(size=(10, 3)).astype("float32")
    runner = TFLiteModel(export_tflite(model))
    np.testing.assert_allclose(runner.predict(x, batch_size=4), model.predict(x, verbose=0), atol=1e-5)


def test_path_input(tmp_path, rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "m.tflite"
    export_tflite(model, path=path)
    x = rng.normal(size=(2, 3)).astype("float32")
    np.testing.assert_allclose(TFLiteModel(str(path)).predict(x), model.predict(x, verbose=0), atol=1e-5)


def test_array_for_two_inputs_rejected():
    runner = TFLiteModel(export_tflite(sum_model()))
    with pytest.raises(ValueError, match="x1, x2"):
        runner.predict(np.ones((1, 1)))


def test_missing_batch_axis_rejected():
    runner = TFLiteModel(export_tflite(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])))
    with pytest.raises(ValueError, match="rank 2"):
        runner.predict(np.ones(3, "float32"))


def test_bad_batch_size():
    runner = TFLiteModel(export_tflite(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])))
    with pytest.raises(ValueError, match="batch_size=0"):
        runner.predict(np.ones((1, 3)), batch_size=0)


def test_bad_model_type():
    with pytest.raises(TypeError, match="list"):
        TFLiteModel([1, 2])


@pytest.mark.parametrize(
    "content, message",
    [(b"not a flatbuffer", "is not a valid TFLite model"), (b"", r"is empty \(0 bytes\)")],
)
def test_bad_file_named(tmp_path, content, message):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"bad.tflite' {message}"):
        TFLiteModel(path)
