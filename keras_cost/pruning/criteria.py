"""Importance criteria: scores that rank weights for pruning, higher is kept."""

import keras
import numpy as np


class MagnitudeCriterion:
    """Score each weight by its absolute value, so the smallest are pruned.

    References:
        Han et al., "Learning both weights and connections for efficient
        neural networks", NeurIPS 2015, https://arxiv.org/abs/1506.02626
    """

    name = "magnitude"
    needs_units = False

    def attach(self, kernels, strategy):
        """Prepare to score `kernels`; return True if the model graph changed."""
        return False

    def detach(self):
        """Undo `attach`; return True if the model graph changed."""
        return False

    def reset(self):
        pass

    def scores(self, kernel, value):
        """Return one score per weight of `value`, the kernel's current value."""
        return np.abs(value)


@keras.saving.register_keras_serializable(package="keras_cost")
class ActivationRecorder:
    """Activation function wrapper that accumulates per-unit statistics.

    It returns the wrapped activation's output unchanged and adds, per
    output unit (last axis), the sum of |output|, the number of exact zeros
    and the number of values seen. It serializes as the wrapped activation,
    so a model saved while it is attached loads with the plain activation.
    """

    def __init__(self, activation, units):
        self.activation = activation
        self.abs_sum = keras.Variable(
            np.zeros(units), dtype="float32", trainable=False,
            aggregation="sum", name="activation_abs_sum",
        )
        self.zeros = keras.Variable(
            np.zeros(units), dtype="float32", trainable=False,
            aggregation="sum", name="activation_zeros",
        )
        self.count = keras.Variable(
            0.0, dtype="float32", trainable=False,
            aggregation="sum", name="activation_count",
        )

    def __call__(self, x):
        outputs = self.activation(x)
        values = keras.ops.cast(outputs, "float32")
        axes = tuple(range(len(values.shape) - 1))
        self.abs_sum.assign_add(keras.ops.sum(keras.ops.abs(values), axis=axes))
        is_zero = keras.ops.cast(keras.ops.equal(values, 0.0), "float32")
        self.zeros.assign_add(keras.ops.sum(is_zero, axis=axes))
        positions = keras.ops.prod(keras.ops.shape(values)[:-1])
        self.count.assign_add(keras.ops.cast(positions, "float32"))
        return outputs

    def reset(self):
        self.abs_sum.assign(keras.ops.zeros_like(self.abs_sum))
        self.zeros.assign(keras.ops.zeros_like(self.zeros))
        self.count.assign(0.0)

    def get_config(self):
        return {"activation": keras.activations.serialize(self.activation)}

    @classmethod
    def from_config(cls, config):
        return keras.activations.get(config["activation"])


class ActivationCriterion:
    """Score output units by their activations on the training batches.

    While the callback is active, each pruned layer's activation function is
    wrapped by an `ActivationRecorder`, which adds statistics inside the
    compiled train step. They are reset after each mask update, so each
    update ranks units by the batches since the previous one. Works with
    `granularity="neuron"` only, and measures the layer's own activation:
    with a separate activation layer, pre-activation values are measured.

    `statistic="mean"` scores a unit by its mean |activation|, so units that
    stay near zero go first. `statistic="apoz"` scores it by 1 - APoZ, the
    fraction of its outputs that are non-zero, so units that are zero after
    ReLU most of the time go first.

    NOTE: `evaluate` and validation passes during `fit` also call the
    activation, so they add to the statistics. The statistics variables sum
    across replicas: under `MirroredStrategy` on two logical CPU devices the
    APoZ ranking matches a one-device run (tests/distribute).

    References:
        Hu et al., "Network trimming: a data-driven neuron pruning approach
        towards efficient deep architectures", 2016,
        https://arxiv.org/abs/1607.03250
    """

    needs_units = True

    def __init__(self, name, statistic):
        self.name = name
        self.statistic = statistic
        self._recorders = {}

    def attach(self, kernels, strategy):
        changed = False
        with strategy.scope():
            for kernel in kernels:
                layer = kernel.layer
                if isinstance(layer.activation, ActivationRecorder):
                    recorder = layer.activation
                else:
                    units = kernel.variable.shape[-1]
                    recorder = ActivationRecorder(layer.activation, units)
                    layer.activation = recorder
                    changed = True
                self._recorders[kernel.name] = (layer, recorder)
        return changed

    def detach(self):
        """Put the original activation functions back."""
        for layer, recorder in self._recorders.values():
            layer.activation = recorder.activation
        changed = bool(self._recorders)
        self._recorders = {}
        return changed

    def reset(self):
        for _, recorder in self._recorders.values():
            recorder.reset()

    def scores(self, kernel, value):
        _, recorder = self._recorders[kernel.name]
        count = max(float(recorder.count.numpy()), 1.0)
        if self.statistic == "mean":
            unit_scores = recorder.abs_sum.numpy() / count
        else:
            unit_scores = 1.0 - recorder.zeros.numpy() / count
        return np.broadcast_to(unit_scores, np.shape(value))


_CRITERIA = {
    "magnitude": MagnitudeCriterion,
    "activation": lambda: ActivationCriterion("activation", "mean"),
    "apoz": lambda: ActivationCriterion("apoz", "apoz"),
}


def get(identifier):
    """Return a criterion object from its name.

    Args:
        identifier: `"magnitude"` (|w|), `"activation"` (mean |activation|
            of the unit) or `"apoz"` (1 - average percentage of zeros of
            the unit's activation).

    Raises:
        ValueError: If the name is unknown.

    Example:

    >>> get("magnitude").name
    'magnitude'
    """
    if isinstance(identifier, str) and identifier in _CRITERIA:
        return _CRITERIA[identifier]()
    raise ValueError(
        f"`criterion` must be one of {sorted(_CRITERIA)}. "
        f"Received: criterion={identifier!r}"
    )
