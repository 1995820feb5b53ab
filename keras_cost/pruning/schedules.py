"""Pruning schedules: when to update the masks, and to which sparsity.

A schedule is called with the training step (the value of
`optimizer.iterations` before the update) and returns
`(should_prune, sparsity)`. This is the call signature of the TensorFlow
Model Optimization Toolkit (TFMOT) schedules, so a TFMOT schedule object or
any callable of that form can be passed where a schedule is expected.
"""

import math

import keras


def _check_sparsity(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1): a sparsity of 1 would remove every "
            f"weight. Received: {name}={value}"
        )


def _check_step(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"`{name}` must be an integer step. Received: {name}={value!r}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be >= {minimum}. Received: {name}={value}"
        )


class PruningSchedule:
    """Base class of the keras-cost pruning schedules.

    Subclasses implement `sparsity_at(step)` and `_fires(step)`, which the
    base class combines into the TFMOT call signature. They may also
    override the `target_sparsity_value` property and define
    `last_pruning_step(first, last)`, which `PruneCallback` reads to check,
    before training, that the target can be reached. Without them the
    callback treats the schedule like any TFMOT-style callable and calls it
    once per planned step for that check. `from_config` passes the dict of
    `get_config` to the constructor.

    Example:

    >>> class EveryTenSteps(PruningSchedule):
    ...     target_sparsity_value = 0.5
    ...     def _fires(self, step):
    ...         return step % 10 == 0
    ...     def sparsity_at(self, step):
    ...         return min(0.5, step / 100)
    ...     def last_pruning_step(self, first, last):
    ...         step = last - last % 10
    ...         return step if step >= first else None
    >>> schedule = EveryTenSteps()
    >>> schedule(20), schedule(25)
    ((True, 0.2), (False, 0.25))
    >>> schedule.last_pruning_step(0, 37)
    30
    """

    def __call__(self, step):
        """Return `(should_prune, sparsity)` for an integer training step."""
        step = int(step)
        return self._fires(step), self.sparsity_at(step)

    @property
    def target_sparsity_value(self):
        """The sparsity this schedule ends at, or None when a subclass does not define it."""
        return None

    def _fires(self, step):
        raise NotImplementedError

    def sparsity_at(self, step):
        raise NotImplementedError

    def _last_turn(self, first, last, end):
        # The last step t with begin <= t <= min(last, end) and
        # (t - begin) % frequency == 0, if it is not below `first`.
        upper = last if end is None else min(last, end)
        if upper < self.begin_step:
            return None
        step = upper - (upper - self.begin_step) % self.frequency
        if step < first:
            return None
        return step

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_cost")
class ConstantSparsity(PruningSchedule):
    """Prune to a fixed sparsity every `frequency` steps.

    The schedule prunes at steps `begin_step, begin_step + frequency, ...`
    up to and including `end_step`.

    Args:
        target_sparsity: Fraction of weights set to zero, in [0, 1).
        begin_step: First step that prunes. Defaults to `0`.
        end_step: Last step that may prune, or `None` to prune until the end
            of training. Defaults to `None`.
        frequency: Number of steps between two mask updates. Defaults to `1`.

    Raises:
        ValueError: If `target_sparsity` is outside [0, 1), a step is
            negative, `end_step < begin_step` or `frequency < 1`.

    Example:

    >>> schedule = ConstantSparsity(0.5, begin_step=10, frequency=5)
    >>> schedule(10), schedule(12), schedule(15)
    ((True, 0.5), (False, 0.5), (True, 0.5))
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=None, frequency=1):
        _check_sparsity("target_sparsity", target_sparsity)
        _check_step("begin_step", begin_step)
        if end_step is not None:
            _check_step("end_step", end_step, minimum=begin_step)
        _check_step("frequency", frequency, minimum=1)

        self.target_sparsity = float(target_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    @property
    def target_sparsity_value(self):
        return self.target_sparsity

    def _fires(self, step):
        if step < self.begin_step:
            return False
        if self.end_step is not None and step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0

    def sparsity_at(self, step):
        return self.target_sparsity

    def last_pruning_step(self, first, last):
        return self._last_turn(first, last, self.end_step)

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }

    def __repr__(self):
        return (
            f"ConstantSparsity(target_sparsity={self.target_sparsity}, "
            f"begin_step={self.begin_step}, end_step={self.end_step}, "
            f"frequency={self.frequency})"
        )


@keras.saving.register_keras_serializable(package="keras_cost")
class PolynomialDecay(PruningSchedule):
    """Raise the sparsity gradually along a polynomial curve.

    At step `t` the sparsity is
    `s_f + (s_i - s_f) * (1 - p) ** power` with
    `p = clip((t - begin_step) / (end_step - begin_step), 0, 1)`, so it
    rises fast at first, when the network has many redundant weights, and
    slowly near the end. Masks are updated every `frequency` steps from
    `begin_step`, and always at `end_step` too, so the final sparsity is
    reached even when `end_step - begin_step` is not a multiple of
    `frequency`.

    Args:
        initial_sparsity: Sparsity at `begin_step`, in [0, 1).
        final_sparsity: Sparsity from `end_step` on, in
            [`initial_sparsity`, 1).
        begin_step: First step that prunes.
        end_step: Step at which `final_sparsity` is reached; must be greater
            than `begin_step`.
        power: Exponent of the curve, > 0. Defaults to `3`.
        frequency: Number of steps between two mask updates. Defaults to `1`.

    Raises:
        ValueError: If a sparsity is outside [0, 1),
            `final_sparsity < initial_sparsity`, a step is negative,
            `end_step <= begin_step`, `power <= 0` or `frequency < 1`.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100)
    >>> schedule(0)
    (True, 0.0)
    >>> round(schedule(50)[1], 4)
    0.7
    >>> schedule(100)
    (True, 0.8)

    References:
        Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of
        pruning for model compression", 2017, https://arxiv.org/abs/1710.01878
    """

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=1,
    ):
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        if final_sparsity < initial_sparsity:
            raise ValueError(
                "`final_sparsity` must be >= `initial_sparsity`: pruned "
                "weights do not grow back. Received: "
                f"initial_sparsity={initial_sparsity}, "
                f"final_sparsity={final_sparsity}"
            )
        _check_step("begin_step", begin_step)
        _check_step("end_step", end_step, minimum=begin_step + 1)
        if isinstance(power, bool) or not isinstance(power, (int, float)):
            raise TypeError(f"`power` must be a number. Received: power={power!r}")
        if not (power > 0 and math.isfinite(power)):
            raise ValueError(f"`power` must be > 0. Received: power={power}")
        _check_step("frequency", frequency, minimum=1)

        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    @property
    def target_sparsity_value(self):
        return self.final_sparsity

    def _fires(self, step):
        if step < self.begin_step or step > self.end_step:
            return False
        if step == self.end_step:
            return True
        return (step - self.begin_step) % self.frequency == 0

    def sparsity_at(self, step):
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        progress = min(max(progress, 0.0), 1.0)
        remaining = (1.0 - progress) ** self.power
        return self.final_sparsity + (
            self.initial_sparsity - self.final_sparsity
        ) * remaining

    def last_pruning_step(self, first, last):
        if first <= self.end_step <= last:
            return self.end_step
        return self._last_turn(first, last, self.end_step)

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }

    def __repr__(self):
        return (
            f"PolynomialDecay(initial_sparsity={self.initial_sparsity}, "
            f"final_sparsity={self.final_sparsity}, "
            f"begin_step={self.begin_step}, end_step={self.end_step}, "
            f"power={self.power}, frequency={self.frequency})"
        )


def get(identifier):
    """Return a schedule from a schedule, a TFMOT-style callable or a config.

    Args:
        identifier: A `PruningSchedule`, any callable with the signature
            `schedule(step) -> (should_prune, sparsity)`, or a config dict
            as returned by `keras.saving.serialize_keras_object`.

    Returns:
        A callable schedule.

    Raises:
        TypeError: If `identifier` has none of these forms.

    Example:

    >>> get(ConstantSparsity(0.5)).target_sparsity
    0.5
    """
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return identifier
    raise TypeError(
        "Expected a pruning schedule such as "
        "keras_cost.pruning.PolynomialDecay(0.0, 0.8, begin_step=0, "
        "end_step=1000), or a callable `schedule(step) -> (should_prune, "
        f"sparsity)`. Received: schedule={identifier!r}"
    )
