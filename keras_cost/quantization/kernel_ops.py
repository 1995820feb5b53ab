"""The float computation of each layer type that `QuantizeWrapper` supports.

Each supported layer type gets one small class that recomputes the layer's
output from a given (fake-quantized) kernel, so that the wrapper keeps the
inner layer's own variables and constraints instead of replacing them.
"""

import keras
from keras import ops


class KernelOp:
    """Recompute a layer's pre-activation output from a substitute kernel.

    Attributes:
        layer_type: The Keras layer class this op reproduces.
        kernel_attribute: Name of the layer's kernel variable attribute.
        supports_per_channel: Whether per-output-channel weight ranges (over
            the kernel's last axis) convert to an int8 TFLite op.
    """

    layer_type = None
    kernel_attribute = "kernel"
    supports_per_channel = False

    def apply(self, layer, inputs, kernel):
        raise NotImplementedError

    def add_bias(self, layer, outputs, bias):
        return ops.add(outputs, bias)


class DenseOp(KernelOp):
    """`inputs @ kernel` over the last axis, as `keras.layers.Dense` computes."""

    layer_type = keras.layers.Dense
    # NOTE: per-output-channel fake quantization of a Dense kernel made the
    # TFLite converter of TF 2.21 fail with "'tfl.transpose' op has mismatched
    # quantized axes", so Dense kernels use one range.
    supports_per_channel = False

    def apply(self, layer, inputs, kernel):
        return ops.matmul(inputs, kernel)


class ConvOp(KernelOp):
    """2-D convolution with the inner layer's strides, padding and dilation."""

    layer_type = keras.layers.Conv2D
    supports_per_channel = True

    def apply(self, layer, inputs, kernel):
        return ops.conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )

    def add_bias(self, layer, outputs, bias):
        if layer.data_format == "channels_first":
            rank = len(outputs.shape)
            bias = ops.reshape(bias, (1, -1) + (1,) * (rank - 2))
        return ops.add(outputs, bias)


class Conv1DOp(ConvOp):
    """1-D convolution, with the left padding that `padding="causal"` implies."""

    layer_type = keras.layers.Conv1D
    # NOTE: per-channel fake quantization of a Conv1D kernel made the TFLite
    # converter of TF 2.21 fail on the ExpandDims it adds to run Conv1D as a
    # 2-D convolution ("'tfl.reshape' op requires 'output' type ... to be
    # cast compatible"), so Conv1D kernels use one range.
    supports_per_channel = False

    def apply(self, layer, inputs, kernel):
        padding = layer.padding
        if padding == "causal":
            # As keras.layers.Conv1D does: pad the time axis on the left by
            # the receptive field minus one, then convolve with "valid".
            left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            time_axis = 1 if layer.data_format == "channels_last" else 2
            pad_width = [[0, 0], [0, 0], [0, 0]]
            pad_width[time_axis] = [left, 0]
            inputs = ops.pad(inputs, pad_width)
            padding = "valid"
        return ops.conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )


class DepthwiseConvOp(ConvOp):
    """2-D depthwise convolution of `keras.layers.DepthwiseConv2D`."""

    layer_type = keras.layers.DepthwiseConv2D
    # NOTE: the kernel's output channels span its last two axes (input
    # channel and depth multiplier), which per-channel ranges over the last
    # axis do not cover, so depthwise kernels use one range.
    supports_per_channel = False

    def apply(self, layer, inputs, kernel):
        return ops.depthwise_conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )


_OPS = (DenseOp(), ConvOp(), Conv1DOp(), DepthwiseConvOp())


def get(layer):
    """Return the `KernelOp` for `layer`, or `None` when its type is unsupported.

    Subclasses of a supported type are not matched, because they may change
    `call` in ways the op would not reproduce.

    Args:
        layer: A Keras layer.

    Returns:
        A `KernelOp` instance or `None`.
    """
    for op in _OPS:
        if type(layer) is op.layer_type:
            return op
    return None


def supported_layer_names():
    """Return the class names of the layer types `QuantizeWrapper` accepts."""
    return [op.layer_type.__name__ for op in _OPS]
