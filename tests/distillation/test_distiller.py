import keras
import numpy as np
import pytest

from keras_cost.distillation import DistillerModel

CROSSENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def dense_model(units, hidden=None, inputs=6, name=None, activation=None):
    layers = [keras.Input((inputs,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden"))
    layers.append(keras.layers.Dense(units, activation=activation, name=f"{name}_out"))
    return keras.Sequential(layers, name=name)


def numpy_softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def numpy_total_loss(teacher_logits, student_logits, labels, alpha, temperature):
    """alpha · cross-entropy + (1 − alpha) · T² · KL, averaged over the batch."""
    teacher_logits = teacher_logits.astype("float64")
    student_logits = student_logits.astype("float64")
    probabilities = numpy_softmax(student_logits)
    crossentropy = -np.log(probabilities[np.arange(len(labels)), labels])
    p = numpy_softmax(teacher_logits / temperature)
    q = numpy_softmax(student_logits / temperature)
    soft = temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    return alpha * crossentropy.mean() + (1 - alpha) * soft.mean()


def make_pair():
    teacher = dense_model(4, hidden=16, name="teacher")
    student = dense_model(4, name="student")
    return student, teacher


def data(count=32, inputs=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, inputs)).astype("float32")
    y = rng.integers(0, classes, size=count)
    return x, y


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5", None, True])
def test_distiller_rejects_alpha(alpha):
    student, teacher = make_pair()
    with pytest.raises(ValueError, match="alpha"):
        DistillerModel(student, teacher, alpha=alpha)


@pytest.mark.parametrize("temperature", [0, -2.0, float("nan")])
def test_distiller_rejects_temperature(temperature):
    student, teacher = make_pair()
    with pytest.raises(ValueError, match="temperature"):
        DistillerModel(student, teacher, temperature=temperature)


def test_distiller_rejects_teacher_layer():
    student, _ = make_pair()
    with pytest.raises(TypeError, match="teacher"):
        DistillerModel(student, keras.layers.Dense(4))


def test_distiller_rejects_student_array():
    _, teacher = make_pair()
    with pytest.raises(TypeError, match="student"):
        DistillerModel(np.zeros(3), teacher)


def test_distiller_rejects_output_shapes():
    teacher = dense_model(10, name="teacher")
    student = dense_model(5, name="student")
    with pytest.raises(ValueError) as error:
        DistillerModel(student, teacher)
    assert "(None, 10)" in str(error.value)
    assert "(None, 5)" in str(error.value)


def test_distiller_rejects_output_count():
    inputs = keras.Input((6,))
    teacher = keras.Model(inputs, [keras.layers.Dense(4)(inputs), keras.layers.Dense(2)(inputs)])
    student = dense_model(4, name="student")
    with pytest.raises(ValueError, match="same structure"):
        DistillerModel(student, teacher)


@pytest.mark.parametrize(
    "argument", [{"feature_weight": -1.0}, {"from_logits": 1}, {"cache_teacher_outputs": "no"}]
)
def test_distiller_rejects_options(argument):
    student, teacher = make_pair()
    name = next(iter(argument))
    with pytest.raises(ValueError, match=name):
        DistillerModel(student, teacher, **argument)


def test_compile_rejects_missing_loss():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher, alpha=0.5)
    with pytest.raises(ValueError, match="loss=None"):
        distiller.compile(optimizer="sgd")


def test_compile_without_loss_at_alpha_zero():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher, alpha=0.0)
    distiller.compile(optimizer="sgd")
    x, y = data()
    logs = distiller.fit(x, y, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])


def test_distiller_freezes_teacher():
    student, teacher = make_pair()
    DistillerModel(student, teacher)
    assert teacher.trainable is False


def test_distiller_loss_matches_numpy():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher, alpha=0.3, temperature=2.5)
    distiller.compile(optimizer="sgd", loss=CROSSENTROPY)
    x, y = data()
    loss = distiller.compute_loss(x, y, distiller(x), training=False)
    reference = numpy_total_loss(
        teacher.predict(x, verbose=0), student.predict(x, verbose=0), y, 0.3, 2.5
    )
    assert float(loss) == pytest.approx(reference, rel=1e-5)


def test_distiller_soft_step_case_d1():
    # Zero inputs and a zero kernel make the bias the logits, so one SGD step
    # with learning rate 1 moves the student bias by minus the soft gradient.
    teacher = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    teacher.set_weights([np.zeros((2, 3)), np.array([3.0, 0.0, -1.0])])
    student.set_weights([np.zeros((2, 3)), np.array([2.0, 1.0, 0.0])])
    distiller = DistillerModel(student, teacher, alpha=0.0, temperature=10.0)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    distiller.fit(np.zeros((1, 2), "float32"), np.zeros((1,)), epochs=1, verbose=0)
    step = np.array([2.0, 1.0, 0.0]) - student.get_weights()[1]
    np.testing.assert_allclose(step, [-0.475765, 0.249767, 0.225998], atol=2e-6)


