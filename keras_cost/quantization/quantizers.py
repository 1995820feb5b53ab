"""Weight quantizers: linear (affine), power-of-two and k-means codebook.

Each quantizer maps a float tensor to integer codes plus the parameters
needed to map them back. Calling a quantizer returns the dequantized tensor
with a straight-through gradient, so it can sit inside a training step.
"""

import keras
from keras import ops

from keras_cost.quantization.fake_quant import MIN_RANGE


class Quantizer:
    """Base class: `quantize`, `dequantize` and a straight-through `__call__`.

    Subclasses implement `quantize`, `dequantize` and `get_config`. The
    base class adds `__call__`, which returns
    `stop_gradient(Q(x)) + (x - stop_gradient(x))`: the forward pass gives
    exactly the dequantized values, and the gradient with respect to `x` is
    the identity.

    Example:

    >>> import numpy as np
    >>> quantizer = LinearQuantizer(num_bits=2)
    >>> isinstance(quantizer, Quantizer)
    True
    >>> x = np.array([0.0, 1.2, 3.0], "float32")
    >>> codes, params = quantizer.quantize(x)
    >>> [int(c) for c in codes]
    [0, 1, 3]
    >>> [float(v) for v in quantizer(x)]
    [0.0, 1.0, 3.0]
    """

    def quantize(self, x):
        """Return `(codes, params)`: integer codes as float32 and the dict to decode them."""
        raise NotImplementedError

    def dequantize(self, codes, params):
        """Return the float32 values that `codes` represent under `params`."""
        raise NotImplementedError

    def __call__(self, x):
        """Quantize and dequantize `x`; the gradient passes straight through."""
        x = ops.cast(x, "float32")
        codes, params = self.quantize(x)
        values = self.dequantize(codes, params)
        # x - stop_gradient(x) is exactly 0 forward, so the output is exactly
        # a representable value, where x + (Q(x) - x) could be off by rounding.
        return ops.stop_gradient(values) + (x - ops.stop_gradient(x))

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"`{name}` must be an integer from {low} to {high}. Received: {name}={value!r}"
        )


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="keras_cost")
class LinearQuantizer(Quantizer):
    """Affine min-max quantization with a range widened to contain 0.

    `Q(x) = round((x - x_min) / (x_max - x_min) * (2^n - 1))` over the
    tensor's own range. The range is first widened to contain 0, and the
    zero point `z = round(-x_min / scale)` is an integer, so 0 maps to a code
    exactly and back to 0.0. Every value in the range comes back within
    `scale / 2`.

    Args:
        num_bits: Bit width `n`, 2 to 16. Defaults to `8`.
        symmetric: Whether the range is `[-max|x|, max|x|]`. Defaults to
            `False`.
        per_channel: Whether each slice along the last axis (the output
            channel of Dense and Conv kernels) gets its own range. Defaults
            to `False`.
        narrow_range: Whether codes skip the lowest value (`[1, 2^n - 1]`),
            as TFLite's int8 weights do. Defaults to `False`.

    Example:

    >>> import numpy as np
    >>> quantizer = LinearQuantizer(num_bits=2)
    >>> codes, params = quantizer.quantize(np.array([0.0, 1.0, 3.0], "float32"))
    >>> [int(c) for c in codes]
    [0, 1, 3]
    >>> [float(v) for v in quantizer.dequantize(codes, params)]
    [0.0, 1.0, 3.0]

    References:
        Jacob et al., "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
    """

    def __init__(self, num_bits=8, symmetric=False, per_channel=False, narrow_range=False):
        _check_int("num_bits", num_bits, 2, 16)
        _check_bool("symmetric", symmetric)
        _check_bool("per_channel", per_channel)
        _check_bool("narrow_range", narrow_range)
        self.num_bits = num_bits
        self.symmetric = symmetric
        self.per_channel = per_channel
        self.narrow_range = narrow_range

    def quantize(self, x):
        x = ops.cast(x, "float32")
        x_min, x_max = self._range(x)
        code_min = 1.0 if self.narrow_range else 0.0
        code_max = float(2**self.num_bits - 1)

        scale = (x_max - x_min) / (code_max - code_min)
        zero_point = ops.clip(ops.round(code_min - x_min / scale), code_min, code_max)
        codes = ops.clip(ops.round(x / scale) + zero_point, code_min, code_max)
        return codes, {"scale": scale, "zero_point": zero_point}

    def dequantize(self, codes, params):
        return (ops.cast(codes, "float32") - params["zero_point"]) * params["scale"]

    def _range(self, x):
        if self.per_channel and len(x.shape) > 0:
            axes = tuple(range(len(x.shape) - 1))
        else:
            axes = None
        if self.symmetric:
            # The floor keeps an all-zero tensor symmetric, with 0 at the
            # middle code like every other tensor.
            bound = ops.maximum(ops.max(ops.abs(x), axis=axes), MIN_RANGE / 2)
            x_min, x_max = -bound, bound
        else:
            x_min = ops.min(x, axis=axes)
            x_max = ops.max(x, axis=axes)
        x_min = ops.minimum(x_min, 0.0)
        x_max = ops.maximum(x_max, 0.0)
        # A constant-zero tensor would give a scale of 0 and NaN codes.
        x_max = ops.maximum(x_max, x_min + MIN_RANGE)
        return x_min, x_max

    def get_config(self):
        return {
            "num_bits": self.num_bits,
            "symmetric": self.symmetric,
            "per_channel": self.per_channel,
            "narrow_range": self.narrow_range,
        }


