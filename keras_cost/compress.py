"""Compress a user's saved classifier: distill, prune, quantize, export and report.

This module is the engine of `keras-cost compress` and `keras-cost report`.
`load_model`, `load_data`, `check_data_fits` and `CompressSettings` check
the inputs (files, data keys, shapes, option values) before any training
starts. They raise `CompressError`, which the command line prints as one
line with exit status 2.
"""

import dataclasses
import io
import json
import os
import sys
import time
import zipfile

import numpy as np

BATCH_SIZE = 32
REPRESENTATIVE_EXAMPLES = 256
DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
QUANTIZE_CHOICES = ("int8", "float16", "dynamic")
# Held-out share of an image folder, split with a fixed seed so that
# repeated runs evaluate on the same images.
FOLDER_TEST_FRACTION = 0.2
FOLDER_SPLIT_SEED = 0
# The polynomial schedule reaches its target at this fraction of the
# fine-tuning steps, so the last steps train at the final sparsity.
PRUNE_RAMP_FRACTION = 0.7
# Sparsities tried by the accuracy-budget search, each with and without int8.
SEARCH_SPARSITIES = (0.9, 0.8, 0.7, 0.5)
# Adam learning rate of every training stage. On the digits CNN pruned to 80%
# with int8 QAT, fine-tuning at 3e-4 lost 0.56 points more than at 1e-3.
LEARNING_RATE = 1e-3
_CHANNEL_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
_IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_LOAD_ERRORS = (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile)


class CompressError(ValueError):
    """Invalid input to `keras-cost compress` or `report`, found before training."""


