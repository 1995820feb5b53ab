"""Fake quantization with ranges that always contain 0 and never collapse."""

import keras
from keras import ops

# Narrowest range a quantizer may use. An all-zero kernel, a constant-zero
# output or a ReLU that never fires would otherwise give max == min, a scale
# of 0 and NaN from the division in the fake-quant op. 1e-3 keeps the int8
# rescale multiplier of the following op small enough for TFLite's int32
# fixed-point arithmetic while staying far below the ranges of real activations.
MIN_RANGE = 1e-3


def widen_range(range_min, range_max):
    """Widen `[range_min, range_max]` so that it contains 0 and is not empty.

    The range only grows: the lower end moves down to 0 when it is positive,
    the upper end moves up to 0 when it is negative, and an interval narrower
    than `MIN_RANGE` gets its upper end raised. Shifting the interval instead
    would move the values the data actually takes outside it.

    Args:
        range_min: Scalar or per-channel tensor of lower ends.
        range_max: Scalar or per-channel tensor of upper ends.

    Returns:
        A `(range_min, range_max)` tuple of float32 tensors with
        `range_min <= 0 <= range_max` and `range_max - range_min >= MIN_RANGE`.

    Example:

    >>> low, high = widen_range(0.5, 0.5)
    >>> float(low), float(high)
    (0.0, 0.5)
    >>> low, high = widen_range(0.0, 0.0)
    >>> float(low), round(float(high), 6)
    (0.0, 0.001)
    """
    range_min = ops.minimum(ops.cast(range_min, "float32"), 0.0)
    range_max = ops.maximum(ops.cast(range_max, "float32"), 0.0)
    range_max = ops.maximum(range_max, range_min + MIN_RANGE)
    return range_min, range_max


def fake_quant(values, range_min, range_max, num_bits=8, narrow_range=False, axis=None):
    """Quantize and dequantize `values` in float32 over a widened range.

    On the TensorFlow backend this lowers to
    `tf.quantization.fake_quant_with_min_max_vars` (or its per-channel form),
    the op that the TFLite converter turns into int8 quantization parameters.
    The gradient is straight-through inside the range and 0 outside it.

    Args:
        values: Float tensor of any float dtype. It is cast to float32 and
            the result is cast back.
        range_min: Scalar, or a vector along `axis`, of lower ends.
        range_max: Scalar, or a vector along `axis`, of upper ends.
        num_bits: Bit width, 2 to 16. Defaults to `8`.
        narrow_range: Whether to use `[1, 2^num_bits - 1]` instead of
            `[0, 2^num_bits - 1]`, as int8 weights need for a zero point of
            0. Defaults to `False`.
        axis: Channel axis for per-channel ranges, or `None` for one range.
            Defaults to `None`.

    Returns:
        A tensor of the dtype and shape of `values`.

    Example:

    >>> import numpy as np
    >>> out = fake_quant(np.array([0.0, 0.3, 1.0], "float32"), 0.0, 1.0)
    >>> [round(float(v) * 255) for v in out]
    [0, 77, 255]
    """
    dtype = keras.backend.standardize_dtype(values.dtype) if hasattr(values, "dtype") else "float32"
    range_min, range_max = widen_range(range_min, range_max)
    outputs = keras.quantizers.fake_quant_with_min_max_vars(
        ops.cast(values, "float32"),
        range_min,
        range_max,
        num_bits=num_bits,
        narrow_range=narrow_range,
        axis=axis,
    )
    return ops.cast(outputs, dtype)


def add_range_variables(layer):
    """Create the float32 `output_min`, `output_max` and `output_range_set` of `layer`.

    Until the first training batch sets it, the range is `[-6, 6]`, wide
    enough for typical activations at inference. `output_range_set` is 1.0
    once a training batch has set the range.
    """
    initial_values = {"output_min": -6.0, "output_max": 6.0, "output_range_set": 0.0}
    for name, initial_value in initial_values.items():
        variable = layer.add_weight(
            name=name,
            shape=(),
            initializer=keras.initializers.Constant(initial_value),
            dtype="float32",
            trainable=False,
            autocast=False,
            # Every replica assigns the same global-batch range (see
            # `_global_extreme`), so the mean leaves that value unchanged.
            aggregation="mean",
        )
        setattr(layer, name, variable)


def _global_extreme(value, reduce):
    """Reduce a per-replica scalar over all replicas that share one global batch."""
    # Each replica computes on a slice of the global batch, and averaging the slice
    # ranges would shrink the range that one device would find. `all_gather`
    # also works under MultiWorkerMirroredStrategy and keeps shapes static.
    if keras.backend.backend() != "tensorflow":
        return value
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return reduce(context.all_gather(ops.reshape(value, (1,)), axis=0))


def quantize_with_moving_range(layer, outputs, training, num_bits, ema_decay):
    """Fake-quantize `outputs` over the moving-average range stored on `layer`.

    In training the batch minimum and maximum update the range first, and
    the first training batch sets it directly. At inference the stored range
    is used unchanged. A list of tensors shares one range taken over all of
    them, because int8 Concatenate needs one scale.

    Args:
        layer: A layer that ran `add_range_variables`.
        outputs: Float tensor, or list of float tensors, to quantize.
        training: Whether to update the range.
        num_bits: Bit width.
        ema_decay: Weight of the stored range in the moving average.

    Returns:
        A tensor (or list of tensors) of the dtype and shape of `outputs`.
    """
    tensors = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    range_min = layer.output_min
    range_max = layer.output_max
    if training:
        batch_min = _reduce(ops.minimum, [ops.min(ops.cast(t, "float32")) for t in tensors])
        batch_max = _reduce(ops.maximum, [ops.max(ops.cast(t, "float32")) for t in tensors])
        batch_min = _global_extreme(batch_min, ops.min)
        batch_max = _global_extreme(batch_max, ops.max)
        is_set = layer.output_range_set > 0.5
        range_min = ops.where(
            is_set, ema_decay * range_min + (1.0 - ema_decay) * batch_min, batch_min
        )
        range_max = ops.where(
            is_set, ema_decay * range_max + (1.0 - ema_decay) * batch_max, batch_max
        )
        layer.output_min.assign(range_min)
        layer.output_max.assign(range_max)
        layer.output_range_set.assign(1.0)
        # The moving range is a statistic, not a trained quantity: without
        # this, gradients of the clipped values would flow into the batch
        # minimum and maximum and back to the single activations that set them.
        range_min = ops.stop_gradient(range_min)
        range_max = ops.stop_gradient(range_max)

    quantized = [fake_quant(t, range_min, range_max, num_bits=num_bits) for t in tensors]
    if isinstance(outputs, (list, tuple)):
        return quantized
    return quantized[0]


def _reduce(function, values):
    result = values[0]
    for value in values[1:]:
        result = function(result, value)
    return result
