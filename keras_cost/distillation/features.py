"""Extract intermediate features and map student features to the teacher's."""

import keras


def validate_feature_pairs(features):
    """Return `features` as a list of `(teacher_layer, student_layer)` tuples.

    Raises:
        ValueError: If `features` is not a list of pairs of layer names.
    """
    if features is None:
        return []
    if isinstance(features, (str, bytes)) or not isinstance(features, (list, tuple)):
        raise ValueError(
            "`features` must be a list of (teacher_layer, student_layer) "
            'name pairs, such as [("teacher_dense", "student_dense")]. '
            f"Received: features={features!r}"
        )
    pairs = []
    for pair in features:
        is_pair = isinstance(pair, (list, tuple)) and len(pair) == 2
        if not is_pair or not all(isinstance(name, str) for name in pair):
            raise ValueError(
                "Each entry of `features` must be a (teacher_layer, "
                "student_layer) pair of layer names. "
                f"Received: entry={pair!r} in features={features!r}"
            )
        pairs.append((pair[0], pair[1]))
    return pairs


def symbolic_outputs(model):
    """Return the flat list of a model's symbolic outputs, or `None`.

    Subclassed models and `Sequential` models built without an `Input` have
    no symbolic outputs until they are called, so `None` is returned.
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    return keras.tree.flatten(outputs)


def find_layer(model, layer_name, role):
    """Return the layer called `layer_name` in `model`.

    Raises:
        ValueError: If no layer of `model` has that name; the message lists
            the layer names that exist.
    """
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ValueError(
            f"The {role} model '{model.name}' has no layer named "
            f"'{layer_name}'. Its layers are: {names}. Pass one of these "
            "names in `features`."
        )
    return model.get_layer(layer_name)


def build_extractor(model, layer_names, role):
    """Build a functional model returning the flat outputs, then the features.

    The extractor shares its layers and weights with `model`, so one forward
    pass yields both the final outputs and the requested layer outputs.

    Args:
        model: A functional or `Sequential` Keras model with symbolic inputs.
        layer_names: Names of the layers whose outputs are returned after the
            model's outputs.
        role: `"teacher"` or `"student"`, used in error messages.

    Returns:
        A `keras.Model` whose outputs are a flat list: the model's outputs
        in `keras.tree.flatten` order, followed by one tensor per layer name.

    Raises:
        ValueError: If `model` has no symbolic inputs or a name is unknown.
    """
    outputs = symbolic_outputs(model)
    if outputs is None:
        raise ValueError(
            f"Feature distillation needs the {role} model '{model.name}' to "
            "be a functional or Sequential model with an `Input`, so that "
            "its layer outputs can be read. Received a model of type "
            f"{type(model).__name__} with no symbolic outputs."
        )
    feature_outputs = [find_layer(model, name, role).output for name in layer_names]
    return keras.Model(
        inputs=model.inputs,
        outputs=outputs + feature_outputs,
        name=f"{model.name}_feature_extractor",
    )


def make_adapter(student_shape, teacher_shape, name):
    """Return a layer mapping a student feature onto the teacher's shape.

    Matching shapes need no adapter, so `keras.layers.Identity` is returned.
    When only the last axis (units or channels) differs, the adapter is a
    `Dense` layer on that axis, which on images is a 1×1 convolution
    (the FitNets regressor).

    Args:
        student_shape: Shape of the student feature, batch axis included.
        teacher_shape: Shape of the teacher feature, batch axis included.
        name: Name of the adapter layer.

    Returns:
        A built Keras layer.

    Raises:
        ValueError: If the shapes differ in an axis other than the last.
    """
    student_shape = tuple(student_shape)
    teacher_shape = tuple(teacher_shape)
    if student_shape == teacher_shape:
        adapter = keras.layers.Identity(name=name)
    elif student_shape[:-1] == teacher_shape[:-1]:
        adapter = keras.layers.Dense(teacher_shape[-1], name=name)
    else:
        raise ValueError(
            f"Cannot map the student feature of shape {student_shape} onto "
            f"the teacher feature of shape {teacher_shape} for adapter "
            f"'{name}': an adapter only changes the last axis (units or "
            "channels). Pick layers whose other axes (for example the "
            "spatial size) match."
        )
    adapter.build(student_shape)
    return adapter