@dataclasses.dataclass
class Dataset:
    """Training and test arrays of a classification data set.

    Attributes:
        x_train: Float32 inputs, batch axis first.
        y_train: Int64 class labels of shape `(n,)`.
        x_test: Float32 inputs, batch axis first.
        y_test: Int64 class labels of shape `(n,)`.
        source: The file or folder the data came from, for messages.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


@dataclasses.dataclass
class CompressSettings:
    """Compression settings of one `compress` run.

    Args:
        sparsity: Fraction of weights to prune, in [0, 1). `0` skips pruning.
        structured: Whether to prune whole neurons and filters instead of
            single weights.
        quantize: `None`, `"int8"` (quantization-aware fine-tuning, then a
            full integer file), `"float16"` or `"dynamic"` (post-training).
        distill_width: Width of a distilled student relative to the model,
            in (0, 1], or `None` for no distillation.
        epochs: Epochs of each training stage, at least 1.
        seed: Seed of weight initialization, dropout and data order, set
            before the run so that a setting gives the same model whether it
            runs alone or inside a search. At least 0.

    Raises:
        CompressError: If a value is outside its range.
    """

    sparsity: float = 0.0
    structured: bool = False
    quantize: str | None = None
    distill_width: float | None = None
    epochs: int = 3
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise CompressError(
                "Sparsity must be in [0, 1), the fraction of weights set to zero. "
                f"Pass for example --prune 0.8. Received: sparsity={self.sparsity}"
            )
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise CompressError(
                f"Invalid quantization {self.quantize!r}. Use one of "
                f"{', '.join(QUANTIZE_CHOICES)}. Received: quantize={self.quantize!r}"
            )
        if self.distill_width is not None and not 0.0 < self.distill_width <= 1.0:
            raise CompressError(
                "The student width must be in (0, 1], the fraction of units and "
                f"filters kept. Pass for example --distill-width 0.5. "
                f"Received: distill_width={self.distill_width}"
            )
        if self.epochs < 1:
            raise CompressError(f"Epochs must be at least 1. Received: epochs={self.epochs}")
        if self.seed < 0:
            raise CompressError(f"The seed must be at least 0. Received: seed={self.seed}")

    def describe(self):
        """Return a short human-readable summary such as `"80% sparse, int8"`."""
        parts = []
        if self.distill_width is not None:
            parts.append(f"distilled to width {self.distill_width:g}")
        if self.sparsity > 0:
            kind = "structured" if self.structured else "unstructured"
            parts.append(f"{self.sparsity:.0%} sparse ({kind})")
        parts.append(self.quantize or "float32")
        return ", ".join(parts)


@dataclasses.dataclass
class CompressResult:
    """Outputs of one `compress` run.

    Attributes:
        settings: The `CompressSettings` used.
        original_accuracy: Test accuracy of the input model.
        keras_accuracy: Test accuracy of the compressed Keras model.
        tflite_accuracy: Test accuracy of the `.tflite` file, run with LiteRT.
        keras_model: The compressed Keras model (pruning masks stripped).
        tflite_bytes: The `.tflite` flatbuffer.
        train_seconds: Wall time of all training stages.
    """

    settings: CompressSettings
    original_accuracy: float
    keras_accuracy: float
    tflite_accuracy: float
    keras_model: object
    tflite_bytes: bytes
    train_seconds: float

    @property
    def accuracy_drop_points(self):
        """Accuracy lost by the `.tflite` file, in percentage points."""
        return (self.original_accuracy - self.tflite_accuracy) * 100


def status(command, message):
    """Print one progress line of a `keras-cost` command."""
    print(f"[keras-cost {command}] {message}", flush=True)


def fit_verbosity():
    """Return the `fit` verbosity: a progress bar on a terminal, one line per epoch otherwise."""
    return 1 if sys.stdout.isatty() else 2


def check_file(path, kind):
    """Raise `CompressError` unless `path` exists.

    Args:
        path: The path given on the command line.
        kind: What the file is, for the message (`"model"`, `"data"`).
    """
    if not os.path.exists(path):
        raise CompressError(
            f"The {kind} file {path!r} does not exist. Check the path, relative to "
            f"{os.getcwd()!r}."
        )


def load_model(path):
    """Load a `.keras` model file and check that it is a classifier.

    Args:
        path: Path to a `.keras` file.

    Returns:
        The loaded `keras.Model`.

    Raises:
        CompressError: If the file is missing, does not load as a Keras model,
            or the model does not have one input and one output of shape
            `(batch, classes)` with at least 2 classes.
    """
    check_file(path, "model")
    if not path.endswith(".keras"):
        raise CompressError(
            f"The model file {path!r} must be a Keras 3 `.keras` file. Save the model "
            "with model.save('model.keras')."
        )

    import keras

    import keras_cost  # noqa: F401  Registers the keras-cost classes for loading.

    try:
        model = keras.models.load_model(path, compile=False)
    except _LOAD_ERRORS as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CompressError(
            f"The file {path!r} does not load as a Keras model ({first_line}). "
            "Pass a file written by model.save('model.keras')."
        ) from None
    _check_classifier(model, path)
    return model


def _check_classifier(model, path):
    if not getattr(model, "inputs", None):
        raise CompressError(
            f"The model in {path!r} is a subclassed model without symbolic inputs, but "
            "keras-cost compresses Sequential and functional models. Wrap it: "
            "inputs = keras.Input(shape); keras.Model(inputs, model(inputs))."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise CompressError(
            f"The model in {path!r} has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs, but keras-cost compresses classifiers with one "
            "input and one output."
        )
    shape = tuple(model.outputs[0].shape)
    if len(shape) != 2 or shape[1] is None or shape[1] < 2:
        raise CompressError(
            f"The model in {path!r} has output shape {shape}, but keras-cost expects a "
            "classifier output of shape (batch, classes) with at least 2 classes."
        )


def output_is_logits(model):
    """Return whether a classifier outputs logits rather than probabilities.

    The output counts as probabilities when the last layer is a `Softmax`
    layer or has `activation="softmax"`.

    Args:
        model: A Keras classifier.

    Returns:
        `False` for probabilities, `True` for logits.
    """
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return False
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) != "softmax"


def load_data(path, input_shape=None, test_only=False):
    """Load a classification data set from an `.npz` file or an image folder.

    An `.npz` file must contain `x_train`, `y_train`, `x_test` and `y_test`,
    with integer class labels. A folder must contain one sub-folder of images
    per class. It is read with `keras.utils.image_dataset_from_directory` at
    the model's input size. A fixed 20% of the images (seed 0) is the test
    split. Pixel values stay in [0, 255], as that function returns them.

    Args:
        path: An `.npz` file or a folder.
        input_shape: The model's input shape without the batch axis. Needed
            for a folder, to pick the image size and colour mode.
        test_only: Whether an `.npz` file needs only `x_test` and `y_test`.
            `x_train` and `y_train` are then `None` when absent.

    Returns:
        A `Dataset`.

    Raises:
        CompressError: If the path is missing, a key is missing, the labels
            are not integers, or a folder cannot be read.
    """
    check_file(path, "data")
    if os.path.isdir(path):
        return _load_folder(path, input_shape)
    if not path.endswith(".npz"):
        raise CompressError(
            f"The data {path!r} must be an .npz file with {', '.join(DATA_KEYS)} "
            "or a folder with one sub-folder of images per class."
        )
    return _load_npz(path, test_only)


def _load_npz(path, test_only):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CompressError(f"The data file {path!r} does not load as an .npz file ({error}).") from None
    required = ("x_test", "y_test") if test_only else DATA_KEYS
    with archive:
        missing = [key for key in required if key not in archive.files]
        if missing:
            raise CompressError(
                f"The data file {path!r} is missing {', '.join(missing)}. It contains "
                f"{', '.join(archive.files) or 'no arrays'}. Save it with "
                "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
            )
        arrays = {key: archive[key] for key in DATA_KEYS if key in archive.files}
    train_keys_present = "x_train" in arrays and "y_train" in arrays
    return Dataset(
        x_train=_as_inputs(arrays["x_train"], "x_train", path) if train_keys_present else None,
        y_train=_as_labels(arrays["y_train"], "y_train", path) if train_keys_present else None,
        x_test=_as_inputs(arrays["x_test"], "x_test", path),
        y_test=_as_labels(arrays["y_test"], "y_test", path),
        source=path,
    )


def _as_inputs(array, key, path):
    if not np.issubdtype(array.dtype, np.number) or array.ndim < 2 or len(array) == 0:
        raise CompressError(
            f"{key} in {path!r} must be a non-empty numeric array with a batch axis. "
            f"Received: dtype {array.dtype}, shape {array.shape}"
        )
    return array.astype("float32")


def _as_labels(array, key, path):
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0)
    )
    if array.ndim != 1 or not integral or len(array) == 0:
        raise CompressError(
            f"{key} in {path!r} must be integer class labels of shape (n,). One-hot "
            f"labels can be turned into classes with argmax(axis=-1). "
            f"Received: dtype {array.dtype}, shape {array.shape}"
        )
    return array.astype("int64")


def _load_folder(path, input_shape):
    import keras

    if input_shape is None or len(input_shape) != 3 or input_shape[2] not in _CHANNEL_MODES:
        raise CompressError(
            f"An image folder ({path!r}) needs a model with input shape (height, width, "
            f"channels) and 1, 3 or 4 channels. Received: input shape {input_shape}"
        )
    height, width, channels = input_shape
    if height is None or width is None:
        raise CompressError(
            f"An image folder ({path!r}) needs a model with a fixed image size. "
            f"Received: input shape {input_shape}"
        )
    try:
        train, test = keras.utils.image_dataset_from_directory(
            path,
            labels="inferred",
            label_mode="int",
            color_mode=_CHANNEL_MODES[channels],
            image_size=(height, width),
            batch_size=BATCH_SIZE,
            shuffle=True,
            seed=FOLDER_SPLIT_SEED,
            validation_split=FOLDER_TEST_FRACTION,
            subset="both",
            verbose=False,
        )
    except ValueError as error:
        raise CompressError(
            f"The image folder {path!r} cannot be read ({error}). It needs one "
            f"sub-folder per class holding {', '.join(_IMAGE_SUFFIXES)} images."
        ) from None
    # NOTE: the folder is read into memory, which suits data sets that fit
    # in RAM, the scale this command targets.
    x_train, y_train = _dataset_arrays(train)
    x_test, y_test = _dataset_arrays(test)
    if len(x_train) == 0 or len(x_test) == 0:
        raise CompressError(
            f"The image folder {path!r} has too few images for a training and a test "
            "split. Add images to each class sub-folder."
        )
    return Dataset(x_train, y_train, x_test, y_test, source=path)


def _dataset_arrays(dataset):
    xs, ys = [], []
    for x, y in dataset:
        xs.append(np.asarray(x, dtype="float32"))
        ys.append(np.asarray(y, dtype="int64"))
    if not xs:
        return np.zeros((0,), "float32"), np.zeros((0,), "int64")
    return np.concatenate(xs), np.concatenate(ys)


def check_data_fits(model, data, model_path):
    """Check that the data's inputs and labels fit the model.

    Args:
        model: A classifier from `load_model`.
        data: A `Dataset`.
        model_path: The model's file name, for messages.

    Raises:
        CompressError: If an input shape differs from the model's input
            shape, the train and test inputs differ in shape, or a label is
            outside `[0, classes)`.
    """
    expected = tuple(model.inputs[0].shape[1:])
    present = [key for key in ("x_train", "x_test") if getattr(data, key) is not None]
    for key in present:
        shape = getattr(data, key).shape[1:]
        fits = len(shape) == len(expected) and all(
            want is None or want == got for want, got in zip(expected, shape)
        )
        if not fits:
            raise CompressError(
                f"{key} in {data.source!r} has examples of shape {tuple(shape)} but the "
                f"model {model_path!r} expects {expected}. Reshape the data, for example "
                f"x.reshape((-1,) + {expected})."
            )
    classes = int(model.outputs[0].shape[1])
    for key in [key.replace("x_", "y_") for key in present]:
        labels = getattr(data, key)
        if labels.min() < 0 or labels.max() >= classes:
            raise CompressError(
                f"{key} in {data.source!r} has labels from {labels.min()} to {labels.max()} "
                f"but the model {model_path!r} has {classes} classes (labels 0 to {classes - 1})."
            )
    for x_key in present:
        y_key = x_key.replace("x_", "y_")
        if len(getattr(data, x_key)) != len(getattr(data, y_key)):
            raise CompressError(
                f"{x_key} and {y_key} in {data.source!r} differ in length: "
                f"{len(getattr(data, x_key))} and {len(getattr(data, y_key))}."
            )


def accuracy(predictions, labels):
    """Return the fraction of rows whose argmax equals the label."""
    return float(np.mean(np.argmax(predictions, axis=-1) == labels))


def keras_accuracy(model, data, batch_size=256):
    """Return the test accuracy of a Keras classifier on `data`."""
    # Eager calls instead of `predict`: a pipeline evaluates several new
    # models, and each `predict` would trace a new tf.function, which
    # TensorFlow reports as excessive retracing.
    predictions = [
        np.asarray(model(data.x_test[start : start + batch_size], training=False))
        for start in range(0, len(data.x_test), batch_size)
    ]
    return accuracy(np.concatenate(predictions), data.y_test)


def tflite_accuracy(content, data):
    """Return the test accuracy of a `.tflite` classifier, run with LiteRT."""
    from keras_cost.quantization import TFLiteModel

    return accuracy(TFLiteModel(content).predict(data.x_test, batch_size=256), data.y_test)


def _weighted_layer_types():
    import keras

    return (
        keras.layers.Dense,
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Conv3D,
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
        keras.layers.SeparableConv1D,
        keras.layers.SeparableConv2D,
    )


def _output_layer_name(model):
    """Return the name of the last Dense or convolution layer: it produces the classes."""
    weighted = [layer for layer in model.layers if isinstance(layer, _weighted_layer_types())]
    if not weighted:
        raise CompressError(
            f"Model {model.name!r} has no Dense or convolution layer to compress."
        )
    return weighted[-1].name


def scale_width(model, fraction):
    """Return an untrained copy of `model` with fewer units and filters.

    Every Dense and convolution layer except the last one (which produces
    the classes) gets `max(1, round(width * fraction))` units or filters.
    The copy is built with `keras.models.clone_model` from modified layer
    configs, so other layers adapt to the new shapes.

    Args:
        model: A Sequential or functional `keras.Model` without nested models.
        fraction: Width of the copy relative to `model`, in (0, 1].

    Returns:
        A new `keras.Model` with freshly initialized weights.

    Raises:
        CompressError: If the model is subclassed or nests models, or the
            narrower copy cannot be built.
    """
    import keras

    # Sequential and functional models have symbolic inputs, but subclassed ones do not.
    graph_model = bool(getattr(model, "inputs", None))
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if not graph_model or nested:
        reason = f"nests the models {', '.join(nested)}" if nested else "is subclassed"
        raise CompressError(
            f"--distill-width rebuilds Sequential and functional models layer by layer, "
            f"but model {model.name!r} {reason}. Build a narrower student yourself and "
            "distill it with keras_cost.DistillerModel, or omit --distill-width."
        )
    keep = _output_layer_name(model)

    def narrow(layer):
        config = layer.get_config()
        if isinstance(layer, _weighted_layer_types()) and layer.name != keep:
            key = "units" if "units" in config else "filters"
            config[key] = max(1, round(config[key] * fraction))
        return type(layer).from_config(config)

    try:
        student = keras.models.clone_model(model, clone_function=narrow)
    except ValueError as error:
        raise CompressError(
            f"--distill-width {fraction:g} cannot narrow model {model.name!r}: {error}"
        ) from None
    student.name = f"{model.name}_student"
    return student


def _compile(model, from_logits, learning_rate):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )


def _fit(model, data, epochs, callbacks=None):
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        callbacks=callbacks,
        verbose=fit_verbosity(),
    )


def _distill(teacher, data, settings, from_logits, say):
    from keras_cost.distillation import DistillerModel

    student = scale_width(teacher, settings.distill_width)
    say(
        f"distilling a student of width {settings.distill_width:g} "
        f"({student.count_params():,} parameters against {teacher.count_params():,})"
    )
    distiller = DistillerModel(student, teacher, alpha=0.1, temperature=4.0, from_logits=from_logits)
    _compile(distiller, from_logits, LEARNING_RATE)
    _fit(distiller, data, settings.epochs)
    return distiller.student


def _copy_model(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _prune(model, data, settings, from_logits, say):
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import PolynomialDecay

    kind = "neurons and filters" if settings.structured else "weights"
    say(f"pruning {settings.sparsity:.0%} of the {kind} while fine-tuning")
    steps = settings.epochs * int(np.ceil(len(data.x_train) / BATCH_SIZE))
    schedule = PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=settings.sparsity,
        begin_step=0,
        end_step=max(1, int(PRUNE_RAMP_FRACTION * steps)),
    )
    if settings.structured:
        # Removing whole units of the last layer would remove classes.
        keep = _output_layer_name(model)
        callback = PruneCallback(schedule, granularity="neuron", layers=lambda layer: layer.name != keep)
    else:
        # One threshold across layers leaves small layers (such as a first
        # convolution with a few hundred weights) denser than large ones.
        callback = PruneCallback(schedule, scope="global")
    _compile(model, from_logits, LEARNING_RATE)
    _fit(model, data, settings.epochs, callbacks=[callback])
    return model


def _quantize_aware(model, data, settings, from_logits, say):
    from keras_cost.quantization import quantize_model

    say("quantization-aware fine-tuning for int8")
    qat_model = quantize_model(model)
    _compile(qat_model, from_logits, LEARNING_RATE)
    _fit(qat_model, data, settings.epochs)
    return qat_model


def _export(model, data, quantize):
    from keras_cost.quantization import export_tflite

    if quantize == "int8":
        return export_tflite(
            model, representative_data=data.x_train[:REPRESENTATIVE_EXAMPLES], quantize="int8"
        )
    return export_tflite(model, quantize=quantize)


def _remove_pruned_units(model, say):
    """Return `model` without its pruned units, or `None` where `shrink` cannot remove them."""
    from keras_cost.pruning import shrink
    from keras_cost.pruning import strip_pruning

    try:
        smaller = shrink(strip_pruning(model))
    except (TypeError, ValueError) as error:
        reason = str(error).splitlines()[0]
        say(f"the pruned units stay in place as zeros, because shrink cannot remove them: {reason}")
        return None
    say(f"removed the pruned units: {model.count_params():,} -> {smaller.count_params():,} parameters")
    return smaller


def _strip(model, pruned):
    from keras_cost.pruning import strip_pruning

    return strip_pruning(model) if pruned else model


def compress_model(model, data, settings, original_accuracy=None, command="compress"):
    """Compress a trained classifier and export it to TFLite.

    The stages run in this order, and a stage whose setting is off is
    skipped. First a narrower student is distilled (`distill_width`). It is
    pruned while fine-tuning with a polynomial schedule (`sparsity`,
    `structured`), to one global magnitude threshold or, when structured,
    by whole neurons and filters. Then it is fine-tuned quantization-aware
    (`quantize="int8"`) and exported to a `.tflite` file: int8 with the
    first 256 training inputs as representative data, float16, dynamic
    range or float32. Every training stage runs
    `settings.epochs` epochs of Adam at learning rate 1e-3 and batch size 32.
    The input model is not changed.

    Args:
        model: A trained Keras classifier from `load_model`.
        data: A `Dataset` that passed `check_data_fits`.
        settings: A `CompressSettings`.
        original_accuracy: Test accuracy of `model`, or `None` to measure it.
        command: Command name for the progress lines.

    Returns:
        A `CompressResult`.
    """
    import keras

    def say(message):
        status(command, message)

    from_logits = output_is_logits(model)
    if original_accuracy is None:
        original_accuracy = keras_accuracy(model, data)
        say(f"original test accuracy {original_accuracy:.2%}")
    keras.utils.set_random_seed(settings.seed)
    start = time.perf_counter()

    working = _distill(model, data, settings, from_logits, say) if settings.distill_width else _copy_model(model)
    masked = settings.sparsity > 0
    if masked:
        working = _prune(working, data, settings, from_logits, say)
    elif settings.distill_width is None and settings.quantize != "int8":
        say("no training stage selected, so the model is exported as it is")
    if settings.structured:
        smaller = _remove_pruned_units(working, say)
        if smaller is not None:
            working, masked = smaller, False
    keras_model = _strip(working, masked)
    keras_acc = keras_accuracy(keras_model, data)

    export_source = keras_model
    if settings.quantize == "int8":
        # The masks stay on the kernels as constraints, so QAT keeps the zeros.
        export_source = _quantize_aware(working, data, settings, from_logits, say)
        keras_model = _strip(export_source, masked)
        keras_acc = keras_accuracy(keras_model, data)
    train_seconds = time.perf_counter() - start

    say(f"exporting the .tflite file ({settings.quantize or 'float32'}) and evaluating it with LiteRT")
    content = _export(export_source, data, settings.quantize)
    return CompressResult(
        settings=settings,
        original_accuracy=original_accuracy,
        keras_accuracy=keras_acc,
        tflite_accuracy=tflite_accuracy(content, data),
        keras_model=keras_model,
        tflite_bytes=content,
        train_seconds=train_seconds,
    )


def search_ladder(quantize=None, structured=False, distill_width=None, epochs=3, seed=0):
    """Return the settings tried by `search`, strongest compression first.

    The ladder crosses `SEARCH_SPARSITIES` with int8 and float32 export, or
    with the one `quantize` mode given, and orders the candidates by their
    estimated weight bytes, `(1 - sparsity) * bytes per weight`.

    Args:
        quantize: `None` to try int8 and float32, or one mode to keep fixed.
        structured: Whether every candidate prunes neurons and filters.
        distill_width: Student width applied to every candidate, or `None`.
        epochs: Epochs of each training stage.
        seed: Seed of every candidate.

    Returns:
        A list of `CompressSettings`.

    Example:

    >>> [s.describe() for s in search_ladder(quantize="int8")][:2]
    ['90% sparse (unstructured), int8', '80% sparse (unstructured), int8']
    """
    modes = [quantize] if quantize else ["int8", None]
    bytes_per_weight = {"int8": 1, "dynamic": 1, "float16": 2, None: 4}
    candidates = [
        CompressSettings(
            sparsity=sparsity,
            structured=structured,
            quantize=mode,
            distill_width=distill_width,
            epochs=epochs,
            seed=seed,
        )
        for mode in modes
        for sparsity in SEARCH_SPARSITIES
    ]
    return sorted(candidates, key=lambda s: (1 - s.sparsity) * bytes_per_weight[s.quantize])


def search(model, data, max_drop_points, ladder, command="compress"):
    """Find the strongest compression whose accuracy stays within a budget.

    Candidates are tried in ladder order (strongest first) and the first
    whose `.tflite` test accuracy is at most `max_drop_points` percentage
    points below the original model's is returned, so later, weaker
    candidates are never trained.

    NOTE: the budget is checked on the test split, the same split that the
    report quotes, so the chosen model's accuracy is slightly optimistic.

    Args:
        model: A trained Keras classifier from `load_model`.
        data: A `Dataset` that passed `check_data_fits`.
        max_drop_points: Accuracy budget in percentage points, at least 0.
        ladder: `CompressSettings` to try, strongest first.
        command: Command name for the progress lines.

    Returns:
        A tuple `(chosen, tried)`: the chosen `CompressResult`, or `None` if
        no candidate stayed within the budget, and a list of
        `(settings, tflite_accuracy)` pairs for every candidate tried.
    """
    original_accuracy = keras_accuracy(model, data)
    status(command, f"original test accuracy {original_accuracy:.2%}, budget {max_drop_points:g} points")
    tried = []
    for index, settings in enumerate(ladder, start=1):
        status(command, f"search {index}/{len(ladder)}: {settings.describe()}")
        result = compress_model(model, data, settings, original_accuracy, command)
        tried.append((settings, result.tflite_accuracy))
        verdict = "within" if result.accuracy_drop_points <= max_drop_points else "outside"
        status(
            command,
            f"search {index}/{len(ladder)}: {result.tflite_accuracy:.2%} "
            f"({-result.accuracy_drop_points:+.2f} points), {verdict} the budget",
        )
        if verdict == "within":
            return result, tried
    return None, tried


def _original_result(model, data, original_accuracy, settings):
    """Return the uncompressed model as a result, when no search candidate fits."""
    content = _export(model, data, None)
    return CompressResult(
        settings=settings,
        original_accuracy=original_accuracy,
        keras_accuracy=original_accuracy,
        tflite_accuracy=tflite_accuracy(content, data),
        keras_model=model,
        tflite_bytes=content,
        train_seconds=0.0,
    )


def write_outputs(out_dir, model_path, model, result, data, tried=None, max_drop_points=None):
    """Write the compressed model, the `.tflite` file and the reports into `out_dir`.

    Files: `compressed.keras`, `compressed.tflite`, `report.md`,
    `report.json` and `tradeoff.png`. Each is written to a temporary file
    and renamed, so an interrupted run leaves the previous file in place.

    Args:
        out_dir: Output folder, created if missing.
        model_path: Path of the input model, for the report.
        model: The input model.
        result: The `CompressResult` to write.
        data: The `Dataset`, for the report.
        tried: For a search, the `(settings, tflite_accuracy)` pairs tried.
        max_drop_points: For a search, the accuracy budget in points.

    Returns:
        The report as a dict, as written to `report.json`.
    """
    from keras_cost._io import atomic_save_keras
    from keras_cost._io import atomic_write_bytes
    from keras_cost._io import atomic_write_text
    from keras_cost.cost import compare
    from keras_cost.cost import model_cost

    os.makedirs(out_dir, exist_ok=True)
    keras_path = os.path.join(out_dir, "compressed.keras")
    tflite_path = os.path.join(out_dir, "compressed.tflite")
    atomic_save_keras(result.keras_model, keras_path)
    atomic_write_bytes(tflite_path, result.tflite_bytes)

    reports = [
        model_cost(model, name=f"original {os.path.basename(model_path)}"),
        model_cost(result.keras_model, name="compressed.keras"),
        model_cost(tflite_path, name="compressed.tflite"),
    ]
    accuracies = [result.original_accuracy, result.keras_accuracy, result.tflite_accuracy]
    table, rows = compare(reports)
    size_ratio = reports[0].zipped_bytes / reports[2].zipped_bytes

    summary = {
        "model": os.path.abspath(model_path),
        "data": os.path.abspath(data.source),
        "train_examples": int(len(data.x_train)),
        "test_examples": int(len(data.x_test)),
        "settings": dataclasses.asdict(result.settings),
        "chosen": result.settings.describe(),
        "original_accuracy": result.original_accuracy,
        "keras_accuracy": result.keras_accuracy,
        "tflite_accuracy": result.tflite_accuracy,
        "accuracy_drop_points": result.accuracy_drop_points,
        "zipped_size_ratio": size_ratio,
        "train_seconds": result.train_seconds,
        "models": [dict(row, accuracy=acc) for row, acc in zip(rows, accuracies)],
    }
    if max_drop_points is not None:
        summary["max_accuracy_drop"] = max_drop_points
        summary["search"] = [
            {"settings": s.describe(), "tflite_accuracy": acc} for s, acc in tried
        ]
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "report.md"), _markdown(summary, table, accuracies, reports))
    _write_plot(reports, accuracies, os.path.join(out_dir, "tradeoff.png"))
    return summary


def _markdown(summary, table, accuracies, reports):
    lines = [
        "# keras-cost compress report",
        "",
        f"Model: `{summary['model']}`. Data: `{summary['data']}`, "
        f"{summary['train_examples']:,} training and {summary['test_examples']:,} test examples.",
        f"Compression: {summary['chosen']}. Training time: {summary['train_seconds']:.1f} s.",
        "",
        "| model | test accuracy |",
        "| --- | ---: |",
    ]
    lines += [f"| {report.name} | {acc:.2%} |" for report, acc in zip(reports, accuracies)]
    lines += [
        "",
        f"The zipped `.tflite` file (zlib level 9) is {_size_change(summary['zipped_size_ratio'])} "
        f"than the zipped float32 weights of the original, at {-summary['accuracy_drop_points']:+.2f} "
        "accuracy points.",
        "",
        table,
        "",
    ]
    if "search" in summary:
        lines += [
            f"## Search within {summary['max_accuracy_drop']:g} accuracy points",
            "",
            "| candidate | .tflite accuracy |",
            "| --- | ---: |",
        ]
        lines += [f"| {row['settings']} | {row['tflite_accuracy']:.2%} |" for row in summary["search"]]
        lines.append("")
    return "\n".join(lines)


def _size_change(ratio):
    """Describe an old-to-new size ratio, such as `"11.7x smaller"`."""
    if ratio >= 1:
        return f"{ratio:.1f}x smaller"
    return f"{1 / ratio:.1f}x larger"


def _write_plot(reports, accuracies, path):
    from keras_cost._io import atomic_write_bytes
    from keras_cost.cost import plot_tradeoff

    # plot_tradeoff saves through matplotlib, which accepts a file object,
    # so the PNG goes to memory first and then to disk in one rename.
    buffer = io.BytesIO()
    plot_tradeoff(reports, buffer, accuracies)
    atomic_write_bytes(path, buffer.getvalue())


def run_compress(model_path, data_path, out_dir, settings=None, max_drop_points=None, ladder=None):
    """Run `keras-cost compress`: validate, compress or search, write the outputs.

    Args:
        model_path: Path to the `.keras` classifier.
        data_path: Path to the `.npz` file or image folder.
        out_dir: Output folder.
        settings: A `CompressSettings` for a single run. With
            `max_drop_points`, only its `quantize`, `structured`,
            `distill_width` and `epochs` are used, to build the ladder.
        max_drop_points: Accuracy budget in points for a search, or `None`.
        ladder: Search candidates, or `None` for `search_ladder(...)`.

    Returns:
        The report dict written to `report.json`.

    Raises:
        CompressError: For any invalid input, before training starts.
    """
    settings = settings or CompressSettings()
    if max_drop_points is not None and max_drop_points < 0:
        raise CompressError(
            "The accuracy budget must be at least 0 points. Pass for example "
            f"--max-accuracy-drop 1. Received: max_accuracy_drop={max_drop_points}"
        )
    if max_drop_points is not None and settings.sparsity > 0:
        raise CompressError(
            "--max-accuracy-drop searches the sparsity itself, so it cannot be combined "
            f"with --prune. Remove one of them. Received: prune={settings.sparsity}"
        )
    if max_drop_points is None and settings.structured and settings.sparsity == 0.0:
        raise CompressError(
            "--structured selects neuron pruning and needs a sparsity. Add --prune, "
            "for example --prune 0.5, or --max-accuracy-drop. Received: sparsity=0.0"
        )
    check_file(model_path, "model")
    check_file(data_path, "data")
    if not os.path.isdir(data_path):
        data = load_data(data_path)
    status("compress", f"loading {model_path}")
    model = load_model(model_path)
    if os.path.isdir(data_path):
        data = load_data(data_path, tuple(model.inputs[0].shape[1:]))
    check_data_fits(model, data, model_path)
    if settings.distill_width is not None:
        scale_width(model, settings.distill_width)

    if max_drop_points is None:
        result = compress_model(model, data, settings)
        tried = None
    else:
        ladder = ladder or search_ladder(
            quantize=settings.quantize,
            structured=settings.structured or False,
            distill_width=settings.distill_width,
            epochs=settings.epochs,
            seed=settings.seed,
        )
        result, tried = search(model, data, max_drop_points, ladder)
        if result is None:
            status(
                "compress",
                f"no candidate stayed within {max_drop_points:g} points, so the original "
                "model is written unchanged as float32",
            )
            result = _original_result(model, data, keras_accuracy(model, data), CompressSettings(epochs=settings.epochs, seed=settings.seed))
        else:
            status("compress", f"chose {result.settings.describe()}")

    summary = write_outputs(out_dir, model_path, model, result, data, tried, max_drop_points)
    status(
        "compress",
        f"{summary['chosen']}: accuracy {result.original_accuracy:.2%} -> {result.tflite_accuracy:.2%} "
        f"({-result.accuracy_drop_points:+.2f} points), zipped .tflite "
        f"{_size_change(summary['zipped_size_ratio'])} than the zipped float32 weights",
    )
    status("compress", f"wrote compressed.keras, compressed.tflite, report.md, report.json, tradeoff.png to {os.path.abspath(out_dir)}")
    return summary


def run_report(model_path, data_path=None):
    """Run `keras-cost report`: print the cost table and, with data, the test accuracy.

    Args:
        model_path: Path to a `.keras` or `.tflite` file.
        data_path: Optional `.npz` file or image folder.

    Returns:
        A tuple `(cost, accuracy)`: the `ModelCost` and the test accuracy,
        or `None` without data.

    Raises:
        CompressError: If a file is missing or does not load, or the data
            does not fit the model.
    """
    check_file(model_path, "model")
    if data_path is not None:
        check_file(data_path, "data")
    if model_path.endswith(".tflite"):
        return _report_tflite(model_path, data_path)
    model = load_model(model_path)
    data = None
    if data_path is not None:
        input_shape = tuple(model.inputs[0].shape[1:])
        data = load_data(data_path, input_shape, test_only=True)
        check_data_fits(model, data, model_path)

    from keras_cost.cost import model_cost

    cost = model_cost(model, name=os.path.basename(model_path))
    print(cost.to_markdown())
    accuracy_value = None
    if data is not None:
        accuracy_value = keras_accuracy(model, data)
        print(f"\ntest accuracy: {accuracy_value:.2%} on {len(data.x_test):,} examples of {data.source}")
    return cost, accuracy_value


def _report_tflite(model_path, data_path):
    from keras_cost.cost import model_cost
    from keras_cost.quantization import TFLiteModel

    try:
        runner = TFLiteModel(model_path)
    except (ValueError, RuntimeError) as error:
        raise CompressError(
            f"The file {model_path!r} does not load as a TFLite model ({error}). "
            "Pass a file written by keras_cost.export_tflite or the TFLite converter."
        ) from None
    data = None
    if data_path is not None:
        input_shape = tuple(runner.input_details[0]["shape"][1:])
        data = load_data(data_path, input_shape, test_only=True)
        _check_tflite_fits(runner, data, model_path)
    cost = model_cost(model_path)
    print(cost.to_markdown())
    accuracy_value = None
    if data is not None:
        accuracy_value = accuracy(runner.predict(data.x_test, batch_size=256), data.y_test)
        print(f"\ntest accuracy: {accuracy_value:.2%} on {len(data.x_test):,} examples of {data.source}")
    return cost, accuracy_value


def _check_tflite_fits(runner, data, model_path):
    if len(runner.input_details) != 1:
        raise CompressError(
            f"The model {model_path!r} has {len(runner.input_details)} inputs, but "
            "keras-cost report evaluates classifiers with one input."
        )
    expected = tuple(int(size) for size in runner.input_details[0]["shape"][1:])
    shape = tuple(data.x_test.shape[1:])
    if shape != expected:
        raise CompressError(
            f"x_test in {data.source!r} has examples of shape {shape} but the model "
            f"{model_path!r} expects {expected}. Reshape the data, for example "
            f"x.reshape((-1,) + {expected})."
        )
