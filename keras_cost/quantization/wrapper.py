"""`QuantizeWrapper`: quantization-aware training of one Dense or convolution layer."""

import numbers

import keras
from keras import ops

from keras_cost.quantization import fake_quant as fake_quant_lib
from keras_cost.quantization import kernel_ops


@keras.saving.register_keras_serializable(package="keras_cost")
class QuantizeWrapper(keras.layers.Wrapper):
    """Fake-quantize a layer's kernel and output for quantization-aware training.

    The wrapper recomputes the inner layer with `keras.ops` from a
    fake-quantized copy of its kernel: `y = Q_a(activation(x @ Q_w(W) + b))`
    for Dense, and the same with a convolution for Conv1D, Conv2D and
    DepthwiseConv2D.

    - `Q_w` is symmetric with a narrow integer range (`[-127, 127]` for 8
      bits), so the zero point is 0 as TFLite's int8 kernels require. Its
      range is the kernel's current absolute maximum, per tensor or, for
      Conv2D with `per_channel=True`, per output channel.
    - `Q_a` is affine. Its range is a moving average of the batch minimum and
      maximum, updated only when `training=True` and frozen at inference. The
      first training batch sets the range directly. Before any training the
      range is `[-6, 6]`.

    Both ranges are widened to contain 0 and to be at least
    `keras_cost.quantization.fake_quant.MIN_RANGE` wide, so constant, all-zero
    and dead-ReLU tensors give no NaN. The gradient is straight-through.

    The inner layer keeps its own kernel and bias variables, so their
    constraints still apply after every optimizer step (a pruning mask
    stored as a kernel constraint keeps the kernel pruned). The range
    variables are float32 whatever the dtype policy, and fake quantization
    runs in float32 under `mixed_float16` too.

    Args:
        layer: A `keras.layers.Dense`, `Conv1D`, `Conv2D` or
            `DepthwiseConv2D` instance,
            built or not. Subclasses are rejected because their `call` may
            differ from what the wrapper recomputes.
        num_bits: Bit width of the kernel quantizer, 2 to 8. Defaults to
            `8`.
        per_channel: Whether the kernel gets one range per output channel.
            Only Conv2D supports it. Defaults to `False`.
        ema_decay: Decay of the moving averages of the output range, in
            `[0, 1)`. Defaults to `0.99`.
        quantize_output: Whether to fake-quantize the output. `quantize_model`
            turns it off for layers feeding a Concatenate, whose int8 inputs
            must share the scale of its output. The range variables exist
            either way. Defaults to `True`.
        activation_bits: Bit width of the output quantizer, 2 to 8.
            Defaults to `8`, the width of TFLite's int8 activations, so
            `num_bits=4` trains 4-bit weights with 8-bit activations.
        **kwargs: Base layer arguments such as `name`. The dtype policy
            defaults to the inner layer's.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_cost.quantization import QuantizeWrapper
    >>> layer = QuantizeWrapper(keras.layers.Dense(2, activation="relu"))
    >>> tuple(layer(np.ones((1, 3), "float32")).shape)
    (1, 2)
    >>> [v.path.split("/")[-1] for v in layer.non_trainable_weights]
    ['output_min', 'output_max', 'output_range_set']

    References:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
    """

    def __init__(
        self,
        layer,
        num_bits=8,
        per_channel=False,
        ema_decay=0.99,
        quantize_output=True,
        activation_bits=8,
        **kwargs,
    ):
        kernel_op = _check_layer(layer)
        _check_num_bits(num_bits)
        _check_num_bits(activation_bits, name="activation_bits")
        if not isinstance(per_channel, bool):
            raise ValueError(
                f"`per_channel` must be True or False. Received: per_channel={per_channel!r}"
            )
        if per_channel and not kernel_op.supports_per_channel:
            raise ValueError(
                f"Per-channel kernel ranges are not supported for "
                f"{type(layer).__name__} layer '{layer.name}', because the TFLite converter "
                "cannot convert them. Use per_channel=False. Received: per_channel=True"
            )
        if not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(
                "`ema_decay` must be a number in [0, 1), for example 0.99. "
                f"Received: ema_decay={ema_decay!r}"
            )
        if not isinstance(quantize_output, bool):
            raise ValueError(
                "`quantize_output` must be True or False. "
                f"Received: quantize_output={quantize_output!r}"
            )
        kwargs.setdefault("dtype", layer.dtype_policy)
        kwargs.setdefault("name", f"quant_{layer.name}")
        # Autocast stays off so that the float32 kernel is read as float32
        # and quantized before the cast to the compute dtype.
        kwargs["autocast"] = False
        super().__init__(layer, **kwargs)

        self.num_bits = int(num_bits)
        self.per_channel = per_channel
        self.ema_decay = float(ema_decay)
        self.quantize_output = quantize_output
        self.activation_bits = int(activation_bits)
        self._kernel_op = kernel_op

    def build(self, input_shape):
        super().build(input_shape)
        fake_quant_lib.add_range_variables(self)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def call(self, inputs, training=None):
        # With autocast off, Keras leaves the inputs in their own dtype too.
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(self.quantized_kernel(), self.compute_dtype)
        outputs = self._kernel_op.apply(self.layer, inputs, kernel)
        if self.layer.use_bias:
            bias = ops.cast(self.layer.bias, self.compute_dtype)
            outputs = self._kernel_op.add_bias(self.layer, outputs, bias)
        if self.layer.activation is not None:
            outputs = self.layer.activation(outputs)
        if not self.quantize_output:
            return outputs
        return self._quantize_output(outputs, training)

    def quantized_kernel(self):
        """Return the fake-quantized float32 kernel that the forward pass uses.

        Returns:
            A float32 tensor of the inner kernel's shape whose values lie on
            the symmetric integer grid of `num_bits` bits.
        """
        kernel = ops.cast(getattr(self.layer, self._kernel_op.kernel_attribute), "float32")
        if self.per_channel:
            channel_axis = len(kernel.shape) - 1
            reduce_axes = tuple(range(channel_axis))
            bound = ops.max(ops.abs(kernel), axis=reduce_axes)
            axis = channel_axis
        else:
            bound = ops.max(ops.abs(kernel))
            axis = None
        # widen_range would only raise the upper end of [0, 0]; a symmetric
        # range has to grow on both sides to keep its zero point at 0.
        # The range follows the kernel but is not trained through it, as in
        # TFMOT: no gradient reaches the largest weight through the range,
        # and the backward pass skips the max reduction.
        bound = ops.stop_gradient(ops.maximum(bound, fake_quant_lib.MIN_RANGE / 2))
        return fake_quant_lib.fake_quant(
            kernel, -bound, bound, num_bits=self.num_bits, narrow_range=True, axis=axis
        )

    def _quantize_output(self, outputs, training):
        return fake_quant_lib.quantize_with_moving_range(
            self, outputs, training, self.activation_bits, self.ema_decay
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_bits": self.num_bits,
                "per_channel": self.per_channel,
                "ema_decay": self.ema_decay,
                "quantize_output": self.quantize_output,
                "activation_bits": self.activation_bits,
            }
        )
        # The constructor forces autocast off, so it is not a setting.
        config.pop("autocast", None)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # keras.layers.Wrapper.from_config pops "layer" from the dict it is
        # given; a copy leaves the caller's config intact.
        return super().from_config(dict(config), custom_objects=custom_objects)


def _check_layer(layer):
    kernel_op = kernel_ops.get(layer) if isinstance(layer, keras.layers.Layer) else None
    if kernel_op is None:
        supported = ", ".join(kernel_ops.supported_layer_names())
        raise ValueError(
            f"QuantizeWrapper supports only these layer types: {supported}. "
            "Leave other layers in float, or wrap the supported layers inside them. "
            f"Received: layer={layer!r} of type {type(layer).__name__}"
        )
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"Layer '{layer.name}' has LoRA enabled. Merge the LoRA weights into the "
            f"kernel before quantization-aware training. Received: layer={layer!r}"
        )
    return kernel_op


def _check_num_bits(num_bits, name="num_bits"):
    # numbers.Integral accepts NumPy integers too, as from np.arange(2, 9).
    is_integer = isinstance(num_bits, numbers.Integral) and not isinstance(num_bits, bool)
    if not is_integer or not 2 <= num_bits <= 8:
        raise ValueError(
            f"`{name}` must be an integer from 2 to 8 (TFLite runs 8-bit integer "
            f"kernels). Received: {name}={num_bits!r}"
        )
