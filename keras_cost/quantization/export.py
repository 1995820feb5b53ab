"""`export_tflite`: convert a Keras model to a TFLite flatbuffer, optionally quantized."""

import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from keras_cost.quantization import calibration

# A range below this many float units is the converter's stand-in for an
# activation that was 0 on every calibration example.
_EMPTY_RANGE = 1e-5
_INT8_LEVELS = 255


class ExportMode:
    """One `quantize=` choice of `export_tflite`: how to set up the converter."""

    name = None
    uses_representative_data = False
    io_dtypes = ()

    def configure(self, converter, representative_dataset, io_dtype=None):
        raise NotImplementedError


class FloatExport(ExportMode):
    """Plain float32 model."""

    name = None

    def configure(self, converter, representative_dataset, io_dtype=None):
        del converter, representative_dataset, io_dtype


class Int8Export(ExportMode):
    """Full integer model with int8 (or uint8, or float32) inputs and outputs.

    Tensors with learned ranges (from `QuantizeWrapper`) keep them, and every
    other tensor is calibrated on the representative data.
    """

    name = "int8"
    uses_representative_data = True
    io_dtypes = ("int8", "uint8", "float32")

    def configure(self, converter, representative_dataset, io_dtype=None):
        io_dtype = tf.as_dtype(io_dtype or "int8")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        # Only int8 builtins are allowed, so the converter raises instead of
        # leaving an op in float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype


class Float16Export(ExportMode):
    """Float16 weights, float32 computation."""

    name = "float16"

    def configure(self, converter, representative_dataset, io_dtype=None):
        del representative_dataset, io_dtype
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]


class DynamicRangeExport(ExportMode):
    """int8 weights, activations quantized on the fly at run time."""

    name = "dynamic"

    def configure(self, converter, representative_dataset, io_dtype=None):
        del representative_dataset, io_dtype
        converter.optimizations = [tf.lite.Optimize.DEFAULT]


_MODES = {
    mode.name: mode
    for mode in (FloatExport(), Int8Export(), Float16Export(), DynamicRangeExport())
}


def get(quantize):
    """Return the `ExportMode` for a `quantize=` value.

    Args:
        quantize: `None`, `"int8"`, `"float16"` or `"dynamic"`.

    Returns:
        An `ExportMode` instance.

    Raises:
        ValueError: If `quantize` is not one of the allowed values.
    """
    if not (quantize is None or isinstance(quantize, str)) or quantize not in _MODES:
        allowed = ", ".join(repr(name) for name in _MODES)
        raise ValueError(
            f"Unknown `quantize` value. Expected one of {allowed}. "
            f"Received: quantize={quantize!r}"
        )
    return _MODES[quantize]


