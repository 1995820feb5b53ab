"""`ActivationQuantizer`: fake-quantize a tensor with a moving-average range."""

import keras

from keras_cost.quantization import fake_quant as fake_quant_lib
from keras_cost.quantization.wrapper import _check_num_bits


@keras.saving.register_keras_serializable(package="keras_cost")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantize its input over a range learned during training.

    The range is a moving average of the batch minimum and maximum, updated
    only when `training=True` and frozen at inference, widened to contain 0.
    Given a list of tensors, it quantizes all of them over one range taken
    across the list. Place it by hand after any layer whose output should
    carry a learned range, for example a layer that `quantize_model` leaves
    in float.

    Args:
        num_bits: Bit width, 2 to 8. Defaults to `8`.
        ema_decay: Decay of the moving averages, in `[0, 1)`. Defaults to
            `0.99`.
        **kwargs: Base layer arguments such as `name`.

    Example:

    >>> import numpy as np
    >>> from keras_cost.quantization import ActivationQuantizer
    >>> layer = ActivationQuantizer()
    >>> _ = layer(np.array([[0.0, 2.0]], "float32"), training=True)
    >>> float(layer.output_min), float(layer.output_max)
    (0.0, 2.0)
    >>> shared = ActivationQuantizer()
    >>> _ = shared([np.zeros((1, 1), "float32"), np.full((1, 1), 4.0, "float32")], training=True)
    >>> float(shared.output_max)
    4.0
    """

    def __init__(self, num_bits=8, ema_decay=0.99, **kwargs):
        _check_num_bits(num_bits)
        if not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(
                "`ema_decay` must be a number in [0, 1), for example 0.99. "
                f"Received: ema_decay={ema_decay!r}"
            )
        super().__init__(**kwargs)
        self.num_bits = int(num_bits)
        self.ema_decay = float(ema_decay)

    def build(self, input_shape):
        fake_quant_lib.add_range_variables(self)

    def call(self, inputs, training=None):
        return fake_quant_lib.quantize_with_moving_range(
            self, inputs, training, self.num_bits, self.ema_decay
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_bits": self.num_bits, "ema_decay": self.ema_decay}


@keras.saving.register_keras_serializable(package="keras_cost")
class QuantizedConcatenate(keras.layers.Layer):
    """Concatenate tensors whose int8 scales must match, over one learned range.

    An int8 TFLite concatenation has a single scale and zero point for all of
    its inputs and its output. This layer fake-quantizes every input over one
    moving-average range taken across all inputs, concatenates, and
    fake-quantizes the result over the same range. The converter then
    requantizes each input to that shared scale, even when the inputs carry
    different ranges of their own (for example a sigmoid branch in [0, 1] and
    a linear branch in [-6, 6]). `quantize_model` puts one in place of every
    `keras.layers.Concatenate`.

    Args:
        axis: Concatenation axis. Defaults to `-1`.
        num_bits: Bit width, 2 to 8. Defaults to `8`.
        ema_decay: Decay of the moving averages, in `[0, 1)`. Defaults to
            `0.99`.
        **kwargs: Base layer arguments such as `name`.

    Example:

    >>> import numpy as np
    >>> from keras_cost.quantization import QuantizedConcatenate
    >>> layer = QuantizedConcatenate()
    >>> out = layer([np.zeros((1, 1), "float32"), np.full((1, 1), 4.0, "float32")], training=True)
    >>> [float(v) for v in out[0]]
    [0.0, 4.0]
    """

    def __init__(self, axis=-1, num_bits=8, ema_decay=0.99, **kwargs):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"`axis` must be an integer. Received: axis={axis!r}")
        _check_num_bits(num_bits)
        if not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(
                "`ema_decay` must be a number in [0, 1), for example 0.99. "
                f"Received: ema_decay={ema_decay!r}"
            )
        super().__init__(**kwargs)
        self.axis = axis
        self.num_bits = int(num_bits)
        self.ema_decay = float(ema_decay)
        self._concatenate = keras.layers.Concatenate(axis=axis)

    def build(self, input_shape):
        fake_quant_lib.add_range_variables(self)

    def call(self, inputs, training=None):
        quantized = fake_quant_lib.quantize_with_moving_range(
            self, list(inputs), training, self.num_bits, self.ema_decay
        )
        outputs = keras.ops.concatenate(quantized, axis=self.axis)
        # The output already lies on the shared grid, so this changes no
        # value; it gives the converter the output's range explicitly.
        return fake_quant_lib.fake_quant(
            outputs, self.output_min, self.output_max, num_bits=self.num_bits
        )

    def compute_output_shape(self, input_shape):
        return self._concatenate.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "num_bits": self.num_bits,
            "ema_decay": self.ema_decay,
        }
