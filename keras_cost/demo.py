"""The main job: compress a digits CNN end to end and report each stage's cost.

The pipeline is the one this package exists for, on real data that ships
with scikit-learn:

1. train a float CNN teacher;
2. distill a smaller student from it with `DistillerModel`;
3. prune the student with `PruneCallback` and a polynomial schedule;
4. fine-tune the pruned student quantization-aware (`quantize_model`);
5. export an int8 `.tflite` file and evaluate it with the LiteRT interpreter.
"""

import dataclasses
import json
import os
import sys
import time
import zlib

import numpy as np

# Stage lengths tuned so that the whole demo finishes in about one minute on
# 2 CPU cores (measured with the command in benchmarks/RESULTS.md).
DEFAULT_EPOCHS = {"teacher": 12, "distill": 20, "prune": 10, "qat": 4}
BATCH_SIZE = 32


@dataclasses.dataclass
class DemoConfig:
    """Settings of one demo run.

    Args:
        out_dir: Folder for the models and reports. Created if missing.
        epochs: Epochs for every stage, or `None` for `DEFAULT_EPOCHS`.
        seed: Seed for weights and data order.
        sparsity: Target fraction of zero weights in the pruned student.

    Raises:
        ValueError: If `epochs` is below 1, `seed` is negative, `sparsity`
            is outside [0, 1) or `out_dir` is a file or not writable.
    """

    out_dir: str = "keras-cost-demo"
    epochs: int | None = None
    seed: int = 0
    sparsity: float = 0.75

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(
                f"`epochs` must be at least 1. Received: epochs={self.epochs}"
            )
        if self.seed < 0:
            raise ValueError(f"`seed` must be non-negative. Received: seed={self.seed}")
        if not 0.0 <= self.sparsity < 1.0:  # Also rejects NaN.
            raise ValueError(
                "`sparsity` must be in [0, 1), the fraction of weights set to "
                f"zero; pass for example 0.75. Received: sparsity={self.sparsity}"
            )

        from keras_cost._io import check_writable_folder

        check_writable_folder(self.out_dir)

    def stage_epochs(self, stage):
        """Return the number of epochs for `stage`, a key of `DEFAULT_EPOCHS`."""
        if self.epochs is None:
            return DEFAULT_EPOCHS[stage]
        return self.epochs


@dataclasses.dataclass
class StageResult:
    """One row of the demo report."""

    stage: str
    accuracy: float
    parameters: int
    non_zeros: int
    flops: int
    file: str
    file_bytes: int
    zipped_bytes: int
    train_seconds: float


def build_teacher():
    """Build the float CNN teacher (about 283,000 parameters)."""
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10, name="logits"),
        ],
        name="teacher",
    )


def build_student():
    """Build the student CNN (about 38,000 parameters, 7 times fewer than the teacher).

    The student keeps a Dense hidden layer because an int8 `.tflite` file
    carries about 5 KB of fixed overhead: with fewer than about 20,000
    weights that overhead alone keeps the int8 file above 0.3 times the
    float32 file.
    """
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="student",
    )


def _status(message):
    print(f"[keras-cost demo] {message}", flush=True)


def _fit_verbosity():
    # A progress bar redraws in a terminal but floods a log file, so fall
    # back to one line per epoch when stdout is not a terminal.
    return 1 if sys.stdout.isatty() else 2


def _zipped_size(path):
    with open(path, "rb") as file:
        return len(zlib.compress(file.read(), 9))


def _keras_row(stage, model, accuracy, path, train_seconds):
    from keras_cost.cost import model_cost

    cost = model_cost(model)
    return StageResult(
        stage=stage,
        accuracy=accuracy,
        parameters=cost.parameters,
        non_zeros=cost.nonzero_parameters,
        flops=cost.flops,
        file=os.path.basename(path),
        file_bytes=os.path.getsize(path),
        zipped_bytes=_zipped_size(path),
        train_seconds=train_seconds,
    )


