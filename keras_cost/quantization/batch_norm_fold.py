"""Folding of BatchNormalization into the Dense or convolution layer that feeds it.

At inference a BatchNormalization layer computes, per channel `c`,
`y = gamma_c * (x - mean_c) / sqrt(var_c + epsilon) + beta_c` with its moving
statistics. When `x` is the linear output `conv(W) + b` of a kernel layer, the
pair equals one kernel layer with

    W'[..., c] = W[..., c] * s_c
    b'_c = beta_c + (b_c - mean_c) * s_c,   where s_c = gamma_c / sqrt(var_c + epsilon).

`gamma` is 1 when the layer has `scale=False`, and `beta` is 0 when it has
`center=False`.

References:
    Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018, which folds
    batch normalization into the preceding convolution for quantized training.
"""

import collections

import keras
import numpy as np

from keras_cost.quantization import kernel_ops
from keras_cost.quantization.wrapper import QuantizeWrapper


class FoldPlan:
    """The BatchNormalization layers of one model that fold, and those that cannot.

    Attributes:
        folds: Dict from the name of a kernel layer to the
            `BatchNormalization` layer that folds into it.
        blocked: Dict from the name of each `BatchNormalization` layer that
            follows a Dense or convolution layer but cannot fold to the
            reason, as a phrase.
    """

    def __init__(self):
        self.folds = {}
        self.blocked = {}

    def folded_batch_norms(self):
        """Return the ids of the `BatchNormalization` layers that fold away."""
        return {id(batch_norm) for batch_norm in self.folds.values()}


def plan_folds(model):
    """Find each BatchNormalization in `model` that can fold into its input layer.

    A BatchNormalization layer folds when all of these hold:

    - its input is the output of a Dense, Conv1D, Conv2D or DepthwiseConv2D
      layer (exactly that class, not a subclass or a `QuantizeWrapper`) with
      no activation and, for a convolution, `data_format="channels_last"`;
    - it normalizes the last (channel) axis;
    - the BatchNormalization and the kernel layer are each called once in
      `model`, the BatchNormalization without a fixed `training` argument,
      and the kernel layer's output feeds nothing else and is not a model
      output.

    Nested models are not searched, because `quantize_model` plans each one on its own.

    Args:
        model: A built Sequential or functional Keras model.

    Returns:
        A `FoldPlan`.
    """
    if isinstance(model, keras.Sequential):
        links = _sequential_links(model)
    else:
        links = _functional_links(model)

    plan = FoldPlan()
    for link in links:
        reason = _blocking_reason(link)
        if reason is None:
            plan.folds[link.producer.name] = link.batch_norm
        else:
            plan.blocked[link.batch_norm.name] = reason
    return plan


# One BatchNormalization layer whose input comes from a kernel layer, with
# the graph facts that decide whether it folds.
_Link = collections.namedtuple(
    "_Link",
    ["producer", "batch_norm", "producer_calls", "batch_norm_calls", "producer_uses", "training"],
    defaults=[None],
)


def _sequential_links(model):
    layers = model.layers
    calls = collections.Counter(id(layer) for layer in layers)
    links = []
    for producer, layer in zip(layers[:-1], layers[1:]):
        if _is_batch_norm(layer) and _is_candidate(producer):
            # In a Sequential model each output feeds only the next layer.
            links.append(_Link(producer, layer, calls[id(producer)], calls[id(layer)], 1))
    return links


def _functional_links(model):
    config = model.get_config()
    layer_configs = config.get("layers")
    if layer_configs is None:
        # A Functional subclass with its own get_config hides its graph, so
        # nothing in it folds.
        return []

    calls = {}
    uses = collections.Counter()
    inputs_of = {}
    training = {}
    for layer_config in layer_configs:
        name = layer_config["name"]
        nodes = layer_config.get("inbound_nodes", [])
        calls[name] = len(nodes)
        histories = [history for node in nodes for history in keras_histories(node)]
        inputs_of[name] = histories
        uses.update(tuple(history) for history in histories)
        if nodes:
            training[name] = nodes[0].get("kwargs", {}).get("training")
    outputs = config.get("output_layers", [])
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    uses.update(tuple(output) for output in outputs)

    links = []
    for name, histories in inputs_of.items():
        layer = model.get_layer(name)
        if not _is_batch_norm(layer):
            continue
        for producer_name, node_index, tensor_index in histories:
            producer = model.get_layer(producer_name)
            if _is_candidate(producer):
                producer_uses = uses[(producer_name, node_index, tensor_index)]
                links.append(
                    _Link(
                        producer,
                        layer,
                        calls[producer_name],
                        calls[name],
                        producer_uses,
                        training[name],
                    )
                )
                # One link per BatchNormalization: a second input can only
                # come from a second call, which blocks folding anyway.
                break
    return links


