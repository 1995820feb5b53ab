"""Cost report of a Keras model or a `.tflite` file."""

import dataclasses
import os
import statistics
import time
import zlib

import keras
import numpy as np

from keras_cost.cost.flops import count_flops
from keras_cost.quantization.quantizers import LinearQuantizer
from keras_cost.quantization.runner import load_interpreter

FLOAT32_BYTES = 4
SCALE_BYTES = 4
ZLIB_LEVEL = 9


@dataclasses.dataclass
class ModelCost:
    """Cost of one model, as returned by `model_cost`.

    A field that does not apply to the source is `None`: a `.tflite` file
    has no parameter or FLOP count here, and a Keras model has no file size
    or latency.

    Attributes:
        name: Model name, or the file name of a `.tflite` file.
        source: `"keras"` or `"tflite"`.
        parameters: Number of weight elements, trainable or not, the same
            as `model.count_params()`.
        nonzero_parameters: Weight elements that are not exactly 0.0.
        flops: Forward FLOPs per example, a multiply-add counted as 2.
        flops_by_layer_type: FLOPs per example by layer class name.
        uncounted_layers: Layers whose FLOPs are unknown and not in `flops`.
        float32_bytes: Weight bytes at 4 bytes per parameter.
        int8_bytes: Weight bytes at 1 byte per parameter plus one float32
            scale per output channel (last axis) of each weight of rank 2
            or more, and one float32 scale per other weight tensor.
        zipped_bytes: zlib level 9 size of the float32 weight bytes, or of
            the file for a `.tflite` model.
        zipped_int8_bytes: zlib level 9 size of the weights rounded to int8,
            stored as `int8_bytes` counts them: one byte per weight and the
            float32 scales. See `model_cost` for the rounding. `None` when a
            weight contains NaN or inf.
        file_bytes: Size of the `.tflite` file.
        latency_seconds: Median LiteRT `invoke` time per example.

    Example:

    >>> from keras_cost.cost import ModelCost
    >>> report = ModelCost("tiny", "keras", parameters=8, nonzero_parameters=6)
    >>> report.sparsity
    0.25
    >>> report.to_dict()["flops"] is None
    True
    >>> print(report.to_markdown().splitlines()[4])
    | parameters | 8 |
    """

    name: str
    source: str
    parameters: int | None = None
    nonzero_parameters: int | None = None
    flops: int | None = None
    flops_by_layer_type: dict = dataclasses.field(default_factory=dict)
    uncounted_layers: list = dataclasses.field(default_factory=list)
    float32_bytes: int | None = None
    int8_bytes: int | None = None
    zipped_bytes: int | None = None
    zipped_int8_bytes: int | None = None
    file_bytes: int | None = None
    latency_seconds: float | None = None

    @property
    def sparsity(self):
        """Fraction of parameters that are exactly zero, or `None`."""
        if not self.parameters or self.nonzero_parameters is None:
            return None
        return 1.0 - self.nonzero_parameters / self.parameters

    def to_dict(self):
        """Return the fields and `sparsity` as a JSON-serializable dict."""
        result = dataclasses.asdict(self)
        result["sparsity"] = self.sparsity
        return result

    def to_markdown(self):
        """Return a two-column markdown table of the non-empty fields."""
        lines = [f"**{self.name}** ({self.source})", "", "| quantity | value |", "| --- | --- |"]
        for label, key in _MARKDOWN_ROWS:
            value = self.to_dict()[key]
            if value is not None:
                lines.append(f"| {label} | {format_value(key, value)} |")
        for layer_type, flops in sorted(self.flops_by_layer_type.items()):
            lines.append(f"| FLOPs in {layer_type} | {flops:,} |")
        if self.uncounted_layers:
            lines.append(f"| FLOPs not counted | {', '.join(self.uncounted_layers)} |")
        return "\n".join(lines)


_MARKDOWN_ROWS = [
    ("parameters", "parameters"),
    ("non-zero parameters", "nonzero_parameters"),
    ("sparsity", "sparsity"),
    ("forward FLOPs per example", "flops"),
    ("float32 bytes", "float32_bytes"),
    ("int8 bytes", "int8_bytes"),
    ("zipped bytes", "zipped_bytes"),
    ("zipped int8 bytes", "zipped_int8_bytes"),
    ("file bytes", "file_bytes"),
    ("latency per example", "latency_seconds"),
]


def format_value(key, value):
    """Format one `ModelCost` field for a table cell."""
    if value is None:
        return "n/a"
    if key == "latency_seconds":
        return f"{value * 1e6:,.1f} µs"
    if key == "sparsity":
        return f"{value:.1%}"
    return f"{value:,}"


