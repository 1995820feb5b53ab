"""Granularities: which groups of weights a mask keeps or removes together.

Each granularity turns importance scores (one per weight, higher is more
important) into a 0/1 mask. Ties in the scores are broken by position:
among equal scores the weight with the lower flat index (C order) is pruned
first, so masks are deterministic.
"""

import keras
import numpy as np

# Layers whose kernel's last axis is the output unit or filter axis.
_UNIT_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)


def _lowest(scores, count):
    """Return a 0/1 float32 mask of `scores`' shape with the `count` lowest at 0."""
    flat = np.asarray(scores, dtype="float64").reshape(-1)
    mask = np.ones(flat.shape, dtype="float32")
    if count > 0:
        order = np.argsort(flat, kind="stable")
        mask[order[:count]] = 0.0
    return mask.reshape(np.shape(scores))


class WeightGranularity:
    """Unstructured pruning: each weight is kept or removed on its own.

    Exactly `round(sparsity * size)` weights of each kernel are set to zero
    (of all kernels together with `scope="global"`).
    """

    name = "weight"
    supports_global = True
    masks_bias = False

    def mask(self, scores, sparsity):
        return _lowest(scores, round(sparsity * np.size(scores)))

    def global_masks(self, scores_list, sparsity):
        flat = np.concatenate([np.reshape(s, -1) for s in scores_list])
        joint = _lowest(flat, round(sparsity * flat.size))
        masks = []
        start = 0
        for scores in scores_list:
            size = np.size(scores)
            masks.append(joint[start : start + size].reshape(np.shape(scores)))
            start += size
        return masks

    def config_value(self):
        return self.name


class NeuronGranularity:
    """Structured pruning of whole output units (Dense) or filters (Conv).

    A unit's score is the sum of its weights' scores over every axis but the
    last (for magnitude scores, the L1 norm of its incoming weights), and
    the `round(sparsity * units)` units with the lowest scores are removed.
    The bias of a removed unit is masked too, so the unit outputs
    `activation(0)` and `keras_cost.pruning.shrink` can drop it. Only Dense
    and Conv1D/2D/3D layers have a unit axis that this applies to.

    References:
        Li et al., "Pruning filters for efficient ConvNets", ICLR 2017,
        https://arxiv.org/abs/1608.08710
    """

    name = "neuron"
    supports_global = False
    masks_bias = True

    def check_kernel(self, kernel):
        if not isinstance(kernel.layer, _UNIT_LAYERS):
            raise ValueError(
                f"granularity='neuron' removes output units of Dense and "
                f"Conv1D/2D/3D layers, but {kernel.name!r} belongs to a "
                f"{type(kernel.layer).__name__}. Leave it out with `layers=`."
            )

    def bias_mask(self, mask):
        """Return the per-unit mask of a kernel mask, for the bias."""
        return np.asarray(mask).reshape(-1, np.shape(mask)[-1])[0]

    def unit_scores(self, scores):
        scores = np.asarray(scores, dtype="float64")
        return scores.reshape(-1, scores.shape[-1]).sum(axis=0)

    def mask(self, scores, sparsity):
        units = self.unit_scores(scores)
        unit_mask = _lowest(units, round(sparsity * units.size))
        return np.broadcast_to(unit_mask, np.shape(scores)).astype("float32")

    def config_value(self):
        return self.name


class MByNGranularity:
    """Semi-structured pruning: at most `m` non-zero weights in every `n`.

    Groups are `n` consecutive weights along the input axis (the
    second-to-last kernel axis: Dense input units, Conv input channels), the
    layout that sparse tensor cores accelerate for 2:4. The resulting
    sparsity is fixed at `1 - m / n`, so the schedule only sets when the
    pattern is applied.

    Args:
        m: Non-zero weights kept per group.
        n: Group size; the input axis length must be a multiple of it.

    References:
        Mishra et al., "Accelerating sparse deep neural networks", 2021,
        https://arxiv.org/abs/2104.08378
    """

    name = "m_by_n"
    supports_global = False
    masks_bias = False

    def __init__(self, m, n):
        self.m = m
        self.n = n

    @property
    def sparsity(self):
        return 1.0 - self.m / self.n

    def check_kernel(self, kernel):
        shape = tuple(kernel.variable.shape)
        if len(shape) < 2 or shape[-2] % self.n != 0:
            raise ValueError(
                f"Kernel {kernel.name!r} of shape {shape} cannot use "
                f"granularity=({self.m}, {self.n}): its input axis "
                f"(second to last) must be a multiple of {self.n}. Leave the "
                "layer out with `layers=`, or choose another granularity."
            )

    def mask(self, scores, sparsity):
        scores = np.asarray(scores, dtype="float64")
        # Move the input axis last and cut it into groups of n.
        moved = np.moveaxis(scores, -2, -1)
        groups = moved.reshape(-1, self.n)
        order = np.argsort(groups, axis=1, kind="stable")
        group_mask = np.ones(groups.shape, dtype="float32")
        np.put_along_axis(group_mask, order[:, : self.n - self.m], 0.0, axis=1)
        return np.moveaxis(group_mask.reshape(moved.shape), -1, -2)

    def config_value(self):
        return (self.m, self.n)


def get(identifier):
    """Return a granularity object from `"weight"`, `"neuron"` or `(m, n)`.

    Raises:
        ValueError: If `identifier` has none of these forms.

    Example:

    >>> get((2, 4)).sparsity
    0.5
    """
    if isinstance(identifier, str):
        if identifier == "weight":
            return WeightGranularity()
        if identifier == "neuron":
            return NeuronGranularity()
    elif isinstance(identifier, (tuple, list)) and len(identifier) == 2:
        m, n = identifier
        valid = all(
            isinstance(v, int) and not isinstance(v, bool) for v in (m, n)
        )
        if valid and 0 < m < n:
            return MByNGranularity(m, n)
    raise ValueError(
        "`granularity` must be 'weight', 'neuron' or a pair (m, n) of "
        "integers with 0 < m < n, such as (2, 4). "
        f"Received: granularity={identifier!r}"
    )
