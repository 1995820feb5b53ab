import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cost.datasets import load_digits
from keras_cost.distillation import DistillerModel

CROSSENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

MIRRORED_STEP = """
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
import keras
from keras_cost.distillation import DistillerModel

rng = np.random.default_rng(0)
x = rng.normal(size=(16, 6)).astype("float32")
y = rng.integers(0, 4, size=16)


def one_step(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(1)
        teacher = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(4)]
        )
        student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        distiller = DistillerModel(student, teacher, alpha=0.5, temperature=2.0)
        distiller.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    initial = [np.asarray(w).tolist() for w in student.get_weights()]
    distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return initial, [np.asarray(w).tolist() for w in student.get_weights()]


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored_initial, mirrored_final = one_step(mirrored)
single_initial, single_final = one_step(tf.distribute.get_strategy())
print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "mirrored_initial": mirrored_initial,
    "single_initial": single_initial,
    "mirrored": mirrored_final,
    "single": single_final,
}))
"""


def digits_teacher():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", name="teacher_conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="teacher_dense"),
            keras.layers.Dense(10, name="teacher_logits"),
        ],
        name="teacher",
    )


def digits_student(hidden=16):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden, activation="relu", name="student_dense"),
            keras.layers.Dense(10, name="student_logits"),
        ],
        name="student",
    )


def small_pair():
    teacher = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu", name="teacher_hidden"),
            keras.layers.Dense(4, name="teacher_out"),
        ],
        name="teacher",
    )
    student = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="student_hidden"),
            keras.layers.Dense(4, name="student_out"),
        ],
        name="student",
    )
    return student, teacher


def data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 6)).astype("float32")
    y = rng.integers(0, 4, size=count)
    return x, y


def test_student_learns_digits():
    (x_train, y_train), (x_test, y_test) = load_digits()
    teacher = digits_teacher()
    teacher.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)

    student = digits_student()
    distiller = DistillerModel(student, teacher, alpha=0.1, temperature=4.0)
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss=CROSSENTROPY,
        metrics=["accuracy"],
    )
    history = distiller.fit(x_train, y_train, epochs=6, batch_size=32, verbose=0).history

    assert history["distillation_loss"][-1] < 0.5 * history["distillation_loss"][0]
    student.compile(metrics=["accuracy"], loss=CROSSENTROPY)
    _, accuracy = student.evaluate(x_test, y_test, verbose=0)
    assert accuracy > 0.85


def test_cache_matches_uncached():
    x, y = data(count=48)
    results = []
    for cache in (False, True):
        keras.utils.set_random_seed(3)
        student, teacher = small_pair()
        distiller = DistillerModel(student, teacher, alpha=0.4, cache_teacher_outputs=cache)
        distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=CROSSENTROPY)
        history = distiller.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        results.append((student.get_weights(), history.history))
    (uncached_weights, uncached_logs), (cached_weights, cached_logs) = results
    for uncached, cached in zip(uncached_weights, cached_weights):
        np.testing.assert_allclose(cached, uncached, rtol=1e-5, atol=1e-6)
    assert cached_logs["loss"] == pytest.approx(uncached_logs["loss"], rel=1e-5)


def test_cache_keeps_samples_aligned_when_shuffled():
    # With the teacher equal to the student, the soft loss is 0 only if
    # every sample meets its own cached teacher output after shuffling.
    x, y = data(count=40)
    student, _ = small_pair()
    teacher = keras.models.clone_model(student)
    teacher.set_weights(student.get_weights())
    distiller = DistillerModel(student, teacher, alpha=0.0, cache_teacher_outputs=True)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    history = distiller.fit(x, y, epochs=2, batch_size=8, shuffle=True, verbose=0).history
    assert max(history["distillation_loss"]) == pytest.approx(0.0, abs=1e-6)


def test_cache_with_validation_split():
    x, y = data(count=40)
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, cache_teacher_outputs=True)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=1, validation_split=0.25, verbose=0).history
    assert "val_distillation_loss" in history
    assert "val_accuracy" in history


def test_cache_rejects_dataset():
    x, y = data()
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, cache_teacher_outputs=True)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match="cache_teacher_outputs=False"):
        distiller.fit(dataset, epochs=1, verbose=0)


def test_cache_rejects_class_weight():
    x, y = data()
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, cache_teacher_outputs=True)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    with pytest.raises(ValueError, match="sample_weight"):
        distiller.fit(x, y, class_weight={0: 2.0, 1: 1.0, 2: 1.0, 3: 1.0}, verbose=0)


