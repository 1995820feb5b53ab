import json
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cost.cost import ModelCost
from keras_cost.cost import int8_weight_codes
from keras_cost.cost import measure_tflite_latency
from keras_cost.cost import model_cost
from keras_cost.quantization import QuantizeWrapper


def _cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


def _dense(units_in=64, units_out=64):
    return keras.Sequential(
        [keras.Input((units_in,)), keras.layers.Dense(units_out)], name="dense"
    )


def _tflite_bytes(model):
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def test_parameters_match_count_params():
    model = _cnn()
    report = model_cost(model)
    assert report.parameters == model.count_params()


def test_float32_bytes():
    model = _cnn()
    assert model_cost(model).float32_bytes == 4 * model.count_params()


def test_int8_bytes_hand_count():
    report = model_cost(_dense(4, 3))
    # Kernel: 12 bytes plus 3 float32 scales. Bias: 3 bytes plus 1 scale.
    assert report.int8_bytes == (12 + 12) + (3 + 4)


def test_zipped_bytes_is_zlib_of_weights():
    model = _dense(4, 3)
    blob = b"".join(np.asarray(w).astype("float32").tobytes() for w in model.get_weights())
    assert model_cost(model).zipped_bytes == len(zlib.compress(blob, 9))


def test_int8_codes_hand_values():
    weight = np.array([[0.0, 1.27], [-0.5, 0.64]], dtype="float32")
    codes, scales, values = int8_weight_codes(weight)
    # One scale per column: max |w| / 127. Zero is code 128.
    np.testing.assert_allclose(scales, [0.5 / 127, 0.01], rtol=1e-6)
    assert codes.tolist() == [[128, 255], [1, 192]]
    np.testing.assert_allclose(values, weight, atol=1e-6)


def test_int8_codes_of_zeros():
    codes, scales, values = int8_weight_codes(np.zeros((3, 2), dtype="float32"))
    assert codes.tolist() == [[128, 128]] * 3
    assert np.all(np.isfinite(scales))
    assert np.all(scales > 0)
    assert np.all(values == 0.0)


def test_zipped_int8_bytes_numpy_reference():
    model = _dense(4, 3)
    model.layers[0].bias.assign([0.5, -0.25, 0.1])
    blob = b""
    for weight in model.get_weights():
        axes = tuple(range(weight.ndim - 1)) if weight.ndim >= 2 else None
        scales = (np.max(np.abs(weight), axis=axes) / 127).astype("float32")
        codes = np.round(weight / scales) + 128
        blob += codes.astype(np.uint8).tobytes() + np.atleast_1d(scales).tobytes()
    assert model_cost(model).zipped_int8_bytes == len(zlib.compress(blob, 9))


def test_nonzero_counts_pruned_zeros():
    model = _dense()
    kernel, bias = model.layers[0].get_weights()
    kernel[:, :32] = 0.0
    bias[:] = 0.0
    model.layers[0].set_weights([kernel, bias])
    report = model_cost(model)
    assert report.nonzero_parameters == 64 * 32
    assert report.sparsity == pytest.approx(1 - 2048 / 4160)


def test_zipped_sparse_smaller_than_dense():
    dense = _dense()
    sparse = _dense()
    kernel, bias = sparse.layers[0].get_weights()
    mask = np.random.default_rng(0).random(kernel.shape) < 0.9
    kernel[mask] = 0.0
    sparse.layers[0].set_weights([kernel, bias])
    assert model_cost(sparse).zipped_bytes < 0.5 * model_cost(dense).zipped_bytes


def test_quantize_wrapper_costs_inner_layer():
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu")])
    wrapped = keras.Sequential(
        [keras.Input((6,)), QuantizeWrapper(keras.layers.Dense(4, activation="relu"))]
    )
    plain_report = model_cost(plain)
    wrapped_report = model_cost(wrapped)
    assert wrapped_report.flops == plain_report.flops
    assert wrapped_report.flops_by_layer_type == {"Dense": 2 * 6 * 4 + 4 + 4}
    assert wrapped_report.uncounted_layers == []
    assert wrapped_report.parameters == wrapped.count_params()


