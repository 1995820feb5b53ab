import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cost.distillation import SoftTargetKLDivergence

STUDENT_LOGITS = np.array([[2.0, 1.0, 0.0]], dtype="float32")
TEACHER_LOGITS = np.array([[3.0, 0.0, -1.0]], dtype="float32")


def numpy_softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def numpy_soft_loss(teacher_logits, student_logits, temperature):
    """Per-sample T² · KL(softmax(t/T) || softmax(s/T)) in float64."""
    teacher = numpy_softmax(np.asarray(teacher_logits, "float64") / temperature)
    student = numpy_softmax(np.asarray(student_logits, "float64") / temperature)
    return temperature**2 * np.sum(teacher * (np.log(teacher) - np.log(student)), axis=-1)


def numpy_soft_gradient(teacher_logits, student_logits, temperature):
    """Gradient of the T²-scaled soft loss, T · (q − p), from d KL/ds = (q − p)/T."""
    teacher = numpy_softmax(np.asarray(teacher_logits, "float64") / temperature)
    student = numpy_softmax(np.asarray(student_logits, "float64") / temperature)
    return temperature * (student - teacher)


def gradient_wrt_student(loss, teacher_logits, student_logits):
    student = tf.Variable(student_logits)
    with tf.GradientTape() as tape:
        value = loss(teacher_logits, student)
    return tape.gradient(value, student).numpy()


def test_soft_gradient_case_d1():
    loss = SoftTargetKLDivergence(temperature=10.0)
    gradient = gradient_wrt_student(loss, TEACHER_LOGITS, STUDENT_LOGITS)
    expected = [-0.475765, 0.249767, 0.225998]
    np.testing.assert_allclose(gradient[0], expected, atol=2e-6)


def test_soft_gradient_matches_numpy():
    loss = SoftTargetKLDivergence(temperature=10.0)
    gradient = gradient_wrt_student(loss, TEACHER_LOGITS, STUDENT_LOGITS)
    reference = numpy_soft_gradient(TEACHER_LOGITS, STUDENT_LOGITS, 10.0)
    np.testing.assert_allclose(gradient, reference, atol=1e-6)


def test_soft_gradient_without_t_squared():
    # Keras's plain KL divergence of the softened distributions has no T²
    # factor, so its gradient is T² = 100 times smaller.
    def plain_kl(teacher_logits, student_logits):
        return keras.losses.KLDivergence()(
            keras.ops.softmax(teacher_logits / 10.0), keras.ops.softmax(student_logits / 10.0)
        )

    soft_loss = SoftTargetKLDivergence(temperature=10.0)
    scaled = gradient_wrt_student(soft_loss, TEACHER_LOGITS, STUDENT_LOGITS)
    plain = gradient_wrt_student(plain_kl, TEACHER_LOGITS, STUDENT_LOGITS)
    np.testing.assert_allclose(plain * 100.0, scaled, atol=1e-5)


def test_soft_gradient_high_temperature_limit():
    # As T grows, T · (q − p) tends to (s − t − mean(s − t)) / n, with n = 3 classes.
    loss = SoftTargetKLDivergence(temperature=1000.0)
    gradient = gradient_wrt_student(loss, TEACHER_LOGITS, STUDENT_LOGITS)
    np.testing.assert_allclose(gradient[0], [-0.4444, 0.2222, 0.2222], atol=1e-3)


def test_soft_loss_value_matches_numpy():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(5, 4)).astype("float32")
    student = rng.normal(size=(5, 4)).astype("float32")
    value = float(SoftTargetKLDivergence(temperature=3.0)(teacher, student))
    reference = numpy_soft_loss(teacher, student, 3.0).mean()
    assert value == pytest.approx(reference, rel=1e-5)


def test_soft_loss_sample_weight():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(4, 3)).astype("float32")
    student = rng.normal(size=(4, 3)).astype("float32")
    weights = np.array([1.0, 0.0, 2.0, 0.5], dtype="float32")
    value = float(SoftTargetKLDivergence(temperature=2.0)(teacher, student, weights))
    # "sum_over_batch_size" divides the weighted sum by the batch size.
    reference = np.sum(weights * numpy_soft_loss(teacher, student, 2.0)) / 4
    assert value == pytest.approx(reference, rel=1e-5)


def test_soft_loss_probabilities_match_logits():
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(3, 5)).astype("float32")
    student = rng.normal(size=(3, 5)).astype("float32")
    from_logits = SoftTargetKLDivergence(temperature=4.0)(teacher, student)
    from_probabilities = SoftTargetKLDivergence(temperature=4.0, from_logits=False)(
        numpy_softmax(teacher), numpy_softmax(student)
    )
    assert float(from_probabilities) == pytest.approx(float(from_logits), rel=1e-4)


def test_soft_loss_identical_logits_is_zero():
    value = SoftTargetKLDivergence(temperature=4.0)(STUDENT_LOGITS, STUDENT_LOGITS)
    assert float(value) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), "4", True])
def test_soft_loss_rejects_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetKLDivergence(temperature=temperature)


def test_soft_loss_rejects_from_logits():
    with pytest.raises(ValueError, match="from_logits"):
        SoftTargetKLDivergence(from_logits="yes")


def test_soft_loss_config_round_trip():
    loss = SoftTargetKLDivergence(temperature=7.0, from_logits=False, reduction="sum", name="soft")
    restored = SoftTargetKLDivergence.from_config(loss.get_config())
    assert restored.temperature == 7.0
    assert restored.from_logits is False
    assert restored.reduction == "sum"
    assert restored.name == "soft"
