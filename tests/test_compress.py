"""Tests of `keras_cost.compress`: input checks, width scaling, the ladder and a tiny run."""

import json
import os

import keras
import numpy as np
import pytest

from keras_cost import compress
from keras_cost.compress import CompressError
from keras_cost.compress import CompressSettings


def tiny_classifier(activation=None, classes=3):
    return keras.Sequential(
        [
            keras.Input((4,), name="features"),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(classes, activation=activation, name="classes"),
        ],
        name="tiny",
    )


def tiny_data(examples=96, source="memory"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, 4)).astype("float32")
    # The class is the largest of the first three features, a linear rule.
    y = np.argmax(x[:, :3], axis=1).astype("int64")
    half = examples // 2
    return compress.Dataset(x[:half], y[:half], x[half:], y[half:], source=source)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# Settings.


def test_settings_reject_sparsity_of_one():
    with pytest.raises(CompressError, match="sparsity=1.0"):
        CompressSettings(sparsity=1.0)


def test_settings_reject_negative_sparsity():
    with pytest.raises(CompressError, match="sparsity=-0.1"):
        CompressSettings(sparsity=-0.1)


def test_settings_reject_zero_width():
    with pytest.raises(CompressError, match="distill_width=0"):
        CompressSettings(distill_width=0.0)


def test_settings_reject_width_above_one():
    with pytest.raises(CompressError, match="distill_width=1.5"):
        CompressSettings(distill_width=1.5)


def test_settings_reject_unknown_quantize():
    with pytest.raises(CompressError, match="quantize='int4'"):
        CompressSettings(quantize="int4")


def test_settings_reject_zero_epochs():
    with pytest.raises(CompressError, match="epochs=0"):
        CompressSettings(epochs=0)


def test_settings_describe():
    settings = CompressSettings(sparsity=0.8, structured=True, quantize="int8", distill_width=0.5)
    assert settings.describe() == "distilled to width 0.5, 80% sparse (structured), int8"


# Search ladder.


def test_ladder_orders_by_estimated_bytes():
    ladder = compress.search_ladder()
    described = [(s.sparsity, s.quantize) for s in ladder]
    # (1 - sparsity) * bytes per weight: int8 0.9 -> 0.1, int8 0.8 -> 0.2,
    # int8 0.7 -> 0.3, float 0.9 -> 0.4, int8 0.5 -> 0.5, float 0.8 -> 0.8,
    # float 0.7 -> 1.2, float 0.5 -> 2.0.
    assert described == [
        (0.9, "int8"),
        (0.8, "int8"),
        (0.7, "int8"),
        (0.9, None),
        (0.5, "int8"),
        (0.8, None),
        (0.7, None),
        (0.5, None),
    ]


def test_ladder_keeps_given_quantize():
    ladder = compress.search_ladder(quantize="float16", epochs=2, seed=5)
    assert {s.quantize for s in ladder} == {"float16"}
    assert [s.sparsity for s in ladder] == [0.9, 0.8, 0.7, 0.5]
    assert {(s.epochs, s.seed) for s in ladder} == {(2, 5)}


# Output kind.


def test_logits_detected_without_activation():
    assert compress.output_is_logits(tiny_classifier())


def test_probabilities_detected_from_softmax():
    assert not compress.output_is_logits(tiny_classifier(activation="softmax"))


def test_probabilities_detected_from_softmax_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Softmax()])
    assert not compress.output_is_logits(model)


# Data loading.


def test_npz_loads_and_casts(tmp_path):
    path = save_npz(
        tmp_path / "d.npz",
        x_train=np.zeros((5, 4), "uint8"),
        y_train=np.arange(5).reshape(5, 1),
        x_test=np.ones((2, 4), "float64"),
        y_test=np.array([1.0, 2.0]),
    )
    data = compress.load_data(path)
    assert data.x_train.dtype == np.float32
    assert data.y_train.shape == (5,)
    assert data.y_test.dtype == np.int64
    assert data.y_test.tolist() == [1, 2]


def test_npz_missing_key_names_found_keys(tmp_path):
    path = save_npz(tmp_path / "d.npz", x_train=np.zeros((2, 4)), y_train=np.zeros(2), images=np.zeros(2))
    with pytest.raises(CompressError) as error:
        compress.load_data(path)
    message = str(error.value)
    assert "missing x_test, y_test" in message
    assert "contains x_train, y_train, images" in message


def test_npz_rejects_fractional_labels(tmp_path):
    path = save_npz(
        tmp_path / "d.npz",
        x_train=np.zeros((2, 4)),
        y_train=np.array([0.5, 1.0]),
        x_test=np.zeros((2, 4)),
        y_test=np.array([0, 1]),
    )
    with pytest.raises(CompressError, match="y_train .* integer class labels"):
        compress.load_data(path)