def export_tflite(model, path=None, representative_data=None, quantize=None, io_dtype=None):
    """Convert a Keras model to a TFLite flatbuffer with the TFLite converter.

    The flatbuffer has one signature, `serving_default`, whose inputs are named
    after the model's inputs and whose outputs are named after
    `model.output_names`, so that `TFLiteModel` binds both by name.

    With `quantize="int8"` every op runs in int8 and the model's inputs and
    outputs are int8 tensors. `TFLiteModel` quantizes float inputs and
    dequantizes outputs with their scale and zero point. For a model from
    `quantize_model` the ranges learned in training are used. The model input
    and any tensor without a learned range are calibrated on
    `representative_data`, so it is required for int8.

    Args:
        model: A Keras 3 model: Sequential, functional, or a single-input
            subclassed model that has been called on data once.
        path: Optional file path. When given, the flatbuffer is written to a
            temporary file in the same folder and moved over `path` in one
            step, so an interrupted export never leaves a partial file there.
        representative_data: Calibration inputs for `quantize="int8"`, a few
            hundred typical examples. Pass an array for a single-input model
            or a dict of arrays keyed by input name. A `tf.data.Dataset` may
            yield batches of either, or `(inputs, targets)` pairs as for
            `fit`, whose targets are ignored. The data is checked against the
            model's inputs (dtype, rank, batch axis, shape) before conversion.
            Float data is cast to the input's float dtype. Integer data for a
            float input is rejected, because a plain cast would skip the
            scaling the model was trained with.
        quantize: `None` for float32, `"int8"` for a full integer model,
            `"float16"` for float16 weights, or `"dynamic"` for int8 weights
            with float activations. Defaults to `None`.
        io_dtype: Type of the model's input and output tensors with
            `quantize="int8"`: `"int8"`, `"uint8"` (values shifted by 128,
            for runtimes that expect unsigned data) or `"float32"` (the file
            quantizes and dequantizes at its edges). `None` means `"int8"`.
            Other modes keep float32 inputs and outputs. Defaults to `None`.

    Returns:
        The flatbuffer as `bytes`.

    Raises:
        TypeError: If `model` is not a Keras 3 model.
        ValueError: If `quantize` or `io_dtype` is unknown. If
            `representative_data` is missing for `"int8"`, given for another
            mode, or does not match the model's inputs. If `path` is a folder
            or its folder does not exist. If the inputs of a subclassed model
            are unknown. If LiteRT cannot prepare or run the int8 model,
            usually because an activation was 0 on all of
            `representative_data`; no file is written then.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_cost.quantization import export_tflite, TFLiteModel
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> data = np.random.default_rng(0).random((32, 4), dtype="float32")
    >>> flatbuffer = export_tflite(model, representative_data=data, quantize="int8")
    >>> TFLiteModel(flatbuffer).input_details[0]["dtype"]
    'int8'
    """
    mode = get(quantize)
    if io_dtype is not None and io_dtype not in mode.io_dtypes:
        allowed = ", ".join(repr(name) for name in mode.io_dtypes) or "only None"
        raise ValueError(
            f"`io_dtype` for quantize={quantize!r} must be one of: {allowed}. "
            f"Received: io_dtype={io_dtype!r}"
        )
    if mode.uses_representative_data and representative_data is None:
        raise ValueError(
            f"quantize={quantize!r} calibrates activation ranges and needs "
            "`representative_data`: pass a few hundred typical inputs, for example "
            "representative_data=x_train[:256]. Received: representative_data=None"
        )
    if not mode.uses_representative_data and representative_data is not None:
        raise ValueError(
            f"`representative_data` is used only with quantize='int8', so it would be "
            f"ignored here. Remove it or pass quantize='int8'. Received: quantize={quantize!r}"
        )

    if path is not None:
        _check_output_path(path)
    model = _with_known_inputs(model)
    _warn_untrained_ranges(model)
    representative_dataset = None
    if representative_data is not None:
        batches = calibration.calibration_batches(model, representative_data)
        representative_dataset = calibration.as_representative_dataset(model, batches)

    with tempfile.TemporaryDirectory() as folder:
        converter = _make_converter(model, folder)
        mode.configure(converter, representative_dataset, io_dtype)
        flatbuffer = converter.convert()
    if mode.uses_representative_data:
        _check_runs_in_litert(flatbuffer)

    if path is not None:
        write_atomically(path, flatbuffer)
    return flatbuffer


def _check_runs_in_litert(flatbuffer):
    """Raise a clear error if LiteRT cannot prepare or run the int8 flatbuffer.

    The usual cause is an activation that was 0 on every calibration
    example. The converter gives it a range of about 2e-6, and LiteRT's
    XNNPACK delegate then rejects the op that reads it with "failed to
    create XNNPACK runtime". A dead layer fed by another dead layer still
    runs, so the interpreter decides, and the empty ranges are named.
    Trained ranges never get this small, because `QuantizeWrapper` keeps
    them at least `MIN_RANGE` wide.
    """
    try:
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        # Some graphs (a dead ReLU after Flatten) prepare and fail only on
        # the first run, so the check runs the model once on zeros.
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(
                detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"])
            )
        interpreter.invoke()
    except (RuntimeError, ValueError) as error:
        empty = _empty_activation_ranges(flatbuffer)
        if not empty:
            raise ValueError(
                f"LiteRT failed to run the converted int8 model: {error}. No file was written."
            ) from error
        listed = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise ValueError(
            "The int8 model has activations that were 0 on all of `representative_data`, "
            "so their int8 range is empty and LiteRT failed to run the file: "
            f"{listed}. Pass representative_data that reaches these layers with "
            "typical values (preprocessed as in training), or remove the dead units, for "
            "example with PruneCallback(criterion='activation', granularity='neuron') "
            f"and shrink. No file was written. LiteRT said: {error}"
        ) from error