@pytest.mark.parametrize("cache", [False, True])
def test_unlabeled_fit(cache):
    x, _ = data()
    student, teacher = small_pair()
    before = [weight.copy() for weight in student.get_weights()]
    distiller = DistillerModel(student, teacher, alpha=0.5, cache_teacher_outputs=cache)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"])
    history = distiller.fit(x, epochs=1, batch_size=8, verbose=0).history
    assert set(history) == {"loss", "distillation_loss"}
    assert history["loss"] == pytest.approx(history["distillation_loss"], rel=1e-6)
    assert not np.allclose(before[0], student.get_weights()[0])


def test_unlabeled_then_labeled_fit():
    x, y = data()
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"])
    distiller.fit(x, epochs=1, verbose=0)
    history = distiller.fit(x, y, epochs=1, verbose=0).history
    assert "accuracy" in history
    assert "student_loss" in history


def test_sample_weight_zero_half():
    x, y = data(count=16)
    weights = np.array([1.0] * 8 + [0.0] * 8, dtype="float32")
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, alpha=0.5)
    distiller.compile(optimizer="sgd", loss=CROSSENTROPY)
    weighted = distiller.compute_loss(x, y, distiller(x), sample_weight=weights, training=False)
    first_half = distiller.compute_loss(x[:8], y[:8], distiller(x[:8]), training=False)
    # "sum_over_batch_size" divides by all 16 samples, zero-weighted ones included.
    assert float(weighted) == pytest.approx(0.5 * float(first_half), rel=1e-5)


def test_sample_weight_in_fit():
    x, y = data(count=16)
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, alpha=0.5)
    distiller.compile(optimizer="sgd", loss=CROSSENTROPY)
    weights = np.zeros(16, dtype="float32")
    before = [weight.copy() for weight in student.get_weights()]
    distiller.fit(x, y, sample_weight=weights, epochs=1, verbose=0)
    for old, new in zip(before, student.get_weights()):
        np.testing.assert_array_equal(old, new)


def two_head_model(prefix, hidden):
    inputs = keras.Input((6,))
    features = keras.layers.Dense(hidden, activation="relu", name=f"{prefix}_hidden")(inputs)
    digits = keras.layers.Dense(4, name=f"{prefix}_digits")(features)
    parity = keras.layers.Dense(2, name=f"{prefix}_parity")(features)
    return keras.Model(inputs, [digits, parity], name=prefix)


def test_multi_output_soft_loss_sums_heads():
    x, y = data()
    student = two_head_model("student", 8)
    teacher = two_head_model("teacher", 16)
    distiller = DistillerModel(student, teacher, alpha=0.0, temperature=2.0)
    distiller.compile(optimizer="sgd")
    loss = float(distiller.compute_loss(x, [y, y % 2], distiller(x), training=False))

    separate = []
    for head in range(2):
        head_student = keras.Model(student.inputs, student.outputs[head])
        head_teacher = keras.Model(teacher.inputs, teacher.outputs[head])
        head_distiller = DistillerModel(head_student, head_teacher, alpha=0.0, temperature=2.0)
        separate.append(
            float(head_distiller.compute_loss(x, y, head_distiller(x), training=False))
        )
    assert loss == pytest.approx(sum(separate), rel=1e-5)


@pytest.mark.parametrize("cache", [False, True])
def test_multi_output_fit(cache):
    x, y = data()
    student = two_head_model("student", 8)
    teacher = two_head_model("teacher", 16)
    distiller = DistillerModel(student, teacher, alpha=0.5, cache_teacher_outputs=cache)
    distiller.compile(
        optimizer="adam", loss=[CROSSENTROPY, CROSSENTROPY], metrics=[["accuracy"], ["accuracy"]]
    )
    history = distiller.fit(x, [y, y % 2], epochs=2, batch_size=8, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert "student_digits_accuracy" in history


def test_features_unknown_layer_lists_names():
    student, teacher = small_pair()
    with pytest.raises(ValueError) as error:
        DistillerModel(student, teacher, features=[("teacher_hidden", "missing")])
    assert "'missing'" in str(error.value)
    assert "student_hidden" in str(error.value)


def test_features_unknown_teacher_layer():
    student, teacher = small_pair()
    with pytest.raises(ValueError, match="teacher_out"):
        DistillerModel(student, teacher, features=[("missing", "student_hidden")])


@pytest.mark.parametrize("features", ["teacher_hidden", [("a", "b", "c")], [("a", 1)]])
def test_features_rejects_malformed(features):
    student, teacher = small_pair()
    with pytest.raises(ValueError, match="features"):
        DistillerModel(student, teacher, features=features)


def test_features_adapter_for_different_widths():
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, features=[("teacher_hidden", "student_hidden")])
    adapter = distiller.adapters[0]
    assert isinstance(adapter, keras.layers.Dense)
    assert adapter.kernel.shape == (8, 16)


