"""The soft-target loss of knowledge distillation."""

import math

import keras
from keras import ops

# Probabilities are clipped before the log so that a class the teacher rules
# out with probability 0 gives a large negative logit instead of -inf.
_PROBABILITY_EPSILON = 1e-7


def validate_temperature(temperature):
    """Raise `ValueError` unless `temperature` is a finite number above 0."""
    is_number = isinstance(temperature, (int, float)) and not isinstance(
        temperature, bool
    )
    if not is_number or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            "`temperature` must be a finite number greater than 0, such as "
            f"4.0. Received: temperature={temperature!r}"
        )


def to_logits(outputs, from_logits):
    """Return `outputs` as logits, taking the log of probabilities."""
    if from_logits:
        return outputs
    return ops.log(ops.clip(outputs, _PROBABILITY_EPSILON, 1.0))


@keras.saving.register_keras_serializable(package="keras_cost")
class SoftTargetKLDivergence(keras.losses.Loss):
    """Computes the temperature-scaled KL divergence used in distillation.

    For teacher logits `t` and student logits `s`, each sample's loss is

        T² · KL(softmax(t / T) || softmax(s / T))
            = T² · Σ_k p_k (log p_k − log q_k),

    with `p = softmax(t / T)` and `q = softmax(s / T)`, over the last axis.
    The gradient of `KL` with respect to `s` is `(q − p) / T`, so the factor
    `T²` keeps the soft loss's gradients on the same scale as those of a
    hard-label loss when `T` changes. Reduction and sample weights follow
    `keras.losses.Loss`, which also divides the loss by the number of
    replicas under a `tf.distribute` strategy.

    Args:
        temperature: Softmax temperature `T` applied to both sides, a number
            greater than 0. Defaults to `4.0`.
        from_logits: Whether `y_true` and `y_pred` are logits. When `False`,
            they are probabilities and their logs are used as logits.
            Defaults to `True`.
        reduction: Reduction over the batch, as in `keras.losses.Loss`.
            Defaults to `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"soft_target_kl_divergence"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
            Defaults to `None`.

    Raises:
        ValueError: If `temperature` is not a finite number above 0.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetKLDivergence(temperature=1.0)
    >>> same = np.array([[2.0, 1.0, 0.0]])
    >>> float(loss(same, same))
    0.0

    References:
        Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
        Network", NIPS 2014 Deep Learning Workshop, arXiv:1503.02531 (2015).
    """

    def __init__(
        self,
        temperature=4.0,
        from_logits=True,
        reduction="sum_over_batch_size",
        name="soft_target_kl_divergence",
        dtype=None,
    ):
        validate_temperature(temperature)
        if not isinstance(from_logits, bool):
            raise ValueError(
                "`from_logits` must be True or False. "
                f"Received: from_logits={from_logits!r}"
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        # The teacher is a fixed target: no gradient may reach it.
        teacher_logits = ops.stop_gradient(to_logits(y_true, self.from_logits))
        student_logits = to_logits(y_pred, self.from_logits)

        teacher_log_probs = ops.log_softmax(teacher_logits / self.temperature, axis=-1)
        student_log_probs = ops.log_softmax(student_logits / self.temperature, axis=-1)
        divergence = ops.sum(
            ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
            axis=-1,
        )
        return self.temperature**2 * divergence

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "from_logits": self.from_logits,
                "dtype": self.dtype,
            }
        )
        return config
