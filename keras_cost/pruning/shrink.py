"""Physically remove pruned units, giving a smaller dense model."""

import keras
import numpy as np

from keras_cost.pruning.layers import check_keras_3_model
from keras_cost.pruning.strip import _replace_masks

_UNIT_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
# Layers that act on each channel on its own and keep the channel count, so a
# constant channel stays constant through them at inference.
_PER_CHANNEL_LAYERS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
)


def shrink(model):
    """Build a smaller model without the units that pruning removed.

    A unit (Dense output unit or convolution filter) is removed when its
    kernel column is entirely zero, as after `PruneCallback(...,
    granularity="neuron")`. Such a unit outputs the constant
    `activation(bias)`. The next unit layer loses the matching inputs, and
    the constant, carried through any BatchNormalization, activation,
    dropout or pooling layers in between, is folded into that layer's bias,
    so outputs equal the pruned model's up to float rounding. The units of
    the last unit layer stay, because they are model outputs.

    Supported chains, in a `keras.Sequential` model: Dense to Dense, Conv to
    Conv, Conv to Flatten to Dense, each with optional BatchNormalization,
    activation, dropout and pooling layers between them.

    Args:
        model: A built `keras.Sequential` model with channels-last layers.

    Returns:
        A new, uncompiled `keras.Sequential` model without pruning masks.

    Raises:
        TypeError: If `model` is not a Keras 3 `keras.Sequential` model.
        ValueError: If a layer between two unit layers is not supported, or
            a removed filter feeds a convolution with `padding="same"` with
            a non-zero constant, which cannot be folded exactly because the
            zero padding changes it at the borders.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    >>> kernel = model.layers[0].kernel
    >>> _ = kernel.assign(kernel.numpy() * np.array([1, 0, 1, 0]))
    >>> shrink(model).layers[0].units
    2

    References:
        Li et al., "Pruning filters for efficient ConvNets", ICLR 2017,
        https://arxiv.org/abs/1608.08710
    """
    check_keras_3_model(model)
    if not isinstance(model, keras.Sequential):
        raise TypeError(
            "shrink supports keras.Sequential models. For a functional or "
            "subclassed model, rebuild the pruned part as a Sequential "
            f"model. Received: model of type {type(model).__name__}"
        )

    layers = list(model.layers)
    configs = [_replace_masks(layer.get_config()) for layer in layers]
    weights = [[w.numpy() for w in layer.weights] for layer in layers]
    unit_positions = [i for i, layer in enumerate(layers) if isinstance(layer, _UNIT_LAYERS)]

    for position, following in zip(unit_positions, unit_positions[1:]):
        _remove_units(layers, configs, weights, position, following)

    rebuilt = keras.Sequential(name=model.name)
    rebuilt.add(keras.Input(model.input_shape[1:]))
    for layer, config in zip(layers, configs):
        rebuilt.add(type(layer).from_config(config))
    for new_layer, values in zip(rebuilt.layers, weights):
        new_layer.set_weights(values)
    return rebuilt


def _remove_units(layers, configs, weights, position, following):
    """Drop the dead units of `layers[position]` and fold them into `following`."""
    layer = layers[position]
    kernel = weights[position][0]
    dead = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)
    if not dead.any():
        return
    keep = ~dead
    if not keep.any():
        # NOTE: a layer with every unit removed keeps one, so that the model
        # still has a path from input to output.
        keep[0] = True
        dead[0] = False

    # The constant that each removed unit contributes to the next layers.
    bias = weights[position][1] if layer.use_bias else np.zeros(kernel.shape[-1], "float32")
    constant = _activation_of(layer.activation, bias)

    weights[position][0] = kernel[..., keep]
    if layer.use_bias:
        weights[position][1] = bias[keep]
    key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
    configs[position][key] = int(keep.sum())

    flatten_positions = None
    for between in range(position + 1, following):
        middle = layers[between]
        if isinstance(middle, keras.layers.BatchNormalization):
            constant = _batch_norm_of(middle, weights[between], constant)
            weights[between] = [w[keep] for w in weights[between]]
        elif isinstance(middle, keras.layers.Activation):
            constant = _activation_of(middle.activation, constant)
        elif isinstance(middle, keras.layers.Flatten):
            flatten_positions = int(np.prod(middle.input.shape[1:-1]))
        elif isinstance(middle, _PER_CHANNEL_LAYERS):
            constant = _per_channel_layer_of(middle, constant)
        else:
            raise ValueError(
                f"shrink cannot carry removed units of {layer.name!r} through "
                f"layer {middle.name!r} of type {type(middle).__name__}. "
                "Supported between unit layers: BatchNormalization, "
                "Activation, Dropout, pooling and Flatten."
            )

    _fold_into(layers[following], weights[following], keep, dead, constant, flatten_positions)


def _fold_into(layer, values, keep, dead, constant, flatten_positions):
    kernel = values[0]
    removed = np.where(dead, constant, 0.0).astype("float64")
    if flatten_positions is not None:
        shaped = kernel.reshape(flatten_positions, keep.size, kernel.shape[-1])
        shift = np.einsum("c,pco->o", removed, shaped)
        values[0] = shaped[:, keep, :].reshape(-1, kernel.shape[-1])
    elif isinstance(layer, keras.layers.Dense):
        shift = removed @ kernel
        values[0] = kernel[keep]
    else:
        if layer.padding != "valid" and np.any(removed != 0):
            raise ValueError(
                f"shrink cannot fold the constant output of removed filters "
                f"into {layer.name!r}, which uses padding={layer.padding!r}: "
                "zero padding changes the constant at the borders. Use "
                "padding='valid', or zero the biases of the removed filters."
            )
        spatial_axes = tuple(range(kernel.ndim - 2))
        shift = np.einsum("c,co->o", removed, kernel.sum(axis=spatial_axes))
        values[0] = kernel[..., keep, :]

    if not np.any(shift != 0):
        return
    if not layer.use_bias:
        raise ValueError(
            f"shrink must move a constant into the bias of {layer.name!r}, "
            "which has use_bias=False. Zero the biases of the removed units "
            "before shrinking."
        )
    values[1] = (values[1] + shift).astype(values[1].dtype)


def _activation_of(activation, values):
    if activation is None:
        return np.asarray(values, "float64")
    result = activation(keras.ops.convert_to_tensor(np.asarray(values, "float32")))
    return keras.ops.convert_to_numpy(result).astype("float64")


def _per_channel_layer_of(layer, constant):
    # Pooling and dropout map a constant channel to the same constant.
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
        result = layer(keras.ops.convert_to_tensor(np.asarray(constant, "float32")))
        return keras.ops.convert_to_numpy(result).astype("float64")
    return constant


def _batch_norm_of(layer, values, constant):
    names = [w.path.split("/")[-1] for w in layer.weights]
    by_name = dict(zip(names, values))
    gamma = by_name.get("gamma", np.ones_like(constant))
    beta = by_name.get("beta", np.zeros_like(constant))
    scale = gamma / np.sqrt(by_name["moving_variance"] + layer.epsilon)
    return (constant - by_name["moving_mean"]) * scale + beta
