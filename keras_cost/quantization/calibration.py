"""Check representative data against a model's inputs before the TFLite converter runs."""

import numpy as np
import tensorflow as tf


def calibration_batches(model, data):
    """Return `data` as a list of batches, each a list of arrays in `model.inputs` order.

    Args:
        model: A Keras model with known inputs.
        data: An array (single-input models), a dict of arrays keyed by input
            name, or a `tf.data.Dataset` of batches of either, or of
            `(inputs, targets)` pairs.

    Returns:
        A non-empty list of batches. Each batch is a list with one array per
        model input, cast to that input's dtype.

    Raises:
        ValueError: If the data does not match the model's inputs in
            structure, names, dtype, rank, batch axis or shape, is empty, or
            contains NaN or infinity.
    """
    if isinstance(data, tf.data.Dataset):
        batches = [_batch_from_element(element) for element in data.as_numpy_iterator()]
    else:
        batches = [data]
    if not batches:
        raise ValueError(
            "`representative_data` is an empty dataset. Pass a few hundred typical "
            "inputs, for example representative_data=x_train[:256]."
        )
    return [_check_batch(model, batch) for batch in batches]


def as_representative_dataset(model, batches):
    """Wrap checked batches as the generator function the TFLite converter calls.

    The converter calibrates on one example at a time. Each example is a dict
    keyed by signature input name: a list would be matched to the inputs in
    an order the converter chooses, which need not be `model.inputs` order.
    """
    names = [tensor.name for tensor in model.inputs]

    def representative_dataset():
        for batch in batches:
            for index in range(len(batch[0])):
                yield {name: array[index : index + 1] for name, array in zip(names, batch)}

    return representative_dataset


def _batch_from_element(element):
    # A dataset built for `fit` yields (inputs, targets) or
    # (inputs, targets, sample_weights); only the inputs calibrate.
    if isinstance(element, tuple) and len(element) in (2, 3):
        return element[0]
    return element


def _check_batch(model, batch):
    names = [tensor.name for tensor in model.inputs]
    if isinstance(batch, dict):
        arrays = _arrays_from_dict(names, batch)
    elif isinstance(batch, (list, tuple)):
        raise ValueError(
            "`representative_data` must be an array for a single-input model or a dict "
            f"keyed by input name ({', '.join(names)}), so that no input can be fed to "
            f"the wrong tensor. Received: a {type(batch).__name__} of {len(batch)} items"
        )
    elif len(names) > 1:
        raise ValueError(
            f"The model has {len(names)} inputs ({', '.join(names)}), so "
            "`representative_data` must be a dict keyed by input name. "
            f"Received: one array of shape {np.shape(batch)}"
        )
    else:
        arrays = [batch]

    checked = [
        _check_array(name, tensor, np.asarray(array))
        for name, tensor, array in zip(names, model.inputs, arrays)
    ]
    sizes = {len(array) for array in checked}
    if len(sizes) > 1:
        shapes = ", ".join(f"{name}: {array.shape}" for name, array in zip(names, checked))
        raise ValueError(
            "All inputs in `representative_data` must have the same number of examples "
            f"along the batch axis. Received shapes {shapes}"
        )
    return checked


def _arrays_from_dict(names, batch):
    missing = [name for name in names if name not in batch]
    unknown = [key for key in batch if key not in names]
    if missing or unknown:
        raise ValueError(
            f"The keys of `representative_data` must be the model's input names "
            f"{names}. Missing: {missing}. Unknown: {unknown}. "
            f"Received keys: {list(batch)}"
        )
    return [batch[name] for name in names]


def _check_array(name, tensor, array):
    expected_shape = tuple(tensor.shape)
    expected_dtype = np.dtype(tensor.dtype)

    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`representative_data` for input '{name}' must be numeric. "
            f"Received: dtype={array.dtype}"
        )
    if expected_dtype.kind == "f" and array.dtype.kind in "biu":
        raise ValueError(
            f"`representative_data` for input '{name}' has dtype {array.dtype} but the "
            f"input is {expected_dtype}. Convert it exactly as the training data was "
            f"converted (for int16 audio, for example, x.astype('float32') / 32768) "
            f"before passing it. Received: dtype={array.dtype}"
        )
    # Images and sequences have a channel axis after the batch and spatial
    # axes, and a single-channel one is easy to drop.
    channel_missing = (
        len(expected_shape) >= 3
        and expected_shape[-1] == 1
        and array.ndim == len(expected_shape) - 1
        and _matches(array.shape[1:], expected_shape[1:-1])
    )
    if channel_missing:
        raise ValueError(
            f"`representative_data` for input '{name}' has shape {array.shape}, but the "
            f"input expects shape {expected_shape}. It looks like the channel axis is "
            "missing: add it with x[..., np.newaxis]."
        )
    if array.ndim == len(expected_shape) - 1 and _matches(array.shape, expected_shape[1:]):
        example_shape = ", ".join("-1" if size is None else str(size) for size in expected_shape)
        raise ValueError(
            f"`representative_data` for input '{name}' has shape {array.shape}, but the "
            f"input expects shape {expected_shape} with a leading batch axis. It looks "
            f"like the batch axis is missing: add it with x.reshape({example_shape}) or "
            "x[np.newaxis] for a single example, or .batch(n) on a tf.data.Dataset."
        )
    if array.ndim != len(expected_shape):
        raise ValueError(
            f"`representative_data` for input '{name}' must have rank "
            f"{len(expected_shape)} to match the input shape {expected_shape}. "
            f"Received: shape={array.shape}"
        )
    for expected, actual in zip(expected_shape[1:], array.shape[1:]):
        if expected is not None and expected != actual:
            raise ValueError(
                f"`representative_data` for input '{name}' has shape {array.shape}, which "
                f"does not match the input shape {expected_shape}. Reshape or resize the "
                "data to the shape the model was trained on."
            )
    if len(array) == 0:
        raise ValueError(
            f"`representative_data` for input '{name}' has no examples. Pass a few "
            f"hundred typical inputs. Received: shape={array.shape}"
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(
            f"`representative_data` for input '{name}' contains NaN or infinity, which "
            "would make the calibrated ranges NaN. Remove or replace those values."
        )
    return array.astype(expected_dtype, copy=False)


def _matches(shape, expected):
    """Return whether `shape` equals `expected`, where `None` in `expected` matches any size."""
    return len(shape) == len(expected) and all(
        size is None or size == actual for size, actual in zip(expected, shape)
    )
