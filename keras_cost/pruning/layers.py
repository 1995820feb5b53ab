"""Registry of prunable layer types and the search for their kernels at any depth."""

import dataclasses

import keras

# Each prunable layer type maps the attribute of a kernel variable to the
# constructor argument of its constraint, so that `get_config` saves the mask.
_PRUNABLE = {
    keras.layers.Dense: {"kernel": "kernel_constraint"},
    keras.layers.Conv1D: {"kernel": "kernel_constraint"},
    keras.layers.Conv2D: {"kernel": "kernel_constraint"},
    keras.layers.Conv3D: {"kernel": "kernel_constraint"},
    keras.layers.Conv1DTranspose: {"kernel": "kernel_constraint"},
    keras.layers.Conv2DTranspose: {"kernel": "kernel_constraint"},
    keras.layers.Conv3DTranspose: {"kernel": "kernel_constraint"},
    keras.layers.DepthwiseConv1D: {"kernel": "depthwise_constraint"},
    keras.layers.DepthwiseConv2D: {"kernel": "depthwise_constraint"},
    keras.layers.SeparableConv1D: {
        "depthwise_kernel": "depthwise_constraint",
        "pointwise_kernel": "pointwise_constraint",
    },
    keras.layers.SeparableConv2D: {
        "depthwise_kernel": "depthwise_constraint",
        "pointwise_kernel": "pointwise_constraint",
    },
}

_KERAS_2_MODULES = ("tf_keras", "tensorflow.python.keras", "keras.engine")


def register_prunable_layer(layer_class, kernels):
    """Let `PruneCallback` prune the kernels of another layer type.

    Args:
        layer_class: A `keras.layers.Layer` subclass. Subclasses of it are
            prunable too.
        kernels: Dict from the attribute name of each kernel variable to the
            attribute and constructor argument that stores its constraint
            (so the mask is saved with the layer config), e.g.
            `{"embeddings": "embeddings_constraint"}`.

    Returns:
        None. The registration is global and lasts until the process ends,
        and a later call for the same `layer_class` replaces its `kernels`.

    Raises:
        TypeError: If `layer_class` is not a Keras 3 layer class or `kernels`
            is not a non-empty dict of strings.

    Example:

    >>> class TokenEmbedding(keras.layers.Embedding):
    ...     pass
    >>> register_prunable_layer(
    ...     TokenEmbedding, {"embeddings": "embeddings_constraint"}
    ... )
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            "`layer_class` must be a keras.layers.Layer subclass. "
            f"Received: layer_class={layer_class!r}"
        )
    valid = isinstance(kernels, dict) and kernels and all(
        isinstance(key, str) and isinstance(value, str)
        for key, value in kernels.items()
    )
    if not valid:
        raise TypeError(
            "`kernels` must be a non-empty dict from kernel attribute to "
            "constraint attribute, e.g. {'kernel': 'kernel_constraint'}. "
            f"Received: kernels={kernels!r}"
        )
    _PRUNABLE[layer_class] = dict(kernels)


def prunable_type_names():
    """Return the names of the prunable layer types, for error messages."""
    return ", ".join(cls.__name__ for cls in _PRUNABLE)


def kernel_attributes(layer):
    """Return `{kernel attribute: constraint attribute}` for a layer, or None."""
    for cls in type(layer).__mro__:
        if cls in _PRUNABLE:
            return _PRUNABLE[cls]
    return None


def is_keras_2_object(obj):
    """Return True if `obj` comes from Keras 2 (`tf_keras` or `tf.keras` 2.x)."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith(_KERAS_2_MODULES):
            return True
    return False


def check_keras_3_model(model, name="model"):
    """Raise a clear error unless `model` is a Keras 3 layer or model."""
    if is_keras_2_object(model):
        raise TypeError(
            f"`{name}` is a Keras 2 (`tf_keras`) object of type "
            f"{type(model).__module__}.{type(model).__name__}, but keras-cost "
            "needs a Keras 3 model (`import keras` with keras>=3). Rebuild "
            "the model with Keras 3 layers, for example by loading its "
            "weights into the same architecture built with `keras.layers`. "
            f"Received: {name}={type(model).__name__}"
        )
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"`{name}` must be a Keras 3 `keras.Model` or layer. "
            f"Received: {name}={model!r} of type {type(model).__name__}"
        )


