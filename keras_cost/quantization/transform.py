"""`quantize_model`: a copy of a model with every supported layer wrapped for QAT."""

import warnings

import keras

from keras_cost.quantization import batch_norm_fold
from keras_cost.quantization import kernel_ops
from keras_cost.quantization.activation import ActivationQuantizer, QuantizedConcatenate
from keras_cost.quantization.wrapper import QuantizeWrapper

# Layers that only move, select or drop values. The TFLite converter gives
# their int8 outputs the input's scale and zero point, so they need no range.
_PASSTHROUGH_TYPES = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.Identity,
)
_CONSTRAINT_ATTRIBUTES = ("kernel_constraint", "depthwise_constraint", "bias_constraint")


def quantize_model(
    model, num_bits=8, per_channel=False, ema_decay=0.99, fold_batch_norm=True, activation_bits=8
):
    """Return a copy of `model` with every supported layer in a `QuantizeWrapper`.

    Supported layers are Dense, Conv1D, Conv2D and DepthwiseConv2D.

    The copy has new variables holding the same values, so training it leaves
    `model` unchanged. Each copied layer keeps the original layer's kernel and
    bias constraint objects, so a pruning mask stored as a constraint stays
    applied during quantization-aware training. Nested Sequential and
    functional models are handled at any depth. Layers already in a
    `QuantizeWrapper` are copied with their learned ranges.

    With `fold_batch_norm=True`, a BatchNormalization layer applied to the
    output of a Dense, Conv1D, Conv2D or DepthwiseConv2D layer is folded
    into that layer: the copy has one wrapped layer, named like the original
    kernel layer, whose kernel and bias are
    `W * gamma / sqrt(moving_variance + epsilon)` per output channel and
    `beta + (b - moving_mean) * gamma / sqrt(moving_variance + epsilon)`.
    So the int8 model quantizes the kernel that actually runs, and its
    output before quantization equals the original model's inference output
    up to float rounding. Folding uses the frozen moving statistics, the
    usual choice for QAT fine-tuning of a trained model: training the copy
    updates the folded kernel and bias, and no batch statistics are
    computed or updated. A BatchNormalization folds only when the kernel
    layer has no activation, is channels-last, is called once and feeds
    only that BatchNormalization, and the BatchNormalization normalizes the
    last axis and is called once, without a fixed `training` argument.
    Others stay in float, with the reason in the warning described below.

    Pooling, Flatten, Reshape, Dropout, padding and cropping layers stay as
    they are: their int8 outputs share the input's scale. Each Concatenate
    becomes a `QuantizedConcatenate` named `quant_<name>`, because int8
    concatenation needs one scale for all inputs and the output. Wrapped
    layers that feed it get `quantize_output=False`, so only the shared
    range applies. Every other layer that is not wrapped or folded
    (BatchNormalization that cannot fold, Add, Activation, ...) stays in
    float during training, and `export_tflite(..., quantize="int8")`
    calibrates its ranges on `representative_data`. Those layers are named
    in one `UserWarning`.

    Args:
        model: A Keras 3 Sequential or functional model.
        num_bits: Kernel bit width of every new `QuantizeWrapper`, 2 to 8.
            Defaults to `8`.
        per_channel: Whether Conv2D kernels get one range per output
            channel. Dense, Conv1D and DepthwiseConv2D kernels always use one
            range: the TFLite converter of TF 2.21 rejected per-channel
            Dense and Conv1D kernels, and a depthwise kernel spreads its
            output channels over two axes. Defaults to `False`.
        ema_decay: Moving-average decay of the output ranges. Defaults to
            `0.99`.
        fold_batch_norm: Whether to fold each BatchNormalization layer that
            allows it into the Dense or convolution layer before it.
            Defaults to `True`.
        activation_bits: Bit width of the output ranges of the new
            `QuantizeWrapper` and `QuantizedConcatenate` layers, 2 to 8.
            Defaults to `8`, the width of TFLite's int8 activations: with
            `num_bits=4` the weights train at 4 bits while the activations,
            the logits included, keep 8 bits.

    Returns:
        A new model of the same kind (Sequential or functional).

    Raises:
        TypeError: If `model` is not a Keras 3 model.
        ValueError: If the model or a nested model is subclassed, or if it
            contains no supported layer.

    Example:

    >>> import keras
    >>> from keras_cost.quantization import quantize_model
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> qat_model = quantize_model(model)
    >>> [type(layer).__name__ for layer in qat_model.layers]
    ['QuantizeWrapper']
    """
    _check_model(model)
    # Validation happens here so that a bad value fails before any cloning.
    QuantizeWrapper(
        keras.layers.Dense(1),
        num_bits=num_bits,
        per_channel=False,
        ema_decay=ema_decay,
        activation_bits=activation_bits,
    )
    if not isinstance(per_channel, bool):
        raise ValueError(
            f"`per_channel` must be True or False. Received: per_channel={per_channel!r}"
        )
    if not isinstance(fold_batch_norm, bool):
        raise ValueError(
            "`fold_batch_norm` must be True or False. "
            f"Received: fold_batch_norm={fold_batch_norm!r}"
        )

    settings = {
        "num_bits": num_bits,
        "per_channel": per_channel,
        "ema_decay": ema_decay,
        "activation_bits": activation_bits,
    }
    report = {"wrapped": [], "float": []}
    quantized = _clone(model, settings, report, fold_batch_norm)

    if not report["wrapped"]:
        supported = ", ".join(kernel_ops.supported_layer_names())
        raise ValueError(
            f"Model '{model.name}' has no layer that quantize_model can wrap "
            f"(supported: {supported}), so quantization-aware training would change nothing."
        )
    if report["float"]:
        warnings.warn(
            f"quantize_model left these layers in float during training: "
            f"{', '.join(report['float'])}. export_tflite(..., quantize='int8') "
            "calibrates their int8 ranges on representative_data.",
            stacklevel=2,
        )
    return quantized