def test_npz_rejects_one_hot_labels(tmp_path):
    path = save_npz(
        tmp_path / "d.npz",
        x_train=np.zeros((2, 4)),
        y_train=np.eye(2),
        x_test=np.zeros((2, 4)),
        y_test=np.array([0, 1]),
    )
    with pytest.raises(CompressError, match="argmax"):
        compress.load_data(path)


def test_data_missing_path(tmp_path):
    with pytest.raises(CompressError, match="does not exist"):
        compress.load_data(str(tmp_path / "absent.npz"))


def test_data_wrong_suffix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2\n")
    with pytest.raises(CompressError, match="must be an .npz file"):
        compress.load_data(str(path))


def test_image_folder_splits_classes(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for index in range(10):
            image = rng.integers(0, 255, size=(6, 6, 1)).astype("uint8")
            keras.utils.save_img(tmp_path / name / f"{index}.png", image, scale=False)
    data = compress.load_data(str(tmp_path), input_shape=(6, 6, 1))
    assert data.x_train.shape == (16, 6, 6, 1)
    assert data.x_test.shape == (4, 6, 6, 1)
    assert sorted(set(data.y_train.tolist()) | set(data.y_test.tolist())) == [0, 1]
    assert float(data.x_train.max()) > 1.0


def test_image_folder_needs_image_model(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(CompressError, match="input shape \\(4,\\)"):
        compress.load_data(str(tmp_path), input_shape=(4,))


def test_shape_mismatch_names_both_shapes():
    data = tiny_data()
    data.x_test = np.zeros((3, 5), "float32")
    with pytest.raises(CompressError) as error:
        compress.check_data_fits(tiny_classifier(), data, "m.keras")
    assert "(5,)" in str(error.value)
    assert "expects (4,)" in str(error.value)


def test_label_out_of_range_rejected():
    data = tiny_data()
    data.y_train = data.y_train.copy()
    data.y_train[0] = 3
    with pytest.raises(CompressError, match="3 classes"):
        compress.check_data_fits(tiny_classifier(), data, "m.keras")


def test_matching_data_accepted():
    compress.check_data_fits(tiny_classifier(), tiny_data(), "m.keras")


# Model loading.


def test_model_not_a_zip_rejected(tmp_path):
    path = tmp_path / "m.keras"
    path.write_text("not a model")
    with pytest.raises(CompressError, match="does not load as a Keras model"):
        compress.load_model(str(path))


def test_model_wrong_suffix_rejected(tmp_path):
    path = tmp_path / "m.h5"
    path.write_bytes(b"")
    with pytest.raises(CompressError, match="must be a Keras 3 `.keras` file"):
        compress.load_model(str(path))


def test_model_regression_output_rejected(tmp_path):
    path = str(tmp_path / "m.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(path)
    with pytest.raises(CompressError, match="at least 2 classes"):
        compress.load_model(path)


# Width scaling.


def test_scale_width_sequential():
    student = compress.scale_width(tiny_classifier(), 0.5)
    assert student.get_layer("hidden").units == 4
    assert student.get_layer("classes").units == 3
    # 4 * 4 + 4 weights in the hidden layer, 4 * 3 + 3 in the output layer.
    assert student.count_params() == 35


def test_scale_width_functional_conv():
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(6, 3, name="conv")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(10, activation="softmax", name="classes")(hidden)
    student = compress.scale_width(keras.Model(inputs, outputs), 1 / 3)
    assert student.get_layer("conv").filters == 2
    assert student.get_layer("bn").gamma.shape == (2,)
    assert student.get_layer("classes").units == 10
    assert not compress.output_is_logits(student)


def test_scale_width_keeps_one_unit():
    student = compress.scale_width(tiny_classifier(), 0.01)
    assert student.get_layer("hidden").units == 1


def test_scale_width_rejects_nested_model():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)], name="inner")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(inner(inputs))
    with pytest.raises(CompressError, match="nests the models inner"):
        compress.scale_width(keras.Model(inputs, outputs), 0.5)


def test_scale_width_rejects_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Net()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(CompressError, match="is subclassed"):
        compress.scale_width(model, 0.5)


# Tiny end-to-end runs of the pipeline.


def trained_tiny_model(tmp_path, activation=None, epochs=5):
    model = tiny_classifier(activation=activation)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=activation is None))
    data = tiny_data()
    model.fit(data.x_train, data.y_train, epochs=epochs, verbose=0)
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    return path, data


