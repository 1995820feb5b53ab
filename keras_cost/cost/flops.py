"""Forward FLOPs of a Keras 3 model, counted per layer type.

Conventions, applied to one example (batch size 1):

- A multiply-add counts as 2 FLOPs, so a Dense layer with `n` inputs and
  `m` units costs `2 * n * m`, plus `m` for the bias. This matches
  `tf.compat.v1.profiler` for `MatMul`, `Conv2D` and `BiasAdd`.
- Max and average pooling cost one FLOP per window element per output
  element, as in the TensorFlow profiler. Global pooling costs one FLOP per
  input element.
- BatchNormalization at inference costs 2 FLOPs per element, a multiply and
  an add after the statistics are folded into a scale and an offset.
  Rescaling and Normalization cost the same.
- Activations cost a fixed number of FLOPs per element, listed in
  `ACTIVATION_FLOPS`. ReLU counts 1 (a comparison) although the TensorFlow
  profiler counts 0 for `Relu`. Softmax counts 5, as the profiler does.
- Merges of `n` inputs (Add, Multiply, Maximum, Minimum) cost `n - 1` FLOPs
  per output element, Subtract 1 and Average `n`. Concatenate, reshapes,
  padding, cropping, dropout and embedding look-ups cost 0.
- A layer whose type is not listed here is counted through its sublayers
  (nested models, wrappers with a `layer` attribute, custom layers holding
  layers). A layer with no known type and no sublayers is named in a
  warning and listed in the result, and so is any recurrent layer. Neither
  is counted as 0 silently.
"""

import functools
import math
import warnings

import keras
import numpy as np

# FLOPs per element of each activation function, looked up by the
# function's `__name__`. The transcendental ones are estimates: an `exp`
# or `tanh` is counted as one FLOP although hardware spends more on it.
ACTIVATION_FLOPS = {
    "linear": 0,
    "relu": 1,
    "relu6": 2,
    "leaky_relu": 2,
    "elu": 3,
    "selu": 4,
    "sigmoid": 4,
    "hard_sigmoid": 3,
    "tanh": 4,
    "silu": 5,
    "swish": 5,
    "hard_silu": 4,
    "hard_swish": 4,
    "gelu": 8,
    "softplus": 3,
    "softsign": 3,
    "exponential": 1,
    "softmax": 5,
    "log_softmax": 5,
    "mish": 9,
}


def _product(values):
    return int(math.prod(int(v) for v in values))


def _elements(shape):
    return _product(shape)


def _activation_flops(layer, output_elements, uncounted):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return 0
    name = getattr(activation, "__name__", type(activation).__name__)
    if name not in ACTIVATION_FLOPS:
        uncounted.append(f"{layer.name} (activation {name})")
        return 0
    return ACTIVATION_FLOPS[name] * output_elements


def _bias_flops(layer, output_elements):
    return output_elements if getattr(layer, "use_bias", False) else 0


# Each counter takes (layer, input_shapes, output_shapes, uncounted) for
# one call of the layer, with batch size 1, and returns that call's FLOPs.


def _dense_flops(layer, inputs, outputs, uncounted):
    output_elements = _elements(outputs[0])
    fan_in = int(layer.kernel.shape[0])
    matmul = 2 * fan_in * output_elements
    return (
        matmul
        + _bias_flops(layer, output_elements)
        + _activation_flops(layer, output_elements, uncounted)
    )


def _conv_flops(layer, inputs, outputs, uncounted):
    # The kernel is (*window, input_channels / groups, filters), so each
    # output element sums window * input_channels / groups products.
    output_elements = _elements(outputs[0])
    macs_per_output = _product(layer.kernel.shape[:-1])
    return (
        2 * macs_per_output * output_elements
        + _bias_flops(layer, output_elements)
        + _activation_flops(layer, output_elements, uncounted)
    )


def _conv_transpose_flops(layer, inputs, outputs, uncounted):
    # The kernel is (*window, filters, input_channels): every input element
    # is scattered into window * filters outputs.
    output_elements = _elements(outputs[0])
    window_and_filters = _product(layer.kernel.shape[:-1])
    return (
        2 * window_and_filters * _elements(inputs[0])
        + _bias_flops(layer, output_elements)
        + _activation_flops(layer, output_elements, uncounted)
    )


