"""`TFLiteModel`: run a `.tflite` file with LiteRT, binding inputs and outputs by name."""

import os

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

_QUANTIZED_TYPES = ("int8", "uint8", "int16")
_BUILTIN_NAMES = {
    value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_TENSOR_TYPE_NAMES = {
    value: name.lower()
    for name, value in vars(schema.TensorType).items()
    if not name.startswith("_")
}


class TFLiteModel:
    """A TFLite flatbuffer run with the LiteRT interpreter, by input and output name.

    Inputs and outputs are bound through the flatbuffer's signature, by name,
    never by position. Float data for an int8 (or uint8, int16) input is
    quantized with that input's scale and zero point as
    `q = clip(round(x / scale) + zero_point)`. Integer outputs are dequantized
    as `x = (q - zero_point) * scale`. So `predict` takes and returns the
    same float values as the Keras model.

    Args:
        model: Path to a `.tflite` file, or the flatbuffer as `bytes`.
        signature_key: Signature to run. Defaults to the only signature, or to
            `"serving_default"` when there are several.
        num_threads: Interpreter threads, or `None` for LiteRT's default.

    Attributes:
        input_details: One dict per input in signature order, with `name`,
            `shape` (batch axis `-1` when dynamic), `dtype` (a NumPy dtype
            name), `scale` and `zero_point` (0.0 and 0 for float tensors).
        output_details: The same for the outputs.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_cost.quantization import TFLiteModel, export_tflite
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.set_weights([np.array([[1.0], [2.0]], "float32")])
    >>> runner = TFLiteModel(export_tflite(model))
    >>> runner.predict(np.array([[1.0, 1.0]], "float32"))
    array([[3.]], dtype=float32)
    """

    def __init__(self, model, signature_key=None, num_threads=None):
        content = _read_model(model)
        self._content = content
        source = repr(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else "`model`"
        self._interpreter = load_interpreter(content, source, num_threads=num_threads)
        self.signature_key = _pick_signature(self._interpreter, signature_key)
        self._runner = self._interpreter.get_signature_runner(self.signature_key)
        self.input_details = _describe(self._runner.get_input_details())
        self.output_details = _describe(self._runner.get_output_details())

    @property
    def input_names(self):
        """Input names in signature order."""
        return [detail["name"] for detail in self.input_details]

    @property
    def output_names(self):
        """Output names in signature order."""
        return [detail["name"] for detail in self.output_details]

    @property
    def op_details(self):
        """One dict per op of the main subgraph, in execution order.

        Each has `name` (the builtin op name such as `"FULLY_CONNECTED"`, or
        the custom code), `input_types` and `output_types`. The types are
        tensor type names such as `"int8"` or `"float32"`, and absent
        optional inputs are skipped.
        """
        return _op_details(self._content)

    @property
    def ops(self):
        """Names of the ops of the main subgraph, in execution order."""
        return [op["name"] for op in self.op_details]

    def predict(self, x, batch_size=32):
        """Run the model on a batch of inputs, `batch_size` examples per invocation.

        Args:
            x: An array for a single-input model, or a dict of arrays keyed by
                input name. Float arrays are quantized for integer inputs;
                arrays already of an integer input's dtype are passed as they
                are.
            batch_size: Examples per interpreter call. Defaults to `32`.

        Returns:
            An array for a single-output model, otherwise a dict of arrays
            keyed by output name. Integer outputs are dequantized to float32.

        Raises:
            ValueError: If `x` does not match the inputs by name, batch size
                or dtype, or `batch_size` is not a positive integer.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
            )
        arrays = self._input_arrays(x)
        num_examples = len(next(iter(arrays.values())))

        chunks = {name: [] for name in self.output_names}
        for start in range(0, num_examples, batch_size):
            feed = {name: array[start : start + batch_size] for name, array in arrays.items()}
            outputs = self._runner(**feed)
            for detail in self.output_details:
                chunks[detail["name"]].append(_dequantize(outputs[detail["name"]], detail))

        results = {name: np.concatenate(parts, axis=0) for name, parts in chunks.items()}
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    def _input_arrays(self, x):
        names = self.input_names
        if isinstance(x, dict):
            missing = [name for name in names if name not in x]
            unknown = [key for key in x if key not in names]
            if missing or unknown:
                raise ValueError(
                    f"The keys of `x` must be the model's input names {names}. "
                    f"Missing: {missing}. Unknown: {unknown}."
                )
            raw = {name: x[name] for name in names}
        elif len(names) == 1:
            raw = {names[0]: x}
        else:
            raise ValueError(
                f"The model has {len(names)} inputs ({', '.join(names)}), so `x` must be a "
                f"dict keyed by input name. Received: {type(x).__name__}"
            )

        arrays = {
            detail["name"]: _quantize(detail, np.asarray(raw[detail["name"]]))
            for detail in self.input_details
        }
        sizes = {name: len(array) for name, array in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"All inputs must have the same number of examples. Received sizes {sizes}"
            )
        return arrays


def load_interpreter(content, source, num_threads=None):
    """Create a LiteRT interpreter, naming `source` in the error if loading fails.

    Args:
        content: The `.tflite` flatbuffer as bytes.
        source: How the error names the model, for example a quoted path.
        num_threads: Interpreter threads, or `None` for LiteRT's default.

    Returns:
        An `ai_edge_litert.interpreter.Interpreter`, tensors not yet allocated.

    Raises:
        ValueError: If `content` is empty or not a valid TFLite model.
    """
    # LiteRT treats empty bytes as a missing argument, and its error would
    # ask for `model_path` or `model_content`.
    if not content:
        raise ValueError(
            f"{source} is empty (0 bytes), so it contains no TFLite model. Pass a "
            "`.tflite` file written by export_tflite or the TFLite converter."
        )
    try:
        return Interpreter(model_content=content, num_threads=num_threads)
    except ValueError as error:
        raise ValueError(
            f"{source} is not a valid TFLite model: LiteRT failed to load it ({error}). "
            "Pass a `.tflite` file written by export_tflite or the TFLite converter."
        ) from error


def _read_model(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as file:
            return file.read()
    raise TypeError(
        "`model` must be a path to a .tflite file or the flatbuffer as bytes. "
        f"Received: {type(model).__name__}"
    )


def _pick_signature(interpreter, signature_key):
    keys = list(interpreter.get_signature_list())
    if not keys:
        raise ValueError(
            "The flatbuffer has no signature, so its inputs and outputs cannot be bound "
            "by name. Convert it with keras_cost.quantization.export_tflite."
        )
    if signature_key is None:
        if len(keys) == 1:
            return keys[0]
        signature_key = "serving_default"
    if signature_key not in keys:
        raise ValueError(
            f"Signature {signature_key!r} not found. Available signatures: {keys}. "
            f"Received: signature_key={signature_key!r}"
        )
    return signature_key


def _describe(details):
    described = []
    for name, detail in details.items():
        scale, zero_point = detail["quantization"]
        described.append(
            {
                "name": name,
                "shape": tuple(int(size) for size in detail["shape_signature"]),
                "dtype": np.dtype(detail["dtype"]).name,
                "scale": float(scale),
                "zero_point": int(zero_point),
            }
        )
    return described


def _quantize(detail, array):
    dtype = np.dtype(detail["dtype"])
    name = detail["name"]
    expected_rank = len(detail["shape"])
    if array.ndim != expected_rank:
        raise ValueError(
            f"Input '{name}' expects rank {expected_rank} (shape {detail['shape']}, "
            f"batch axis first). Received: shape={array.shape}"
        )

    if dtype.name not in _QUANTIZED_TYPES:
        return array.astype(dtype, copy=False)
    if array.dtype == dtype:
        return array
    if array.dtype.kind != "f":
        raise ValueError(
            f"Input '{name}' is a quantized {dtype.name} tensor. Pass float values, which "
            f"are quantized with its scale {detail['scale']} and zero point "
            f"{detail['zero_point']}, or values already quantized as {dtype.name}. "
            f"Received: dtype={array.dtype}"
        )
    info = np.iinfo(dtype)
    quantized = np.round(array.astype("float64") / detail["scale"]) + detail["zero_point"]
    return np.clip(quantized, info.min, info.max).astype(dtype)


def _dequantize(values, detail):
    if detail["dtype"] not in _QUANTIZED_TYPES:
        return values
    return ((values.astype("float32") - detail["zero_point"]) * detail["scale"]).astype("float32")


def _op_details(content):
    model = schema.Model.GetRootAs(content, 0)
    opcodes = [model.OperatorCodes(index) for index in range(model.OperatorCodesLength())]
    subgraph = model.Subgraphs(0)
    details = []
    for op_index in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(op_index)
        details.append(
            {
                "name": _opcode_name(opcodes[operator.OpcodeIndex()]),
                "input_types": _tensor_types(subgraph, operator.InputsAsNumpy()),
                "output_types": _tensor_types(subgraph, operator.OutputsAsNumpy()),
            }
        )
    return details


def _opcode_name(opcode):
    # Builtin codes above 127 only fit the newer field, and the deprecated
    # field contains the code for older ops.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == schema.BuiltinOperator.CUSTOM:
        return opcode.CustomCode().decode()
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def _tensor_types(subgraph, tensor_indices):
    if isinstance(tensor_indices, int):
        return ()
    return tuple(
        _TENSOR_TYPE_NAMES[subgraph.Tensors(int(index)).Type()]
        for index in tensor_indices
        if index >= 0
    )