def _check_model(model):
    if not isinstance(model, keras.Model):
        module = type(model).__module__
        if module.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras")):
            raise TypeError(
                f"quantize_model received a Keras 2 (tf_keras) object of type "
                f"{type(model).__name__}. keras-cost needs a Keras 3 model: build it with "
                "`import keras` (Keras 3), not `tf_keras` or `tf.keras` under "
                "TF_USE_LEGACY_KERAS=1."
            )
        raise TypeError(
            f"quantize_model needs a Keras 3 Sequential or functional model. "
            f"Received: model of type {type(model).__name__}"
        )
    if not _is_graph_model(model):
        raise ValueError(
            f"quantize_model cannot copy the subclassed model '{model.name}' "
            f"({type(model).__name__}), because its call() is Python code. Wrap its "
            "Dense and convolution layers in keras_cost.quantization.QuantizeWrapper inside "
            "the model's __init__ instead, or rebuild it as a functional model."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"Model '{model.name}' has no known inputs. Start a Sequential model with "
            "keras.Input(shape) or call it on data once before quantize_model."
        )


def _is_graph_model(model):
    # keras.Model(inputs, outputs) returns an instance of the Functional
    # class, which Keras does not export under a public name.
    return any(cls.__name__ in ("Functional", "Sequential") for cls in type(model).__mro__)


def _clone(model, settings, report, fold_batch_norm, outputs_feed_concatenate=False):
    pairs = []
    concatenated = _concatenate_producers(model, outputs_feed_concatenate)
    plan = batch_norm_fold.plan_folds(model) if fold_batch_norm else batch_norm_fold.FoldPlan()
    folded_away = plan.folded_batch_norms()

    def clone_layer(layer):
        if id(layer) in folded_away:
            # The functional graph still visits a folded BatchNormalization;
            # skip_folded makes the call return its input unchanged.
            return _FOLDED
        batch_norm = plan.folds.get(layer.name)
        # A folded kernel layer feeds a Concatenate when its
        # BatchNormalization did.
        feeds_concatenate = layer.name in concatenated or (
            batch_norm is not None and batch_norm.name in concatenated
        )
        new_layer = _clone_layer(
            layer,
            settings,
            report,
            fold_batch_norm,
            feeds_concatenate=feeds_concatenate,
            batch_norm=batch_norm,
            fold_blocked_by=plan.blocked.get(layer.name),
        )
        pairs.append((layer, new_layer))
        return new_layer

    if isinstance(model, keras.Sequential):
        clone = _clone_sequential(model, clone_layer, folded_away)
    else:

        def skip_folded(layer, *args, **kwargs):
            if layer is _FOLDED:
                return args[0] if args else kwargs["inputs"]
            return layer(*args, **kwargs)

        clone = keras.models.clone_model(
            model, clone_function=clone_layer, call_function=skip_folded
        )
    for layer, new_layer in pairs:
        if isinstance(new_layer, keras.Model) or not layer.weights:
            # A nested clone already contains copied weights, and a layer
            # without weights (such as a replaced Concatenate) has none.
            continue
        target = new_layer.layer if _is_new_wrapper(layer, new_layer) else new_layer
        if layer.name in plan.folds:
            target.set_weights(batch_norm_fold.fold_weights(layer, plan.folds[layer.name]))
        else:
            target.set_weights(layer.get_weights())
    return clone


# Stands in for a folded BatchNormalization while a functional model is
# cloned. It is never called, so it does not appear in the copy.
_FOLDED = object()


def _clone_sequential(model, clone_layer, folded_away):
    """Copy a Sequential model as `keras.models.clone_model` does, without folded layers."""
    # The first entry of a built Sequential model's config is its InputLayer.
    input_layer = keras.layers.deserialize(model.get_config()["layers"][0])
    copies = {}
    new_layers = []
    for layer in model.layers:
        if id(layer) in folded_away:
            continue
        if id(layer) not in copies:
            copies[id(layer)] = clone_layer(layer)
        new_layers.append(copies[id(layer)])
    clone = keras.Sequential([input_layer] + new_layers, name=model.name, trainable=model.trainable)
    if model.compiled:
        clone.compile_from_config(model.get_compile_config())
    return clone