def _depthwise_flops(layer, inputs, outputs, uncounted):
    output_elements = _elements(outputs[0])
    window = _product(layer.kernel.shape[:-2])
    return (
        2 * window * output_elements
        + _bias_flops(layer, output_elements)
        + _activation_flops(layer, output_elements, uncounted)
    )


def _separable_flops(layer, inputs, outputs, uncounted):
    output_elements = _elements(outputs[0])
    depthwise_shape = layer.depthwise_kernel.shape
    window = _product(depthwise_shape[:-2])
    intermediate_channels = int(depthwise_shape[-2]) * int(depthwise_shape[-1])
    filters = int(layer.pointwise_kernel.shape[-1])
    positions = output_elements // filters
    depthwise = 2 * window * intermediate_channels * positions
    pointwise = 2 * intermediate_channels * output_elements
    return (
        depthwise
        + pointwise
        + _bias_flops(layer, output_elements)
        + _activation_flops(layer, output_elements, uncounted)
    )


def _pooling_flops(layer, inputs, outputs, uncounted):
    return _product(layer.pool_size) * _elements(outputs[0])


def _global_pooling_flops(layer, inputs, outputs, uncounted):
    return _elements(inputs[0])


def _per_element(flops_per_element):
    def count(layer, inputs, outputs, uncounted):
        return flops_per_element * _elements(outputs[0])

    return count


def _activation_layer_flops(layer, inputs, outputs, uncounted):
    return _activation_flops(layer, _elements(outputs[0]), uncounted)


def _merge_flops(extra_per_input):
    # Merging n tensors costs (n + extra_per_input) FLOPs per output element.
    def count(layer, inputs, outputs, uncounted):
        return (len(inputs) + extra_per_input) * _elements(outputs[0])

    return count


def _zero_flops(layer, inputs, outputs, uncounted):
    return 0


_LAYER_COUNTERS = {
    keras.layers.Dense: _dense_flops,
    keras.layers.Conv1D: _conv_flops,
    keras.layers.Conv2D: _conv_flops,
    keras.layers.Conv3D: _conv_flops,
    keras.layers.Conv1DTranspose: _conv_transpose_flops,
    keras.layers.Conv2DTranspose: _conv_transpose_flops,
    keras.layers.Conv3DTranspose: _conv_transpose_flops,
    keras.layers.DepthwiseConv1D: _depthwise_flops,
    keras.layers.DepthwiseConv2D: _depthwise_flops,
    keras.layers.SeparableConv1D: _separable_flops,
    keras.layers.SeparableConv2D: _separable_flops,
    keras.layers.MaxPooling1D: _pooling_flops,
    keras.layers.MaxPooling2D: _pooling_flops,
    keras.layers.MaxPooling3D: _pooling_flops,
    keras.layers.AveragePooling1D: _pooling_flops,
    keras.layers.AveragePooling2D: _pooling_flops,
    keras.layers.AveragePooling3D: _pooling_flops,
    keras.layers.GlobalMaxPooling1D: _global_pooling_flops,
    keras.layers.GlobalMaxPooling2D: _global_pooling_flops,
    keras.layers.GlobalMaxPooling3D: _global_pooling_flops,
    keras.layers.GlobalAveragePooling1D: _global_pooling_flops,
    keras.layers.GlobalAveragePooling2D: _global_pooling_flops,
    keras.layers.GlobalAveragePooling3D: _global_pooling_flops,
    keras.layers.BatchNormalization: _per_element(2),
    keras.layers.Rescaling: _per_element(2),
    keras.layers.Normalization: _per_element(2),
    keras.layers.Activation: _activation_layer_flops,
    keras.layers.ReLU: _per_element(1),
    keras.layers.LeakyReLU: _per_element(2),
    keras.layers.PReLU: _per_element(2),
    keras.layers.ELU: _per_element(ACTIVATION_FLOPS["elu"]),
    keras.layers.Softmax: _per_element(ACTIVATION_FLOPS["softmax"]),
    keras.layers.Add: _merge_flops(-1),
    keras.layers.Multiply: _merge_flops(-1),
    keras.layers.Maximum: _merge_flops(-1),
    keras.layers.Minimum: _merge_flops(-1),
    keras.layers.Average: _merge_flops(0),
    keras.layers.Subtract: _per_element(1),
    keras.layers.Concatenate: _zero_flops,
    keras.layers.InputLayer: _zero_flops,
    keras.layers.Flatten: _zero_flops,
    keras.layers.Reshape: _zero_flops,
    keras.layers.Permute: _zero_flops,
    keras.layers.RepeatVector: _zero_flops,
    keras.layers.Identity: _zero_flops,
    keras.layers.Dropout: _zero_flops,
    keras.layers.SpatialDropout1D: _zero_flops,
    keras.layers.SpatialDropout2D: _zero_flops,
    keras.layers.SpatialDropout3D: _zero_flops,
    keras.layers.GaussianNoise: _zero_flops,
    keras.layers.GaussianDropout: _zero_flops,
    keras.layers.ActivityRegularization: _zero_flops,
    keras.layers.ZeroPadding1D: _zero_flops,
    keras.layers.ZeroPadding2D: _zero_flops,
    keras.layers.ZeroPadding3D: _zero_flops,
    keras.layers.Cropping1D: _zero_flops,
    keras.layers.Cropping2D: _zero_flops,
    keras.layers.Cropping3D: _zero_flops,
    keras.layers.Embedding: _zero_flops,
}