@keras.saving.register_keras_serializable(package="keras_cost")
class PowerOfTwoQuantizer(Quantizer):
    """Logarithmic quantization to 0 and signed powers of two.

    One bit is the sign and the other `num_bits - 1` bits index exponents
    `k_max - m + 1 ... k_max`, where `k_max = ceil(log2(max|x|))` and
    `m = 2^(num_bits - 1) - 1`. Each value goes to the nearest exponent in
    the log domain. A magnitude below the smallest level goes to 0, so 0 maps
    to 0 exactly. Multiplying by such weights is a bit shift.

    Args:
        num_bits: Bit width, 2 to 8. Defaults to `4`.

    Example:

    >>> import numpy as np
    >>> quantizer = PowerOfTwoQuantizer(num_bits=3)
    >>> x = np.array([0.0, 0.3, -1.0, 0.01], "float32")
    >>> [float(v) for v in quantizer(x)]
    [0.0, 0.25, -1.0, 0.0]

    References:
        Miyashita, Lee and Murmann, "Convolutional Neural Networks using
        Logarithmic Data Representation", arXiv:1603.01025, 2016.
    """

    def __init__(self, num_bits=4):
        _check_int("num_bits", num_bits, 2, 8)
        self.num_bits = num_bits

    def quantize(self, x):
        x = ops.cast(x, "float32")
        levels = float(2 ** (self.num_bits - 1) - 1)
        magnitude = ops.abs(x)
        k_max = ops.ceil(ops.log2(ops.maximum(ops.max(magnitude), MIN_RANGE)))
        k_min = k_max - levels + 1.0

        exponent = ops.round(ops.log2(ops.maximum(magnitude, 1e-30)))
        exponent = ops.minimum(exponent, k_max)
        index = exponent - k_min + 1.0
        index = ops.where(index < 1.0, 0.0, index)
        codes = ops.sign(x) * index
        return codes, {"k_min": k_min}

    def dequantize(self, codes, params):
        codes = ops.cast(codes, "float32")
        magnitude = ops.power(2.0, ops.abs(codes) - 1.0 + params["k_min"])
        return ops.where(codes == 0.0, 0.0, ops.sign(codes) * magnitude)

    def get_config(self):
        return {"num_bits": self.num_bits}