def _tflite_row(stage, source_row, accuracy, path, train_seconds):
    # A .tflite file contains the same weights as the Keras model it came from,
    # so parameters, non-zeros and FLOPs are the source model's.
    return StageResult(
        stage=stage,
        accuracy=accuracy,
        parameters=source_row.parameters,
        non_zeros=source_row.non_zeros,
        flops=source_row.flops,
        file=os.path.basename(path),
        file_bytes=os.path.getsize(path),
        zipped_bytes=_zipped_size(path),
        train_seconds=train_seconds,
    )


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _compile(model):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _timed_fit(model, x, y, epochs, callbacks=None):
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        callbacks=callbacks,
        verbose=_fit_verbosity(),
    )
    return time.perf_counter() - start


def run_demo(config):
    """Run the five stages and write the report files into `config.out_dir`.

    Args:
        config: A `DemoConfig`.

    Returns:
        The list of `StageResult` rows, also written to `report.json`.
    """
    import keras

    from keras_cost._io import atomic_save_keras
    from keras_cost._io import atomic_write_bytes
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.datasets import load_digits
    from keras_cost.distillation import DistillerModel
    from keras_cost.pruning import PolynomialDecay
    from keras_cost.pruning import strip_pruning
    from keras_cost.quantization import TFLiteModel
    from keras_cost.quantization import export_tflite
    from keras_cost.quantization import quantize_model

    os.makedirs(config.out_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    (x_train, y_train), (x_test, y_test) = load_digits()
    rows = []

    def out(name):
        return os.path.join(config.out_dir, name)

    # 1. Float teacher.
    _status("1/5 training the float CNN teacher")
    teacher = build_teacher()
    _compile(teacher)
    seconds = _timed_fit(teacher, x_train, y_train, config.stage_epochs("teacher"))
    accuracy = _accuracy(teacher.predict(x_test, verbose=0), y_test)
    atomic_save_keras(teacher, out("teacher.keras"))
    rows.append(_keras_row("teacher (float)", teacher, accuracy, out("teacher.keras"), seconds))
    _status(f"teacher test accuracy {accuracy:.2%}")

    # 2. Distilled student.
    _status("2/5 distilling a smaller student from the teacher")
    student = build_student()
    distiller = DistillerModel(student, teacher, alpha=0.1, temperature=4.0)
    _compile(distiller)
    seconds = _timed_fit(distiller, x_train, y_train, config.stage_epochs("distill"))
    student = distiller.student
    student_accuracy = _accuracy(student.predict(x_test, verbose=0), y_test)
    atomic_save_keras(student, out("student.keras"))
    rows.append(_keras_row("student (distilled)", student, student_accuracy, out("student.keras"), seconds))
    _status(f"student test accuracy {student_accuracy:.2%}")

    # 3. Pruned student. The polynomial schedule reaches the target at 70%
    # of the steps, so the last epochs fine-tune at the final sparsity.
    _status(f"3/5 pruning the student to {config.sparsity:.0%} sparsity")
    prune_epochs = config.stage_epochs("prune")
    steps = prune_epochs * int(np.ceil(len(x_train) / BATCH_SIZE))
    schedule = PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=config.sparsity,
        begin_step=0,
        end_step=max(1, int(0.7 * steps)),
    )
    _compile(student)
    seconds = _timed_fit(student, x_train, y_train, prune_epochs, callbacks=[PruneCallback(schedule)])
    pruned_accuracy = _accuracy(student.predict(x_test, verbose=0), y_test)
    pruned_plain = strip_pruning(student)
    atomic_save_keras(pruned_plain, out("student_pruned.keras"))
    rows.append(_keras_row("student pruned", pruned_plain, pruned_accuracy, out("student_pruned.keras"), seconds))
    _status(f"pruned student test accuracy {pruned_accuracy:.2%}")

    # 4. Quantization-aware fine-tuning. The pruned student still carries its
    # masks as kernel constraints, so the zeros hold through this training.
    _status("4/5 quantization-aware training of the pruned student")
    qat_model = quantize_model(student)
    _compile(qat_model)
    qat_seconds = _timed_fit(qat_model, x_train, y_train, config.stage_epochs("qat"))
    qat_accuracy = _accuracy(qat_model.predict(x_test, verbose=0), y_test)
    _status(f"QAT student test accuracy in Keras (fake-quantized) {qat_accuracy:.2%}")

    # 5. Export and evaluate with the LiteRT interpreter.
    _status("5/5 exporting .tflite files and evaluating them with LiteRT")
    float_bytes = export_tflite(pruned_plain)
    atomic_write_bytes(out("student_float.tflite"), float_bytes)
    float_tflite_accuracy = _accuracy(TFLiteModel(float_bytes).predict(x_test), y_test)
    rows.append(
        _tflite_row("student pruned .tflite float32", rows[-1], float_tflite_accuracy, out("student_float.tflite"), 0.0)
    )

    int8_bytes = export_tflite(qat_model, representative_data=x_train[:256], quantize="int8")
    atomic_write_bytes(out("student_int8.tflite"), int8_bytes)
    int8_accuracy = _accuracy(TFLiteModel(int8_bytes).predict(x_test), y_test)
    rows.append(
        _tflite_row("student pruned QAT .tflite int8", rows[-2], int8_accuracy, out("student_int8.tflite"), qat_seconds)
    )

    _write_reports(rows, config)
    print(to_markdown(rows))
    float_student = rows[1]
    float_tflite = rows[-2]
    int8_row = rows[-1]
    _status(
        f"int8 student: {int8_row.accuracy:.2%} accuracy, "
        f"{(int8_row.accuracy - float_student.accuracy) * 100:+.1f} points against the float distilled student "
        f"and {(int8_row.accuracy - float_tflite.accuracy) * 100:+.1f} against the pruned float .tflite; "
        f"file {int8_row.file_bytes / float_tflite.file_bytes:.2f}x the float .tflite file, "
        f"{int8_row.zipped_bytes / 1024:.1f} KiB zipped"
    )
    _status(f"reports written to {os.path.abspath(config.out_dir)}")
    return rows


