"""`quantize_weights`: post-training weight quantization with any quantizer."""

import keras

from keras_cost.quantization import quantizers


def quantize_weights(model, quantizer):
    """Return a copy of `model` whose Dense and convolution kernels are quantized.

    Every layer with a `kernel` variable gets it replaced by
    `quantizer.dequantize(*quantizer.quantize(kernel))`, so the copy runs in
    float with the values the quantizer can represent. Biases and other
    weights are copied unchanged. This evaluates a quantizer (for example a
    non-linear one that TFLite cannot run) without training.

    Args:
        model: A Keras 3 Sequential or functional model.
        quantizer: A `Quantizer` instance, name or config accepted by
            `keras_cost.quantization.quantizers.get`.

    Returns:
        A new model of the same kind with copied, quantized weights.

    Raises:
        ValueError: If the quantizer is unknown or `model` has no kernel.
        TypeError: If `model` is not a Keras 3 model.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_cost.quantization import quantize_weights
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> clustered = quantize_weights(model, "kmeans")
    >>> len(np.unique(clustered.layers[0].kernel.numpy())) <= 6
    True
    """
    quantizer = quantizers.get(quantizer)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"quantize_weights needs a Keras 3 model. Received: {type(model).__name__}"
        )
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())

    kernels = [layer.kernel for layer in _layers(copy) if _has_kernel(layer)]
    if not kernels:
        raise ValueError(
            f"Model '{model.name}' has no layer with a `kernel` weight, so "
            "quantize_weights would change nothing."
        )
    for kernel in kernels:
        codes, params = quantizer.quantize(kernel)
        kernel.assign(quantizer.dequantize(codes, params))
    return copy


def _layers(model):
    # Nested models are walked so that their kernels are quantized too.
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _has_kernel(layer):
    return isinstance(getattr(layer, "kernel", None), keras.Variable)