@keras.saving.register_keras_serializable(package="keras_cost")
class KMeansQuantizer(Quantizer):
    """Weight clustering: each value becomes the nearest of `num_clusters` centroids.

    The centroids start evenly spaced over `[min, max]` (linear
    initialization) and are refined by `num_iterations` Lloyd steps in
    one dimension. When the tensor contains exact zeros, such as pruned
    weights, one centroid is held at exactly 0 so that they stay zero.
    Otherwise all centroids are free. Codes are centroid indices, so a tensor is
    stored as `log2(num_clusters)` bits per value plus the codebook.

    Args:
        num_clusters: Codebook size, 2 to 256. Defaults to `16`.
        num_iterations: Lloyd iterations. Defaults to `10`.

    Example:

    >>> import numpy as np
    >>> quantizer = KMeansQuantizer(num_clusters=3)
    >>> x = np.array([0.0, 0.9, 1.1, -2.0, -2.2], "float32")
    >>> [round(float(v), 3) for v in quantizer(x)]
    [0.0, 1.0, 1.0, -2.1, -2.1]

    References:
        Han, Mao and Dally, "Deep Compression: Compressing Deep Neural
        Networks with Pruning, Trained Quantization and Huffman Coding",
        ICLR 2016.
    """

    def __init__(self, num_clusters=16, num_iterations=10):
        _check_int("num_clusters", num_clusters, 2, 256)
        _check_int("num_iterations", num_iterations, 1, 1000)
        self.num_clusters = num_clusters
        self.num_iterations = num_iterations

    def quantize(self, x):
        x = ops.cast(x, "float32")
        values = ops.reshape(x, (-1,))
        low = ops.minimum(ops.min(values), 0.0)
        high = ops.maximum(ops.max(values), 0.0)
        steps = ops.arange(self.num_clusters, dtype="float32") / (self.num_clusters - 1)
        # A dense kernel has no exact zeros, and a centroid held at 0 would
        # waste one of its few values.
        has_zeros = ops.any(ops.equal(values, 0.0))
        codebook = self._pin_zero(low + steps * (high - low), has_zeros)

        for _ in range(self.num_iterations):
            assignment = self._assign(values, codebook)
            one_hot = ops.one_hot(assignment, self.num_clusters)
            counts = ops.sum(one_hot, axis=0)
            sums = ops.sum(one_hot * values[:, None], axis=0)
            # An empty cluster keeps its centroid instead of dividing by 0.
            means = sums / ops.maximum(counts, 1.0)
            codebook = self._pin_zero(ops.where(counts > 0, means, codebook), has_zeros)

        codes = ops.reshape(self._assign(values, codebook), ops.shape(x))
        return ops.cast(codes, "float32"), {"codebook": codebook}

    def dequantize(self, codes, params):
        return ops.take(params["codebook"], ops.cast(codes, "int32"))

    def _assign(self, values, codebook):
        return ops.argmin(ops.abs(values[:, None] - codebook[None, :]), axis=1)

    def _pin_zero(self, codebook, has_zeros):
        nearest = ops.argmin(ops.abs(codebook))
        pinned = ops.logical_and(ops.arange(self.num_clusters) == nearest, has_zeros)
        return ops.where(pinned, 0.0, codebook)

    def get_config(self):
        return {"num_clusters": self.num_clusters, "num_iterations": self.num_iterations}


_QUANTIZERS = {
    "linear": LinearQuantizer,
    "power_of_two": PowerOfTwoQuantizer,
    "kmeans": KMeansQuantizer,
}


def get(identifier):
    """Return a quantizer for a name, a config dict or an instance.

    Args:
        identifier: A `Quantizer` instance (returned as is), one of the names
            `"linear"`, `"power_of_two"`, `"kmeans"` (default arguments), or
            a dict `{"class_name": name, "config": {...}}`.

    Returns:
        A `Quantizer` instance.

    Raises:
        ValueError: If the name is unknown.

    Example:

    >>> get("kmeans").num_clusters
    16
    >>> get({"class_name": "linear", "config": {"num_bits": 4}}).num_bits
    4
    """
    if isinstance(identifier, Quantizer):
        return identifier
    config = {}
    name = identifier
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        config = identifier.get("config", {})
    if name not in _QUANTIZERS:
        raise ValueError(
            f"Unknown quantizer. Expected a Quantizer instance or one of "
            f"{sorted(_QUANTIZERS)}. Received: {identifier!r}"
        )
    return _QUANTIZERS[name](**config)