def to_markdown(rows):
    """Format demo rows as a Markdown table.

    Args:
        rows: `StageResult` rows.

    Returns:
        The table as a string.
    """
    header = (
        "| stage | accuracy | parameters | non-zeros | FLOPs | file | file bytes | zipped bytes | train s |\n"
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n"
    )
    lines = [
        f"| {r.stage} | {r.accuracy:.2%} | {r.parameters:,} | {r.non_zeros:,} | {r.flops:,} "
        f"| {r.file} | {r.file_bytes:,} | {r.zipped_bytes:,} | {r.train_seconds:.1f} |"
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"


def _write_reports(rows, config):
    from keras_cost._io import atomic_write_text

    out_dir = config.out_dir
    markdown = (
        "# keras-cost demo report\n\n"
        f"Data: scikit-learn digits, 1,437 training and 360 test images. Seed {config.seed}, "
        f"target sparsity {config.sparsity:.0%}.\n"
        "FLOPs count a multiply-add as 2, per example. Zipped bytes are zlib level 9 of the file.\n\n"
        + to_markdown(rows)
    )
    atomic_write_text(os.path.join(out_dir, "report.md"), markdown)

    payload = {
        "seed": config.seed,
        "sparsity": config.sparsity,
        "stages": [dataclasses.asdict(row) for row in rows],
    }
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(payload, indent=2) + "\n")
    _plot(rows, os.path.join(out_dir, "tradeoff.png"))


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_cost._io import atomic_write_bytes

    from matplotlib.ticker import FuncFormatter
    from matplotlib.ticker import LogLocator

    figure, axes = plt.subplots(figsize=(8, 4.8))
    # Stages that share a point (a pruned model and its float .tflite file)
    # get their labels on alternate sides so the text does not overlap.
    for index, row in enumerate(rows):
        x = row.zipped_bytes / 1024
        y = row.accuracy * 100
        axes.scatter(x, y, s=60)
        offset = (8, 6) if index % 2 == 0 else (8, -14)
        axes.annotate(row.stage, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.margins(x=0.25, y=0.15)
    axes.set_xlabel("zipped file size (KiB, log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("keras-cost demo: accuracy against deployed size (digits)")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()

    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