@dataclasses.dataclass(frozen=True)
class PrunableKernel:
    """One kernel variable of a prunable layer.

    Attributes:
        name: Unique path, layer names from the outer model down plus the
            kernel attribute, e.g. `"encoder/dense_1/kernel"`.
        layer: The layer that owns the kernel.
        attribute: Attribute of the kernel variable on the layer.
        constraint_attribute: Attribute holding the kernel's constraint.
    """

    name: str
    layer: keras.layers.Layer
    attribute: str
    constraint_attribute: str

    @property
    def variable(self):
        return getattr(self.layer, self.attribute)


def _child_layers(layer):
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    # Wrappers and custom layers hold their sub-layers as attributes.
    children = []
    for value in vars(layer).values():
        if isinstance(value, keras.layers.Layer):
            children.append(value)
        elif isinstance(value, (list, tuple)):
            children.extend(v for v in value if isinstance(v, keras.layers.Layer))
        elif isinstance(value, dict):
            children.extend(
                v for v in value.values() if isinstance(v, keras.layers.Layer)
            )
    return children


def walk_layers(model):
    """Yield `(path, layer)` for every layer inside `model`, depth first.

    Nested functional and Sequential models, subclassed models and layers
    that hold other layers as attributes (such as wrappers) are all entered.
    A layer shared between several places is yielded once.
    """
    seen = {id(model)}
    stack = [(model.name, child) for child in reversed(_child_layers(model))]
    while stack:
        prefix, layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        path = layer.name if prefix == model.name else f"{prefix}/{layer.name}"
        yield path, layer
        for child in reversed(_child_layers(layer)):
            stack.append((path, child))


def find_kernels(model, layers=None):
    """Return the prunable kernels of `model` as a list of `PrunableKernel`.

    Args:
        model: A built Keras 3 model.
        layers: `None` for every prunable layer, a list of layer names (or
            paths such as `"encoder/dense"`), or a predicate
            `layer -> bool` called on each prunable layer. A named layer
            that is not prunable is an error.

    Raises:
        TypeError: If `model` is not a Keras 3 model.
        ValueError: If a named layer is missing or cannot be pruned, or the
            model contains no prunable layer.
    """
    check_keras_3_model(model)
    names = None
    if layers is not None and not callable(layers):
        names = set(layers)

    kernels = []
    found = set()
    for path, layer in walk_layers(model):
        selected = _is_selected(layer, path, layers, names)
        if selected and names is not None:
            found.update({layer.name, path} & names)
        if not selected:
            continue
        attributes = kernel_attributes(layer)
        if attributes is None:
            raise ValueError(_not_prunable_message(layer))
        for attribute, constraint_attribute in attributes.items():
            kernels.append(
                PrunableKernel(f"{path}/{attribute}", layer, attribute, constraint_attribute)
            )

    if names is not None and names - found:
        raise ValueError(
            f"No layer named {sorted(names - found)} in model {model.name!r}. "
            f"Layers found: {[path for path, _ in walk_layers(model)]}. "
            f"Received: layers={sorted(names)}"
        )
    if not kernels:
        raise ValueError(
            f"Model {model.name!r} has no prunable layer (looked for "
            f"{prunable_type_names()}, at any depth). Add such a layer, or "
            "register a custom layer type with "
            "keras_cost.pruning.register_prunable_layer."
        )
    return kernels


def _is_selected(layer, path, layers, names):
    if layers is None:
        return kernel_attributes(layer) is not None
    if names is not None:
        return layer.name in names or path in names
    # A predicate chooses among the prunable layers only.
    return kernel_attributes(layer) is not None and bool(layers(layer))


def _not_prunable_message(layer):
    return (
        f"Layer {layer.name!r} of type {type(layer).__name__} cannot be pruned: "
        f"prunable types are {prunable_type_names()}. To prune it, register "
        "its type with keras_cost.pruning.register_prunable_layer("
        f"{type(layer).__name__}, {{'<kernel attribute>': "
        "'<constraint attribute>'}), or leave it out of `layers`."
    )