def keras_histories(value):
    """Yield the `[layer_name, node_index, tensor_index]` of each tensor in a node config."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value["config"]["keras_history"]
            return
        for item in value.values():
            yield from keras_histories(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from keras_histories(item)


def _is_batch_norm(layer):
    return type(layer) is keras.layers.BatchNormalization


def _is_candidate(layer):
    # A QuantizeWrapper is matched too, so that the report gives the reason
    # its BatchNormalization stays in float.
    return kernel_ops.get(layer) is not None or isinstance(layer, QuantizeWrapper)


def _blocking_reason(link):
    producer, batch_norm = link.producer, link.batch_norm
    if kernel_ops.get(producer) is None:
        return f"'{producer.name}' is already a QuantizeWrapper"
    if link.batch_norm_calls != 1:
        return "it is called more than once"
    if link.training is not None:
        # Folding applies the moving statistics, which a call with a fixed
        # `training` argument may not use.
        return f"it is called with training={link.training!r}"
    if link.producer_calls != 1:
        return f"'{producer.name}' is called more than once"
    if link.producer_uses != 1:
        return f"the output of '{producer.name}' also feeds another layer or is a model output"
    activation = keras.activations.serialize(producer.activation)
    if activation != "linear":
        return f"'{producer.name}' applies activation {activation!r} before it"
    if getattr(producer, "data_format", "channels_last") != "channels_last":
        return f"'{producer.name}' uses data_format={producer.data_format!r}"
    rank = len(batch_norm.get_build_config()["input_shape"])
    if batch_norm.axis % rank != rank - 1:
        return f"it normalizes axis {batch_norm.axis}, not the channel axis -1"
    return None


def folded_config(layer):
    """Return the config of `layer` with a bias, which the folded layer needs."""
    config = layer.get_config()
    if not config["use_bias"]:
        config["use_bias"] = True
        config["bias_initializer"] = "zeros"
    return config


def fold_weights(layer, batch_norm):
    """Compute the kernel and bias of `layer` with `batch_norm` folded in.

    The computation runs in float64 from the layers' current values, which
    are not changed.

    Args:
        layer: A Dense, Conv1D, Conv2D or DepthwiseConv2D layer with no
            activation.
        batch_norm: The `BatchNormalization` layer applied to its output,
            normalizing the last axis.

    Returns:
        A `[kernel, bias]` list of numpy arrays in the dtype of `layer`'s
        kernel, ready for `set_weights` on a copy of `layer` built with
        `folded_config(layer)`.
    """
    kernel_op = kernel_ops.get(layer)
    kernel_variable = getattr(layer, kernel_op.kernel_attribute)
    kernel = kernel_variable.numpy().astype("float64")
    channels = batch_norm.moving_mean.numpy().shape[0]
    if layer.use_bias:
        bias = layer.bias.numpy().astype("float64")
    else:
        bias = np.zeros(channels)

    mean = batch_norm.moving_mean.numpy().astype("float64")
    variance = batch_norm.moving_variance.numpy().astype("float64")
    gamma = _optional_vector(batch_norm.gamma if batch_norm.scale else None, 1.0, channels)
    beta = _optional_vector(batch_norm.beta if batch_norm.center else None, 0.0, channels)
    factor = gamma / np.sqrt(variance + batch_norm.epsilon)

    if isinstance(kernel_op, kernel_ops.DepthwiseConvOp):
        # Output channel i * depth_multiplier + m comes from kernel[..., i, m].
        kernel = kernel * factor.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * factor
    bias = beta + (bias - mean) * factor

    dtype = keras.backend.standardize_dtype(kernel_variable.dtype)
    return [kernel.astype(dtype), bias.astype(dtype)]


def _optional_vector(variable, default, channels):
    if variable is None:
        return np.full(channels, default)
    return variable.numpy().astype("float64")