def get(layer):
    """Return the FLOP counter for a layer, or `None` for an unknown type.

    The counter of the nearest listed base class is used, so a subclass of
    `keras.layers.Dense` is counted as a Dense layer.

    Args:
        layer: A `keras.layers.Layer`.

    Returns:
        A function `(layer, input_shapes, output_shapes, uncounted) -> int`,
        or `None` when no base class of `layer` is listed.

    Example:

    >>> import keras
    >>> from keras_cost.cost import flops
    >>> flops.get(keras.layers.Dense(3)) is not None
    True
    >>> flops.get(keras.layers.LSTM(3)) is None
    True
    """
    for cls in type(layer).__mro__:
        if cls in _LAYER_COUNTERS:
            return _LAYER_COUNTERS[cls]
    return None


def _sublayers(layer):
    """List the layers that a layer contains, found through public attributes only."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    found = []
    for value in vars(layer).values():
        candidates = value if isinstance(value, (list, tuple)) else [value]
        for candidate in candidates:
            if isinstance(candidate, keras.layers.Layer) and candidate is not layer:
                found.append(candidate)
    return found


def _all_layers(model):
    seen = {}
    pending = [model]
    while pending:
        layer = pending.pop()
        if id(layer) in seen:
            continue
        seen[id(layer)] = layer
        pending.extend(_sublayers(layer))
    return list(seen.values())


def _shapes(structure):
    return [
        tuple(int(d) for d in leaf.shape)
        for leaf in keras.tree.flatten(structure)
        if hasattr(leaf, "shape")
    ]


def _recording_call(layer, calls):
    original = layer.call

    @functools.wraps(original)
    def recording_call(*args, **kwargs):
        outputs = original(*args, **kwargs)
        calls.setdefault(id(layer), []).append((_shapes(args), _shapes(outputs)))
        return outputs

    return recording_call


def _record_calls(model, example_inputs):
    """Run the model once, recording the shapes of every layer call.

    Each layer's `call` is replaced by a recording wrapper on the instance
    for the duration of one forward pass, then the instance attribute is
    removed, so the class method is used again.
    """
    # An unbuilt layer traces `call` symbolically while building, which
    # would record a call twice, so one unrecorded pass builds everything.
    model(example_inputs, training=False)

    calls = {}
    layers = _all_layers(model)
    for layer in layers:
        layer.call = _recording_call(layer, calls)
    try:
        model(example_inputs, training=False)
    finally:
        for layer in layers:
            del layer.call
    return calls


def _example_inputs(model, input_shape):
    if input_shape is None:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError(
                "model_cost cannot determine the input shape of model "
                f"'{model.name}' because it has no symbolic inputs (a "
                "subclassed model, or a Sequential model without "
                "keras.Input). Pass input_shape=(...), the shape of one "
                "example without the batch axis. Received: input_shape=None"
            )
        arrays = [
            np.zeros((1, *tensor.shape[1:]), dtype=tensor.dtype)
            for tensor in inputs
        ]
        return arrays[0] if len(arrays) == 1 else arrays
    if _is_shape(input_shape):
        return np.zeros((1, *input_shape), dtype="float32")
    if isinstance(input_shape, (list, tuple)) and input_shape and all(
        _is_shape(shape) for shape in input_shape
    ):
        return [np.zeros((1, *shape), dtype="float32") for shape in input_shape]
    raise ValueError(
        "input_shape must be the shape of one example without the batch axis, "
        "as a tuple of positive integers such as (8, 8, 1), or a list of such "
        f"tuples for a model with several inputs. Received: input_shape={input_shape!r}"
    )


def _is_shape(value):
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    )


def _type_name(layer):
    return type(layer).__name__


def _count_layer(layer, calls, parent_calls, by_type, uncounted):
    """Add one layer's FLOPs to `by_type`, recursing where its type is unknown."""
    layer_calls = calls.get(id(layer), parent_calls)
    counter = get(layer)
    if counter is not None:
        total = sum(
            counter(layer, inputs, outputs, uncounted)
            for inputs, outputs in layer_calls
        )
        if total:
            by_type[_type_name(layer)] = by_type.get(_type_name(layer), 0) + total
        return

    # A wrapper such as QuantizeWrapper or TimeDistributed calls its inner
    # layer's `call` directly, so the inner layer is costed with the
    # wrapper's shapes.
    inner = getattr(layer, "layer", None)
    if isinstance(inner, keras.layers.Layer):
        _count_layer(inner, calls, layer_calls, by_type, uncounted)
        return

    # Recurrent layers call their cell inside a loop whose trip count the
    # recorded calls do not show, so they are reported rather than guessed.
    children = [] if isinstance(layer, keras.layers.RNN) else _sublayers(layer)
    if children:
        # NOTE: math that a custom layer does itself, besides calling its
        # sublayers, is not counted.
        for child in children:
            _count_layer(child, calls, [], by_type, uncounted)
        return

    label = f"{layer.name} ({_type_name(layer)})"
    if layer_calls and label not in uncounted:
        uncounted.append(label)