def test_to_dict_is_json():
    report = model_cost(_cnn())
    restored = json.loads(json.dumps(report.to_dict()))
    assert restored["flops"] == report.flops
    assert restored["flops_by_layer_type"] == report.flops_by_layer_type
    assert restored["sparsity"] == report.sparsity


def test_to_markdown_rows():
    text = model_cost(_cnn()).to_markdown()
    assert "| parameters | 1,506 |" in text
    assert "| FLOPs in Conv2D |" in text
    assert "file bytes" not in text


def test_tflite_path(tmp_path):
    model = _cnn()
    path = tmp_path / "cnn.tflite"
    path.write_bytes(_tflite_bytes(model))
    report = model_cost(path)
    assert report.source == "tflite"
    assert report.name == "cnn.tflite"
    assert report.file_bytes == path.stat().st_size
    assert report.zipped_bytes > 0
    assert report.latency_seconds > 0
    assert report.flops is None


def test_tflite_bytes():
    content = _tflite_bytes(_dense(4, 3))
    report = model_cost(content, name="tiny", latency_runs=3)
    assert report.file_bytes == len(content)
    assert report.zipped_bytes == len(zlib.compress(content, 9))
    assert report.latency_seconds > 0


def test_latency_rejects_zero_runs():
    content = _tflite_bytes(_dense(4, 3))
    with pytest.raises(ValueError, match="runs=0"):
        measure_tflite_latency(content, runs=0)


def test_rejects_keras_path(tmp_path):
    with pytest.raises(ValueError, match="load_model"):
        model_cost(tmp_path / "model.keras")


def test_rejects_other_types():
    with pytest.raises(TypeError, match="int"):
        model_cost(3)


def test_missing_tflite_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        model_cost(tmp_path / "missing.tflite")


def test_empty_report_fields():
    report = ModelCost("file", "tflite", file_bytes=10)
    assert report.sparsity is None
    assert report.to_dict()["parameters"] is None


def test_nonzero_after_real_pruning():
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import PolynomialDecay

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, use_bias=False)])
    model.compile("sgd", "mse")
    prune = PruneCallback(PolynomialDecay(0.0, 0.5, begin_step=0, end_step=3))
    model.fit(np.ones((16, 8)), np.ones((16, 4)), batch_size=4, epochs=1, callbacks=[prune], verbose=0)
    report = model_cost(model)
    assert report.parameters == 32
    assert report.nonzero_parameters == 16


def test_int8_tflite_smaller_than_float():
    model = _dense(64, 64)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = np.random.default_rng(0).random((16, 1, 64)).astype("float32")
    converter.representative_dataset = lambda: ([sample] for sample in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    int8_report = model_cost(converter.convert(), latency_runs=3)
    float_report = model_cost(_tflite_bytes(model), latency_runs=3)
    assert int8_report.file_bytes < 0.5 * float_report.file_bytes
    assert int8_report.latency_seconds > 0


def test_int8_codes_reject_nan():
    with pytest.raises(ValueError, match="contains NaN or inf"):
        int8_weight_codes(np.array([1.0, np.nan]))


def test_int8_codes_reject_none():
    with pytest.raises(TypeError, match="expects a numeric array"):
        int8_weight_codes(None)


def test_int8_codes_of_empty_weight():
    codes, scales, values = int8_weight_codes(np.zeros((0, 3), "float32"))
    assert codes.shape == (0, 3)
    assert scales.tolist() == [1.0, 1.0, 1.0]
    assert values.shape == (0, 3)


def test_zipped_int8_bytes_none_for_nan_weights():
    model = _dense(4, 3)
    model.layers[0].bias.assign([np.nan, 0.0, 0.0])
    report = model_cost(model)
    assert report.zipped_int8_bytes is None
    assert report.zipped_bytes > 0


@pytest.mark.parametrize(
    "content, message",
    [(b"not a model", "is not a valid TFLite model"), (b"", r"is empty \(0 bytes\)")],
)
def test_bad_tflite_file_named(tmp_path, content, message):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"bad.tflite' {message}"):
        model_cost(path)


def test_bad_tflite_bytes_named():
    with pytest.raises(ValueError, match="`model_or_tflite` is not a valid TFLite model"):
        model_cost(b"not a model")