def test_features_identity_for_same_shape():
    student, teacher = small_pair()
    distiller = DistillerModel(student, teacher, features=[("teacher_out", "student_out")])
    assert isinstance(distiller.adapters[0], keras.layers.Identity)


def test_features_conv_adapter_is_one_by_one():
    teacher = digits_teacher()
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu", name="student_conv")(inputs)
    logits = keras.layers.Dense(10, name="student_logits")(keras.layers.Flatten()(hidden))
    student = keras.Model(inputs, logits)
    distiller = DistillerModel(student, teacher, features=[("teacher_conv", "student_conv")])
    # A Dense layer on the channel axis of a (6, 6, 4) map is a 1×1 convolution to 16 channels.
    assert distiller.adapters[0].kernel.shape == (4, 16)


def test_features_reject_spatial_mismatch():
    teacher = digits_teacher()
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 5, activation="relu", name="student_conv")(inputs)
    logits = keras.layers.Dense(10, name="student_logits")(keras.layers.Flatten()(hidden))
    student = keras.Model(inputs, logits)
    with pytest.raises(ValueError, match=r"\(None, 4, 4, 4\)"):
        DistillerModel(student, teacher, features=[("teacher_conv", "student_conv")])


def test_features_reject_subclassed_student():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, inputs):
            return self.dense(inputs)

    _, teacher = small_pair()
    with pytest.raises(ValueError, match="functional or Sequential"):
        DistillerModel(Subclassed(), teacher, features=[("teacher_hidden", "dense")])


def test_features_train_student_and_adapter():
    x, y = data()
    student, teacher = small_pair()
    teacher_before = [weight.copy() for weight in teacher.get_weights()]
    distiller = DistillerModel(
        student, teacher, features=[("teacher_hidden", "student_hidden")], feature_weight=2.0
    )
    adapter_before = distiller.adapters[0].kernel.numpy().copy()
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    history = distiller.fit(x, y, epochs=3, batch_size=8, verbose=0).history

    assert history["distillation_loss"][-1] < history["distillation_loss"][0]
    assert not np.allclose(adapter_before, distiller.adapters[0].kernel.numpy())
    for old, new in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    trained = student.trainable_variables + distiller.adapters[0].trainable_variables
    assert {id(v) for v in distiller.trainable_variables} == {id(v) for v in trained}


def test_features_loss_matches_numpy():
    x, y = data()
    student, teacher = small_pair()
    distiller = DistillerModel(
        student,
        teacher,
        alpha=0.0,
        features=[("teacher_hidden", "student_hidden")],
        feature_weight=0.5,
    )
    distiller.compile(optimizer="sgd")
    with_features = float(distiller.compute_loss(x, y, distiller(x), training=False))
    plain = DistillerModel(student, teacher, alpha=0.0)
    plain.compile(optimizer="sgd")
    soft = float(plain.compute_loss(x, y, plain(x), training=False))

    teacher_hidden = keras.Model(teacher.inputs, teacher.get_layer("teacher_hidden").output)
    student_hidden = keras.Model(student.inputs, student.get_layer("student_hidden").output)
    kernel, bias = distiller.adapters[0].get_weights()
    adapted = student_hidden.predict(x, verbose=0) @ kernel + bias
    hint = np.mean((teacher_hidden.predict(x, verbose=0) - adapted) ** 2)
    assert with_features == pytest.approx(soft + 0.5 * hint, rel=1e-5)


def test_features_cached_match_uncached():
    x, y = data(count=48)
    results = []
    for cache in (False, True):
        keras.utils.set_random_seed(5)
        student, teacher = small_pair()
        distiller = DistillerModel(
            student,
            teacher,
            features=[("teacher_hidden", "student_hidden")],
            cache_teacher_outputs=cache,
        )
        distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss=CROSSENTROPY)
        distiller.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
        results.append(student.get_weights())
    for uncached, cached in zip(*results):
        np.testing.assert_allclose(cached, uncached, rtol=1e-5, atol=1e-6)


def test_mirrored_step_matches_single_device():
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_STEP], capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    for mirrored, single in zip(result["mirrored_initial"], result["single_initial"]):
        np.testing.assert_array_equal(np.array(mirrored), np.array(single))
    for mirrored, single in zip(result["mirrored"], result["single"]):
        np.testing.assert_allclose(np.array(mirrored), np.array(single), atol=1e-6)
    moved = np.abs(np.array(result["single"][0]) - np.array(result["single_initial"][0])).max()
    assert moved > 1e-2