def count_flops(model, input_shape=None):
    """Count the forward FLOPs of one example through a Keras model.

    The model runs once on a batch of one all-zero example while every
    layer call's input and output shapes are recorded. The module docstring
    lists the counting conventions.

    Args:
        model: A built `keras.Model`.
        input_shape: Shape of one example without the batch axis, or a list
            of shapes for a model with several inputs. Defaults to `None`,
            which reads the shapes from `model.inputs`.

    Returns:
        A tuple `(total, by_type, uncounted)`: total FLOPs per example, a
        dict from layer class name to FLOPs, and a list naming the layers
        (and activations) whose cost is unknown and left out of the total.

    Raises:
        ValueError: If the input shape is unknown or `input_shape` is
            invalid.

    Example:

    >>> import keras
    >>> from keras_cost.cost.flops import count_flops
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> count_flops(model)
    (27, {'Dense': 27}, [])
    """
    example_inputs = _example_inputs(model, input_shape)
    calls = _record_calls(model, example_inputs)

    by_type = {}
    uncounted = []
    for layer in _sublayers(model):
        _count_layer(layer, calls, [], by_type, uncounted)
    if uncounted:
        warnings.warn(
            f"FLOPs of {len(uncounted)} layer(s) of model '{model.name}' are "
            f"unknown and left out of the total: {', '.join(uncounted)}.",
            stacklevel=2,
        )
    return sum(by_type.values()), by_type, uncounted