def test_structured_distilled_dynamic_run(tmp_path):
    path, data = trained_tiny_model(tmp_path, activation="softmax")
    data_path = save_npz(
        tmp_path / "d.npz",
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
    )
    settings = CompressSettings(sparsity=0.5, structured=True, quantize="dynamic", distill_width=0.5, epochs=1)
    summary = compress.run_compress(path, data_path, str(tmp_path / "out"), settings=settings)

    out = tmp_path / "out"
    for name in ["compressed.keras", "compressed.tflite", "report.md", "report.json", "tradeoff.png"]:
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    student = keras.models.load_model(out / "compressed.keras")
    # The student has 4 hidden units. Neuron pruning at 50% zeroes 2 of them,
    # and shrink removes those, leaving 2 units and 3 classes.
    assert student.layers[0].kernel.shape == (4, 2)
    assert student.layers[-1].kernel.shape == (2, 3)
    assert summary["models"][1]["parameters"] == 4 * 2 + 2 + 2 * 3 + 3
    assert summary["chosen"] == "distilled to width 0.5, 50% sparse (structured), dynamic"
    assert json.loads((out / "report.json").read_text())["settings"]["quantize"] == "dynamic"


def test_search_stops_at_first_within_budget(tmp_path):
    path, data = trained_tiny_model(tmp_path)
    model = compress.load_model(path)
    ladder = [
        CompressSettings(sparsity=0.5, quantize="float16", epochs=1),
        CompressSettings(sparsity=0.0, epochs=1),
    ]
    chosen, tried = compress.search(model, data, 100.0, ladder)
    assert chosen.settings is ladder[0]
    assert len(tried) == 1


def test_search_without_fit_keeps_original(tmp_path, capsys):
    path, data = trained_tiny_model(tmp_path, epochs=60)
    data_path = save_npz(
        tmp_path / "d.npz",
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
    )
    # 99% sparsity leaves 1 of the 56 kernel weights, far too few for 3 classes.
    ladder = [CompressSettings(sparsity=0.99, epochs=1)]
    summary = compress.run_compress(
        path, data_path, str(tmp_path / "out"), max_drop_points=0.5, ladder=ladder
    )
    assert summary["chosen"] == "float32"
    assert summary["accuracy_drop_points"] == pytest.approx(0.0)
    assert len(summary["search"]) == 1
    assert "no candidate stayed within 0.5 points" in capsys.readouterr().out


def test_run_compress_rejects_prune_with_search(tmp_path):
    settings = CompressSettings(sparsity=0.5)
    with pytest.raises(CompressError, match="cannot be combined with --prune"):
        compress.run_compress("m.keras", "d.npz", str(tmp_path), settings=settings, max_drop_points=1.0)


def test_run_compress_rejects_structured_without_sparsity(tmp_path):
    settings = CompressSettings(structured=True)
    with pytest.raises(CompressError, match="--structured"):
        compress.run_compress("m.keras", "d.npz", str(tmp_path), settings=settings)


def test_report_prints_accuracy(tmp_path, capsys):
    path, data = trained_tiny_model(tmp_path)
    data_path = save_npz(
        tmp_path / "d.npz",
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
    )
    cost, accuracy = compress.run_report(path, data_path)
    model = keras.models.load_model(path)
    expected = np.mean(np.argmax(model.predict(data.x_test, verbose=0), axis=-1) == data.y_test)
    assert accuracy == pytest.approx(expected)
    assert cost.parameters == 4 * 8 + 8 + 8 * 3 + 3
    assert "| parameters | 67 |" in capsys.readouterr().out
    assert os.path.basename(path) in cost.name


def test_report_needs_only_test_arrays(tmp_path, capsys):
    path, data = trained_tiny_model(tmp_path)
    data_path = save_npz(tmp_path / "d.npz", x_test=data.x_test, y_test=data.y_test)
    _, accuracy = compress.run_report(path, data_path)
    assert 0.0 <= accuracy <= 1.0
    assert "test accuracy" in capsys.readouterr().out


def test_report_tflite_from_image_folder(tmp_path, capsys):
    from keras_cost.quantization import TFLiteModel
    from keras_cost.quantization import export_tflite

    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(5):
            image = np.full((4, 4, 3), 40 * index, "uint8")
            keras.utils.save_img(tmp_path / "images" / name / f"{index}.png", image, scale=False)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    tflite_path = str(tmp_path / "m.tflite")
    export_tflite(model, tflite_path)

    cost, accuracy = compress.run_report(tflite_path, str(tmp_path / "images"))
    data = compress.load_data(str(tmp_path / "images"), (4, 4, 3))
    expected = compress.accuracy(TFLiteModel(tflite_path).predict(data.x_test), data.y_test)
    assert accuracy == expected
    assert cost.file_bytes == os.path.getsize(tflite_path)
    assert "m.tflite" in capsys.readouterr().out