def test_distiller_probability_outputs():
    student, teacher = make_pair()
    softmax_student = dense_model(4, name="student_p", activation="softmax")
    softmax_teacher = dense_model(4, hidden=16, name="teacher_p", activation="softmax")
    softmax_student.set_weights(student.get_weights())
    softmax_teacher.set_weights(teacher.get_weights())
    x, y = data()

    logits = DistillerModel(student, teacher, alpha=0.0, temperature=3.0)
    probabilities = DistillerModel(
        softmax_student, softmax_teacher, alpha=0.0, temperature=3.0, from_logits=False
    )
    logits.compile(optimizer="sgd")
    probabilities.compile(optimizer="sgd")
    expected = logits.compute_loss(x, y, logits(x), training=False)
    value = probabilities.compute_loss(x, y, probabilities(x), training=False)
    assert float(value) == pytest.approx(float(expected), rel=1e-4)


def test_fit_keeps_teacher_weights():
    # BatchNormalization statistics and Dropout would change the teacher's
    # weights or outputs if it ran in training mode.
    student, _ = make_pair()
    teacher = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(4),
        ]
    )
    before = [weight.copy() for weight in teacher.get_weights()]
    distiller = DistillerModel(student, teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    x, y = data()
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert len(before) == 8
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_fit_trains_only_student():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    x, y = data()
    distiller.fit(x, y, epochs=1, verbose=0)
    trainable = {id(variable) for variable in distiller.trainable_variables}
    assert trainable == {id(variable) for variable in student.trainable_variables}
    # Adam keeps two slots per trained variable, plus the step count and learning rate.
    assert len(distiller.optimizer.variables) == 2 + 2 * len(student.trainable_variables)


def test_fit_logs_loss_terms():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"])
    x, y = data()
    logs = distiller.fit(x, y, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "accuracy", "student_loss", "distillation_loss"}


def test_logged_loss_is_weighted_sum():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher, alpha=0.25)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    x, y = data()
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    expected = 0.25 * logs["student_loss"] + 0.75 * logs["distillation_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_predict_returns_student_outputs():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher)
    x, _ = data()
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6
    )


def test_metrics_are_student_metrics():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY, metrics=["accuracy"])
    x, y = data()
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    predicted = student.predict(x, verbose=0).argmax(axis=-1)
    assert logs["accuracy"] == pytest.approx(np.mean(predicted == y))


def test_distiller_config_round_trip():
    student, teacher = make_pair()
    distiller = DistillerModel(
        student,
        teacher,
        alpha=0.4,
        temperature=6.0,
        from_logits=False,
        features=[("teacher_hidden", "student_out")],
        feature_weight=0.5,
        cache_teacher_outputs=True,
        name="kd",
    )
    restored = DistillerModel.from_config(distiller.get_config())
    assert restored.alpha == 0.4
    assert restored.temperature == 6.0
    assert restored.from_logits is False
    assert restored.features == [("teacher_hidden", "student_out")]
    assert restored.feature_weight == 0.5
    assert restored.cache_teacher_outputs is True
    assert restored.name == "kd"
    assert restored.student.count_params() == student.count_params()
    assert restored.teacher.count_params() == teacher.count_params()
    assert restored.teacher.trainable is False


def test_subclassed_output_shapes_checked_at_fit():
    class Subclassed(keras.Model):
        def __init__(self, units):
            super().__init__()
            self.dense = keras.layers.Dense(units)

        def call(self, inputs):
            return self.dense(inputs)

    distiller = DistillerModel(Subclassed(5), Subclassed(10))
    distiller.compile(optimizer="sgd", loss=CROSSENTROPY)
    x, y = data()
    with pytest.raises(ValueError) as error:
        distiller.fit(x, y, epochs=1, verbose=0)
    assert ", 10)" in str(error.value)
    assert ", 5)" in str(error.value)


def test_subclassed_models_fit():
    class Subclassed(keras.Model):
        def __init__(self, units):
            super().__init__()
            self.dense = keras.layers.Dense(units)

        def call(self, inputs):
            return self.dense(inputs)

    teacher = Subclassed(4)
    teacher(np.zeros((1, 6), "float32"))
    before = [weight.copy() for weight in teacher.get_weights()]
    distiller = DistillerModel(Subclassed(4), teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    x, y = data()
    distiller.fit(x, y, epochs=1, verbose=0)
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_fit_positional_arguments():
    student, teacher = make_pair()
    distiller = DistillerModel(student, teacher)
    distiller.compile(optimizer="adam", loss=CROSSENTROPY)
    x, y = data()
    history = distiller.fit(x, y, 8, 2, 0).history
    assert len(history["loss"]) == 2
    logs = distiller.evaluate(x, y, 8, 0, return_dict=True)
    assert "distillation_loss" in logs