def int8_weight_codes(weight):
    """Round one weight array to int8 as `model_cost` stores it.

    The rounding is `LinearQuantizer(num_bits=8, symmetric=True,
    narrow_range=True)`, with one scale per output channel (last axis) for
    a weight of rank 2 or more and one scale for the whole tensor
    otherwise. So 0.0 maps to one code, and the zeros that pruning leaves
    compress as well as they do in float32.

    Args:
        weight: A weight array of any float dtype.

    Returns:
        `(codes, scales, values)`: the 8-bit codes as a `uint8` array of the
        weight's shape, the float32 scales, and the float32 values the codes
        represent.

    Raises:
        TypeError: If `weight` is `None` or a string.
        ValueError: If `weight` contains NaN or inf.

    Example:

    >>> import numpy as np
    >>> from keras_cost.cost import int8_weight_codes
    >>> codes, scales, values = int8_weight_codes(np.array([0.0, 1.27, -0.5]))
    >>> codes.tolist(), scales.tolist()
    ([128, 255, 78], [0.009999999776482582])
    >>> bool(np.all(np.abs(values - [0.0, 1.27, -0.5]) <= scales / 2))
    True
    """
    if weight is None or isinstance(weight, (str, bytes)):
        raise TypeError(
            f"Invalid weight: int8_weight_codes expects a numeric array. Received: {weight!r}"
        )
    weight = np.asarray(weight, dtype="float32")
    if not np.all(np.isfinite(weight)):
        raise ValueError(
            "Invalid weight: it contains NaN or inf, so it has no int8 rounding. Check the "
            "training for divergence (for example a lower learning rate). Received: "
            f"{np.count_nonzero(~np.isfinite(weight))} non-finite values of {weight.size}"
        )
    if weight.size == 0:
        channels = weight.shape[-1] if weight.ndim >= 2 else 1
        return weight.astype(np.uint8), np.ones(channels, "float32"), weight
    quantizer = LinearQuantizer(
        num_bits=8, symmetric=True, narrow_range=True, per_channel=weight.ndim >= 2
    )
    codes, params = quantizer.quantize(weight)
    values = quantizer.dequantize(codes, params)
    scales = np.asarray(params["scale"], dtype="float32").reshape(-1)
    return np.asarray(codes).astype(np.uint8), scales, np.asarray(values, dtype="float32")


def _int8_blob(weight):
    codes, scales, _ = int8_weight_codes(weight)
    return codes.tobytes() + scales.tobytes()


def _zipped_int8_bytes(arrays):
    # A model whose training diverged has no int8 rounding to measure.
    if not all(np.all(np.isfinite(a)) for a in arrays):
        return None
    return len(zlib.compress(b"".join(_int8_blob(a) for a in arrays), ZLIB_LEVEL))


def _int8_bytes(weight):
    shape = weight.shape
    if len(shape) >= 2:
        scales = int(shape[-1])
    else:
        scales = 1
    return int(np.prod(shape, dtype=np.int64)) + SCALE_BYTES * scales


def _keras_cost(model, name, input_shape):
    # Counting FLOPs runs the model once, which also builds a subclassed
    # model, so it comes before reading the weights.
    flops, by_type, uncounted = count_flops(model, input_shape=input_shape)
    arrays = [np.asarray(weight.numpy()) for weight in model.weights]
    float32_blob = b"".join(a.astype("float32").tobytes() for a in arrays)
    return ModelCost(
        name=name or model.name,
        source="keras",
        parameters=int(model.count_params()),
        nonzero_parameters=int(sum(np.count_nonzero(a) for a in arrays)),
        flops=int(flops),
        flops_by_layer_type=by_type,
        uncounted_layers=uncounted,
        float32_bytes=FLOAT32_BYTES * int(sum(a.size for a in arrays)),
        int8_bytes=int(sum(_int8_bytes(a) for a in arrays)),
        zipped_bytes=len(zlib.compress(float32_blob, ZLIB_LEVEL)),
        zipped_int8_bytes=_zipped_int8_bytes(arrays),
    )