def _empty_activation_ranges(flatbuffer):
    model = schema.Model.GetRootAs(flatbuffer, 0)
    subgraph = model.Subgraphs(0)
    output_names = {}
    for signature_index in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(signature_index)
        for output_index in range(signature.OutputsLength()):
            output = signature.Outputs(output_index)
            output_names[output.TensorIndex()] = output.Name().decode()
    empty = []
    for index in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(index)
        quantization = tensor.Quantization()
        if quantization is None or quantization.ScaleLength() == 0:
            continue
        if model.Buffers(tensor.Buffer()).DataLength() > 0:
            continue  # A weight, not an activation.
        scale = float(quantization.ScaleAsNumpy().min())
        if scale * _INT8_LEVELS < _EMPTY_RANGE:
            if index in output_names:
                name = f"model output '{output_names[index]}'"
            else:
                name = f"'{tensor.Name().decode()}'"
            empty.append(f"{name} (scale {scale:.1e})")
    return empty


def _make_converter(model, folder):
    specs = [
        tf.TensorSpec((None,) + tuple(tensor.shape[1:]), tensor.dtype, name=tensor.name)
        for tensor in model.inputs
    ]
    output_names = _output_names(model)

    def serve(inputs):
        outputs = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        if isinstance(outputs, dict):
            return dict(outputs)
        return dict(zip(output_names, tf.nest.flatten(outputs)))

    # A SavedModel written by Keras's ExportArchive is what the converter
    # freezes reliably: converting the concrete function directly kept the
    # weights as resource variables (TF 2.21) that the interpreter cannot read.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, [specs])
    archive.write_out(folder, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(folder)


def _warn_untrained_ranges(model):
    names = [
        layer.name
        for layer in _all_layers(model)
        if hasattr(layer, "output_range_set") and float(layer.output_range_set.numpy()) < 0.5
    ]
    if names:
        warnings.warn(
            f"These quantized layers never ran in training, so their output ranges "
            f"are the initial [-6, 6]: {', '.join(names)}. Train the model with fit "
            "before export for ranges that fit the data.",
            stacklevel=3,
        )


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _with_known_inputs(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"export_tflite needs a Keras 3 model. Received: model of type {type(model).__name__}"
        )
    if getattr(model, "inputs", None):
        return model

    # A subclassed model has no symbolic inputs, but once called it records
    # its input shape; calling it on a keras.Input gives a functional model.
    input_shape = model.get_build_config().get("input_shape") if model.built else None
    if not _is_single_shape(input_shape):
        raise ValueError(
            f"export_tflite cannot tell the inputs of model '{model.name}'. Call it on a "
            "batch of data once, or export a functional model around it: "
            "inputs = keras.Input(shape); keras.Model(inputs, model(inputs))."
        )
    inputs = keras.Input(tuple(input_shape[1:]), name="inputs")
    return keras.Model(inputs, model(inputs), name=model.name)


def _is_single_shape(shape):
    return isinstance(shape, (list, tuple)) and all(
        size is None or isinstance(size, int) for size in shape
    )


def _output_names(model):
    # Sequential models get `output_names` only when compiled, so the last
    # layer's name is used for the single output.
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    if len(model.outputs) == 1 and model.layers:
        return [model.layers[-1].name]
    return [f"output_{index}" for index in range(len(model.outputs))]


def _check_output_path(path):
    """Raise before conversion if `path` cannot receive the file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(
            f"`path` must be a file path, but it is a folder. Pass a file name inside it, "
            f"for example {os.path.join(path, 'model.tflite')!r}. Received: path={path!r}"
        )
    if not os.path.isdir(folder):
        raise ValueError(
            f"The folder of `path` does not exist: {folder!r}. Create it first, for "
            f"example with os.makedirs({folder!r}). Received: path={path!r}"
        )


def write_atomically(path, content):
    """Write `content` to `path` through a temporary file and `os.replace`.

    The file gets the mode that the umask gives a plain `open`, and an
    interrupted write leaves any previous file at `path` untouched.

    Args:
        path: Destination file path. Its folder must exist.
        content: `bytes` to write.
    """
    from keras_cost._io import atomic_write_bytes

    atomic_write_bytes(os.fspath(path), content)
