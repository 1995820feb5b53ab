import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_cost.distillation import DistillerModel

FRESH_PROCESS_EVALUATE = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import keras
import keras_cost

data = np.load(sys.argv[1])
results = []
for path in sys.argv[2:]:
    model = keras.models.load_model(path)
    logs = model.evaluate(data["x"], data["y"], batch_size=16, verbose=0, return_dict=True)
    results.append({
        "logs": logs,
        "class": type(model).__name__,
        "alpha": model.alpha,
        "temperature": model.temperature,
        "features": model.features,
        "optimizer": type(model.optimizer).__name__,
        "learning_rate": float(model.optimizer.learning_rate),
        "iterations": int(model.optimizer.iterations),
    })
print(json.dumps(results))
"""


def conv_teacher():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="teacher_conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", name="teacher_dense"),
            keras.layers.Dense(10, name="teacher_logits"),
        ],
        name="teacher",
    )


def mlp_student():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="student_dense"),
            keras.layers.Dense(10, name="student_logits"),
        ],
        name="student",
    )


def trained_distiller(features=None):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(48, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=48)
    distiller = DistillerModel(
        mlp_student(), conv_teacher(), alpha=0.3, temperature=5.0, features=features
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.003),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return distiller, x, y


def evaluate_in_fresh_process(model_paths, x, y, tmp_path):
    data_path = tmp_path / "data.npz"
    np.savez(data_path, x=x, y=y)
    command = [sys.executable, "-c", FRESH_PROCESS_EVALUATE, str(data_path)]
    completed = subprocess.run(
        command + [str(path) for path in model_paths],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_save_load_same_process(tmp_path):
    distiller, x, y = trained_distiller()
    expected = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    logs = loaded.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs == pytest.approx(expected, rel=1e-6)


def test_load_restores_compile_settings(tmp_path):
    distiller, _, _ = trained_distiller()
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.003)
    assert int(loaded.optimizer.iterations) == 6
    assert isinstance(loaded.loss, keras.losses.SparseCategoricalCrossentropy)
    assert loaded.loss.get_config()["from_logits"] is True


def test_load_restores_frozen_teacher(tmp_path):
    distiller, x, _ = trained_distiller()
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert loaded.teacher.trainable is False
    np.testing.assert_array_equal(
        loaded.teacher.predict(x, verbose=0), distiller.teacher.predict(x, verbose=0)
    )


def test_fresh_process_evaluate(tmp_path):
    # One child process loads both files, a plain and a feature distiller,
    # to pay the TensorFlow start-up once.
    plain, x, y = trained_distiller()
    with_features, _, _ = trained_distiller(features=[("teacher_dense", "student_dense")])
    expected = [
        model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        for model in (plain, with_features)
    ]
    plain.save(tmp_path / "plain.keras")
    with_features.save(tmp_path / "features.keras")
    results = evaluate_in_fresh_process(
        [tmp_path / "plain.keras", tmp_path / "features.keras"], x, y, tmp_path
    )
    plain_result, features_result = results
    assert plain_result["class"] == "DistillerModel"
    assert plain_result["alpha"] == 0.3
    assert plain_result["temperature"] == 5.0
    assert plain_result["features"] == []
    assert plain_result["optimizer"] == "Adam"
    assert plain_result["learning_rate"] == pytest.approx(0.003)
    assert plain_result["iterations"] == 6
    assert plain_result["logs"] == pytest.approx(expected[0], rel=1e-6)
    assert features_result["features"] == [["teacher_dense", "student_dense"]]
    assert features_result["logs"] == pytest.approx(expected[1], rel=1e-6)


def test_student_saved_alone(tmp_path):
    distiller, x, _ = trained_distiller(features=[("teacher_dense", "student_dense")])
    distiller.student.save(tmp_path / "student.keras")
    distiller.save(tmp_path / "distiller.keras")
    student = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(
        student.predict(x, verbose=0), distiller.predict(x, verbose=0), rtol=1e-6
    )
    # The adapter and the teacher stay out of the student's file.
    assert student.count_params() == 16 * 64 + 16 + 10 * 16 + 10
    student_size = (tmp_path / "student.keras").stat().st_size
    assert student_size < (tmp_path / "distiller.keras").stat().st_size


def test_student_exports_saved_model(tmp_path):
    distiller, x, _ = trained_distiller()
    distiller.student.export(tmp_path / "student_export", format="tf_saved_model")
    reloaded = keras.layers.TFSMLayer(tmp_path / "student_export", call_endpoint="serve")
    np.testing.assert_allclose(
        np.asarray(reloaded(x)), distiller.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_student_converts_to_tflite():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    distiller, x, _ = trained_distiller(features=[("teacher_dense", "student_dense")])
    converter = tf.lite.TFLiteConverter.from_keras_model(distiller.student)
    interpreter = Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner()
    input_name = next(iter(runner.get_input_details()))
    outputs = runner(**{input_name: x[:1]})
    np.testing.assert_allclose(
        next(iter(outputs.values())), distiller.predict(x[:1], verbose=0), rtol=1e-4, atol=1e-5
    )


def test_student_file_smaller_than_teacher(tmp_path):
    distiller, _, _ = trained_distiller()
    distiller.student.save(tmp_path / "student.keras")
    distiller.teacher.save(tmp_path / "teacher.keras")
    student_size = (tmp_path / "student.keras").stat().st_size
    teacher_size = (tmp_path / "teacher.keras").stat().st_size
    assert student_size < teacher_size
