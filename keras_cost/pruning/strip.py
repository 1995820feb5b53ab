"""Measure the sparsity of a model and remove the pruning state after training."""

import dataclasses
import warnings

import keras
import numpy as np

from keras_cost.pruning.l0 import L0Gate
from keras_cost.pruning.l0 import fold_gate
from keras_cost.pruning.layers import check_keras_3_model, find_kernels
from keras_cost.pruning.mask import PruningMask

_MASK_NAME = "keras_cost>PruningMask"


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Fraction of exact zeros in the prunable kernels of a model.

    Attributes:
        overall: Zeros over weights, all kernels together.
        kernels: Sparsity per kernel, keyed by kernel name: the layer path
            from the outer model down plus the kernel attribute, such as
            `"dense_1/kernel"` or `"encoder/conv2d/kernel"`.
        zeros: Number of weights equal to 0.0, all kernels together.
        size: Number of weights, all kernels together.

    Example:

    >>> model = keras.Sequential(
    ...     [keras.Input((2,)), keras.layers.Dense(3, name="hidden"),
    ...      keras.layers.Dense(1, name="output")])
    >>> _ = model.get_layer("hidden").kernel.assign(np.zeros((2, 3)))
    >>> report = sparsity(model)
    >>> report.zeros, report.size
    (6, 9)
    >>> report.kernels["hidden/kernel"], report.kernels["output/kernel"]
    (1.0, 0.0)
    """

    overall: float
    kernels: dict
    zeros: int
    size: int


def sparsity(model, layers=None):
    """Measure the fraction of weights equal to 0.0 in each prunable kernel.

    Every kernel that `PruneCallback` can prune is measured (Dense and
    convolution kernels at any depth, biases excluded), pruned or not, so
    the overall value matches the callback's `sparsity` log when all
    prunable layers are pruned.

    Args:
        model: A built Keras 3 model.
        layers: `None` for every prunable layer, or the layer names or
            predicate accepted by `PruneCallback(layers=...)`.

    Returns:
        A `SparsityReport` with `overall`, per-kernel `kernels`, `zeros` and
        `size`.

    Raises:
        TypeError: If `model` is not a Keras 3 model.
        ValueError: If the model contains no prunable layer.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = model.layers[0].kernel.assign([[0, 1], [0, 1], [1, 1], [1, 1]])
    >>> report = sparsity(model)
    >>> report.overall, report.kernels
    (0.25, {'dense/kernel': 0.25})
    """
    kernels = find_kernels(model, layers)
    per_kernel = {}
    zeros = 0
    size = 0
    for kernel in kernels:
        value = kernel.variable.numpy()
        kernel_zeros = int(np.count_nonzero(value == 0))
        per_kernel[kernel.name] = kernel_zeros / value.size
        zeros += kernel_zeros
        size += value.size
    return SparsityReport(
        overall=zeros / size, kernels=per_kernel, zeros=zeros, size=size
    )


def _pruning_masks(model):
    masks = []
    for kernel in find_kernels(model):
        constraint = kernel.variable.constraint
        if isinstance(constraint, PruningMask):
            masks.append(constraint)
    return masks


def _replace_masks(config):
    """Return `config` with every PruningMask replaced by its inner constraint."""
    if isinstance(config, dict):
        if config.get("registered_name") == _MASK_NAME:
            return _replace_masks(config["config"].get("constraint"))
        return {key: _replace_masks(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_replace_masks(value) for value in config]
    return config


def strip_pruning(model):
    """Return a copy of a pruned model without the pruning masks.

    The copy has the same architecture, the same weights (so the same zero
    pattern) and the same outputs. Each `PruningMask` constraint is replaced
    by the constraint the kernel had before pruning, or none. Each `L0Gate`
    of `l0_regularize` is replaced by its inner layer with the inference
    gates folded into the kernel and bias, so closed units become zero
    columns that `shrink` can remove. The copy is
    rebuilt from the model's config, as `keras.models.load_model` would, so
    it needs a model whose custom layers are registered; it is not compiled.

    Args:
        model: A built Keras 3 model pruned with `PruneCallback`.

    Returns:
        A new, uncompiled `keras.Model`.

    Raises:
        TypeError: If `model` is not a Keras 3 model.
        ValueError: If the model contains no pruning mask, such as a model that
            never trained with `PruneCallback`.

    Warns:
        UserWarning: If the masks exist but remove no weight, as after a
            `fit` that stopped before the schedule first fired.

    Example:

    >>> import numpy as np
    >>> from keras_cost.pruning import PruningMask
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> model.layers[0].kernel.constraint = PruningMask(np.eye(2))
    >>> plain = strip_pruning(model)
    >>> print(plain.layers[0].kernel.constraint)
    None
    """
    check_keras_3_model(model)
    if any(isinstance(layer, L0Gate) for layer in model.layers):
        return _strip_gates(model)
    masks = _pruning_masks(model)
    if not masks:
        raise ValueError(
            f"Model {model.name!r} contains no pruning mask, so there is "
            "nothing to strip. Train it with "
            "keras_cost.callbacks.prune.PruneCallback first, or use the "
            "model as it is."
        )
    if all(np.all(m.mask.numpy() == 1) for m in masks):
        warnings.warn(
            f"Model {model.name!r} has pruning masks that remove no weight: "
            "the schedule never fired. The stripped model is dense.",
            stacklevel=2,
        )

    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    config = _replace_masks(config)
    stripped = keras.saving.deserialize_keras_object(config)
    stripped.set_weights(model.get_weights())
    return stripped


def _strip_gates(model):
    """Replace each top-level `L0Gate` by its layer with the gates folded in."""

    def clone(layer):
        if isinstance(layer, L0Gate):
            config, _ = fold_gate(layer)
            return type(layer.layer).from_config(_replace_masks(config))
        return type(layer).from_config(_replace_masks(layer.get_config()))

    stripped = keras.models.clone_model(model, clone_function=clone)
    for original in model.layers:
        if isinstance(original, L0Gate):
            _, weights = fold_gate(original)
            stripped.get_layer(original.layer.name).set_weights(weights)
        else:
            stripped.get_layer(original.name).set_weights(original.get_weights())
    return stripped
