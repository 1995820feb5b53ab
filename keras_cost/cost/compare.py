"""Side-by-side tables and trade-off plots of several `ModelCost` reports."""

import math

from keras_cost.cost.report import ModelCost
from keras_cost.cost.report import format_value

_COLUMNS = [
    ("model", "name"),
    ("source", "source"),
    ("parameters", "parameters"),
    ("non-zero", "nonzero_parameters"),
    ("FLOPs / example", "flops"),
    ("float32 bytes", "float32_bytes"),
    ("int8 bytes", "int8_bytes"),
    ("zipped bytes", "zipped_bytes"),
    ("zipped int8 bytes", "zipped_int8_bytes"),
    ("file bytes", "file_bytes"),
    ("latency / example", "latency_seconds"),
]


def _validate_reports(reports):
    reports = list(reports)
    if not reports:
        raise ValueError("reports must contain at least one ModelCost. Received: reports=[]")
    for index, report in enumerate(reports):
        if not isinstance(report, ModelCost):
            raise TypeError(
                "Every report must be a ModelCost returned by model_cost. "
                f"Received: reports[{index}] of type {type(report).__name__}"
            )
    return reports


def compare(reports):
    """Tabulate several cost reports side by side.

    Args:
        reports: A non-empty sequence of `ModelCost`.

    Returns:
        A tuple `(markdown, rows)`: a markdown table with one row per
        report, and the same reports as a list of `ModelCost.to_dict()`
        dicts. A field that does not apply to a report reads `n/a`.

    Raises:
        ValueError: If `reports` is empty.
        TypeError: If an element is not a `ModelCost`.

    Example:

    >>> from keras_cost.cost.compare import compare
    >>> from keras_cost.cost.report import ModelCost
    >>> table, rows = compare([ModelCost("a", "keras", parameters=10)])
    >>> rows[0]["parameters"]
    10
    >>> print(table.splitlines()[2][:18])
    | a | keras | 10 |
    """
    reports = _validate_reports(reports)
    rows = [report.to_dict() for report in reports]

    header = "| " + " | ".join(label for label, _ in _COLUMNS) + " |"
    separator = "|" + " --- |" * len(_COLUMNS)
    lines = [header, separator]
    for row in rows:
        cells = [
            row[key] if key in ("name", "source") else format_value(key, row[key])
            for _, key in _COLUMNS
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines), rows


def _validate_accuracies(accuracies, count):
    accuracies = list(accuracies)
    if len(accuracies) != count:
        raise ValueError(
            f"accuracies must contain one value per report ({count}). "
            f"Received: {len(accuracies)} accuracies"
        )
    for index, value in enumerate(accuracies):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(
                "Every accuracy must be a finite number. "
                f"Received: accuracies[{index}]={value!r}"
            )
    return [float(value) for value in accuracies]


def _short_number(value, position=None):
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:g}{suffix}"
    return f"{value:g}"


def _scatter(axes, xs, ys, labels, xlabel):
    from matplotlib import ticker

    axes.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
    for x, y, label in zip(xs, ys, labels):
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xscale("log")
    # Minor tick labels on a log axis overlap, so only decades and a few
    # major ticks are labelled, in short engineering notation.
    axes.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(_short_number))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.margins(x=0.2, y=0.1)
    axes.set_xlabel(xlabel)
    axes.grid(True, which="both", alpha=0.3)


def plot_tradeoff(reports, path, accuracies):
    """Plot accuracy against zipped size and against FLOPs to a PNG file.

    The left panel places every report by its zipped bytes. The right
    panel places the reports that have a FLOP count (Keras models, not
    `.tflite` files) and names the others in a note. Both x axes are
    logarithmic. Matplotlib draws with the Agg backend, so no display is
    needed.

    Args:
        reports: A non-empty sequence of `ModelCost`.
        path: Where to write the PNG.
        accuracies: One accuracy per report, in the same order.

    Returns:
        `path`.

    Raises:
        ValueError: If `reports` is empty, if the number of accuracies does
            not match, or if an accuracy is not a finite number.
        TypeError: If an element of `reports` is not a `ModelCost`.

    Example:

    >>> import os, tempfile
    >>> from keras_cost.cost.compare import plot_tradeoff
    >>> from keras_cost.cost.report import ModelCost
    >>> reports = [
    ...     ModelCost("dense", "keras", flops=2000, zipped_bytes=4096),
    ...     ModelCost("int8.tflite", "tflite", zipped_bytes=1024),
    ... ]
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = plot_tradeoff(reports, os.path.join(folder, "tradeoff.png"),
    ...                          [0.95, 0.94])
    ...     os.path.getsize(path) > 0
    True
    """
    reports = _validate_reports(reports)
    accuracies = _validate_accuracies(accuracies, len(reports))

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    size_axes, flops_axes = figure.subplots(1, 2, sharey=True)

    sized = [(r, a) for r, a in zip(reports, accuracies) if r.zipped_bytes]
    _scatter(
        size_axes,
        [r.zipped_bytes / 1024 for r, _ in sized],
        [a for _, a in sized],
        [r.name for r, _ in sized],
        "zipped size (KiB, log scale)",
    )
    size_axes.set_ylabel("accuracy")
    size_axes.set_title("accuracy against zipped size")

    counted = [(r, a) for r, a in zip(reports, accuracies) if r.flops]
    _scatter(
        flops_axes,
        [r.flops for r, _ in counted],
        [a for _, a in counted],
        [r.name for r, _ in counted],
        "forward FLOPs per example (log scale)",
    )
    flops_axes.set_title("accuracy against FLOPs")
    missing = [r.name for r in reports if not r.flops]
    if missing:
        flops_axes.text(
            0.02, 0.02, "no FLOP count: " + ", ".join(missing),
            transform=flops_axes.transAxes, fontsize=8, color="dimgray",
        )

    figure.savefig(path, dpi=120)
    return path