def _concatenate_producers(model, outputs_feed_concatenate=False):
    """Return the names of the layers whose output reaches a Concatenate.

    The output may pass through layers that keep the int8 scale (pooling,
    Flatten, Reshape, ...) on its way. With `outputs_feed_concatenate` the
    model's own outputs count as Concatenate inputs: this is how the last
    layer of a nested model that feeds a Concatenate is found.
    """
    links = _graph_links(model)
    if links is None:
        return set()
    inputs_of, output_names = links
    pending = [
        producer
        for name, producers in inputs_of.items()
        if type(model.get_layer(name)) is keras.layers.Concatenate
        for producer in producers
    ]
    if outputs_feed_concatenate:
        pending.extend(output_names)

    names = set()
    while pending:
        name = pending.pop()
        if name in names:
            continue
        names.add(name)
        layer = model.get_layer(name)
        if isinstance(layer, _PASSTHROUGH_TYPES) and not isinstance(layer, keras.layers.InputLayer):
            # The scale passes through unchanged, so the layer that produced
            # this layer's input must use the shared range too.
            pending.extend(inputs_of.get(name, []))
    return names


def _graph_links(model):
    """Return `({layer name: names of the layers it reads}, output layer names)`.

    Functional graphs are read from `get_config()`, which names the layer
    behind each input of each call, also for nested models. Returns `None`
    for a functional subclass whose `get_config` hides its graph.
    """
    if isinstance(model, keras.Sequential):
        layers = model.layers
        inputs_of = {later.name: [earlier.name] for earlier, later in zip(layers, layers[1:])}
        return inputs_of, [layers[-1].name] if layers else []
    config = model.get_config()
    if "layers" not in config:
        return None
    inputs_of = {
        layer_config["name"]: [
            history[0]
            for node in layer_config.get("inbound_nodes", [])
            for history in batch_norm_fold.keras_histories(node)
        ]
        for layer_config in config["layers"]
    }
    outputs = config.get("output_layers", [])
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    return inputs_of, [output[0] for output in outputs]


def _clone_layer(
    layer,
    settings,
    report,
    fold_batch_norm,
    feeds_concatenate=False,
    batch_norm=None,
    fold_blocked_by=None,
):
    """Copy one layer, wrapping it or folding `batch_norm` into it where that applies.

    `fold_blocked_by` is the reason a BatchNormalization `layer` cannot fold,
    which the report of float layers then gives.
    """
    if isinstance(layer, keras.Model):
        _check_model(layer)
        return _clone(
            layer, settings, report, fold_batch_norm, outputs_feed_concatenate=feeds_concatenate
        )

    if batch_norm is not None:
        copy = type(layer).from_config(batch_norm_fold.folded_config(layer))
    else:
        copy = type(layer).from_config(layer.get_config())
    _share_constraints(layer, copy)

    if type(layer) is keras.layers.Concatenate:
        # An int8 concatenation has one scale for all inputs and the output.
        return QuantizedConcatenate(
            axis=layer.axis,
            num_bits=settings["activation_bits"],
            ema_decay=settings["ema_decay"],
            name=f"quant_{layer.name}",
        )
    kernel_op = kernel_ops.get(layer)
    if kernel_op is not None:
        report["wrapped"].append(layer.name)
        per_channel = settings["per_channel"] and kernel_op.supports_per_channel
        # A Concatenate input takes the shared range of the
        # QuantizedConcatenate; a range of its own would conflict with it.
        return QuantizeWrapper(
            copy,
            **{**settings, "per_channel": per_channel},
            quantize_output=not feeds_concatenate,
        )
    if isinstance(layer, QuantizeWrapper):
        report["wrapped"].append(layer.name)
    elif fold_blocked_by is not None:
        report["float"].append(f"{layer.name} (not folded: {fold_blocked_by})")
    elif not isinstance(layer, _PASSTHROUGH_TYPES + (ActivationQuantizer, QuantizedConcatenate)):
        report["float"].append(layer.name)
    return copy


def _share_constraints(layer, copy):
    if isinstance(layer, QuantizeWrapper):
        layer, copy = layer.layer, copy.layer
    for attribute in _CONSTRAINT_ATTRIBUTES:
        if hasattr(layer, attribute):
            # The same object, not a copy from config, so that a mask held by
            # the constraint keeps applying to the copied kernel.
            setattr(copy, attribute, getattr(layer, attribute))


def _is_new_wrapper(layer, new_layer):
    return isinstance(new_layer, QuantizeWrapper) and not isinstance(layer, QuantizeWrapper)