def measure_tflite_latency(model_content, runs=20, num_threads=1):
    """Measure the median LiteRT latency per example of a `.tflite` model.

    Every input is filled with zeros of its dtype. One untimed `invoke`
    warms the interpreter up. The per-example latency divides the median
    `invoke` time by the batch size of the first input.

    Args:
        model_content: The `.tflite` flatbuffer as bytes.
        runs: Number of timed `invoke` calls. Defaults to `20`.
        num_threads: Interpreter threads. Defaults to `1`, which makes
            numbers comparable between machines with different core counts.

    Returns:
        Median seconds per example.

    Raises:
        ValueError: If `runs` or `num_threads` is not a positive integer, or
            `model_content` is empty or not a valid TFLite model.

    Example:

    >>> import tensorflow as tf
    >>> from keras_cost.cost import measure_tflite_latency
    >>> @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    ... def double(x):
    ...     return 2.0 * x
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [double.get_concrete_function()])
    >>> latency = measure_tflite_latency(converter.convert(), runs=3)
    >>> latency > 0.0
    True
    """
    return _measure_latency(model_content, runs, num_threads, "`model_content`")


def _measure_latency(content, runs, num_threads, source):
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer. Received: runs={runs!r}")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(
            f"num_threads must be a positive integer. Received: num_threads={num_threads!r}"
        )
    interpreter = load_interpreter(content, source, num_threads=num_threads)
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()
    for detail in input_details:
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    interpreter.invoke()

    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        timings.append(time.perf_counter() - start)
    batch_size = max(int(input_details[0]["shape"][0]), 1) if len(input_details[0]["shape"]) else 1
    return statistics.median(timings) / batch_size


def _tflite_cost(content, name, latency_runs, source):
    return ModelCost(
        name=name,
        source="tflite",
        file_bytes=len(content),
        zipped_bytes=len(zlib.compress(content, ZLIB_LEVEL)),
        latency_seconds=_measure_latency(content, latency_runs, 1, source),
    )


def model_cost(model_or_tflite, *, name=None, input_shape=None, latency_runs=20):
    """Measure what a model costs to store and to run.

    For a Keras model: parameters, non-zero parameters, forward FLOPs per
    example by layer type, and weight bytes as float32, as int8 and zipped.
    The FLOP conventions are in `keras_cost.cost.flops`: a multiply-add is
    2 FLOPs. A layer wrapped by a wrapper with a `layer` attribute (such as
    `QuantizeWrapper`) is costed as the inner layer. The int8 size is an
    estimate of a weight-quantized file: 1 byte per weight, plus a float32
    scale per output channel of each kernel (rank 2 or more) and per other
    weight tensor. The zipped size is `zlib.compress(weights, 9)` of all
    weights as float32 bytes, so exact zeros left by pruning shrink it. The
    zipped int8 size is the same for the weights rounded by
    `int8_weight_codes`: the codes and scales that `int8_bytes` counts.

    For a `.tflite` file (a path or the bytes): the file size, its zlib
    level 9 size, and the median LiteRT latency per example.

    Args:
        model_or_tflite: A built `keras.Model`, a path to a `.tflite` file,
            or the bytes of one.
        name: Name for the report. Defaults to `None`, which uses the model
            name or the file name.
        input_shape: For a Keras model whose inputs are not symbolic (a
            subclassed model), the shape of one example without the batch
            axis, or a list of shapes. Defaults to `None`.
        latency_runs: Timed LiteRT runs for a `.tflite` model. Defaults to
            `20`.

    Returns:
        A `ModelCost`.

    Raises:
        TypeError: If `model_or_tflite` is not one of the accepted types.
        ValueError: If the input shape of a Keras model is unknown. If the
            path does not end in `.tflite`. If the `.tflite` file or bytes
            are empty or not a valid TFLite model.
        FileNotFoundError: If the `.tflite` path does not exist.

    Example:

    >>> import keras
    >>> from keras_cost.cost import model_cost
    >>> model = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(3)], name="tiny")
    >>> report = model_cost(model)
    >>> report.parameters, report.flops, report.float32_bytes
    (15, 27, 60)
    """
    if isinstance(model_or_tflite, keras.Model):
        return _keras_cost(model_or_tflite, name, input_shape)
    if isinstance(model_or_tflite, (bytes, bytearray)):
        return _tflite_cost(
            bytes(model_or_tflite), name or "tflite", latency_runs, "`model_or_tflite`"
        )
    if isinstance(model_or_tflite, (str, os.PathLike)):
        path = os.fspath(model_or_tflite)
        if not path.endswith(".tflite"):
            raise ValueError(
                "model_cost accepts a keras.Model or a path to a .tflite file. "
                f"For a .keras file, load it first with keras.models.load_model. "
                f"Received: model_or_tflite={path!r}"
            )
        with open(path, "rb") as file:
            content = file.read()
        return _tflite_cost(content, name or os.path.basename(path), latency_runs, repr(path))
    raise TypeError(
        "model_cost expects a keras.Model, a .tflite path or .tflite bytes. "
        f"Received: model_or_tflite of type {type(model_or_tflite).__name__}"
    )
