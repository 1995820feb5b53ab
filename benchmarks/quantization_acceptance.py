"""Accuracy acceptance experiments of the quantization toolkit on the digits data.

For each seed a float model is trained, then the experiments below start
from that float model and report test accuracy (360 digits images, so one
image is 0.28 points):

1. float baseline (Adam, `Settings.float_epochs`, batch 32);
2. int8 post-training: `export_tflite(..., quantize="int8")`, calibrated
   on the first 300 training images and run with `TFLiteModel`. Its op list
   is checked for Dense or convolution ops with a float32 input;
3. 4-bit: `quantize_model(model, num_bits=4)`, which fake-quantizes every
   kernel to 4 bits and every wrapped layer's output, the logits included,
   to 8 bits (`activation_bits=8`, the default), fine-tuned for
   `Settings.qat_epochs` at `Settings.qat_learning_rate`. The post-training
   row quantizes only the kernels of the float model to 4 bits, on the grid
   that `QuantizeWrapper` uses (`quantize_weights` with
   `LinearQuantizer(4, symmetric=True, narrow_range=True)`, one range per
   tensor), leaves the outputs in float and trains nothing;
4. 3-bit: the same two models at 3 bits. The QAT model is scored against
   that kernels-only post-training model: "recovered" is
   `(QAT - PTQ) / (float - PTQ)`;
5. 16-cluster k-means weight clustering:
   `quantize_weights(model, KMeansQuantizer(16))` and its zipped size, then
   a fine-tune of `Settings.cluster_epochs` that clusters each kernel again
   after every optimizer step;
6. int8 export of an 8-bit QAT model: `quantize_model(num_bits=8)`, trained
   as in 3, then `export_tflite(..., quantize="int8")`. The argmax of the
   `TFLiteModel` is compared with the argmax of the QAT Keras model on the
   test split, and its op list is checked as in 2.

A control row trains the float model for `Settings.qat_epochs` more epochs
at the QAT learning rate, because part of the QAT accuracy comes from the
extra epochs.

Zipped sizes are zlib level 9 sizes. The float size zips the raw float32
bytes of all weights (kernels and biases) in `model.get_weights()` order.
The clustered size zips, per layer in the same order, three parts. First the
kernel's cluster indices, packed two per byte: 4 bits each, row-major, the
first index in the low nibble, and an odd count padded with one zero nibble.
Then its 16 float32 centroids, and then the float32 bias, which clustering
leaves as is.

Usage:
    python benchmarks/quantization_acceptance.py [--seeds 5] [--quick] [--model cnn|mlp]

`--quick` runs one seed with short training, to check that the script works.

References:
    Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018,
    https://arxiv.org/abs/1712.05877
    Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks
    with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
    https://arxiv.org/abs/1510.00149
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_cost.datasets import load_digits  # noqa: E402
from keras_cost.demo import build_student  # noqa: E402
from keras_cost.quantization import KMeansQuantizer  # noqa: E402
from keras_cost.quantization import LinearQuantizer  # noqa: E402
from keras_cost.quantization import QuantizeWrapper  # noqa: E402
from keras_cost.quantization import TFLiteModel  # noqa: E402
from keras_cost.quantization import export_tflite  # noqa: E402
from keras_cost.quantization import quantize_model  # noqa: E402
from keras_cost.quantization import quantize_weights  # noqa: E402

BATCH_SIZE = 32
CALIBRATION_SIZE = 300
NUM_CLUSTERS = 16
KERNEL_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_1D")


@dataclasses.dataclass
class Settings:
    float_epochs: int = 30
    qat_epochs: int = 5
    learning_rate: float = 1e-3
    qat_learning_rate: float = 1e-4
    cluster_epochs: int = 3


QUICK = Settings(float_epochs=5, qat_epochs=1, cluster_epochs=1)


# Data, models and training.


def load_data(model_kind):
    """Return the digits train and test sets, flattened to 64 inputs for the MLP."""
    (x_train, y_train), (x_test, y_test) = load_digits()
    if model_kind == "cnn":
        return (x_train, y_train), (x_test, y_test)
    return (
        (x_train.reshape(-1, 64), y_train),
        (x_test.reshape(-1, 64), y_test),
    )


def build_mlp():
    return keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(128, activation="relu", name="hidden_1"),
            keras.layers.Dense(64, activation="relu", name="hidden_2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="mlp",
    )


def compile_model(model, learning_rate):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def copy_model(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def fit(model, data, epochs):
    (x_train, y_train), _ = data
    model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)


def predictions(model, data):
    """Return the predicted class of each test image."""
    _, (x_test, _) = data
    if isinstance(model, TFLiteModel):
        logits = model.predict(x_test, batch_size=len(x_test))
    else:
        logits = model.predict(x_test, batch_size=len(x_test), verbose=0)
    return np.argmax(logits, axis=-1)


def accuracy(model, data):
    """Return the test accuracy in percent."""
    _, (_, y_test) = data
    return 100.0 * float(np.mean(predictions(model, data) == y_test))


def float_kernel_ops(runner):
    """Return the Dense and convolution ops of a `TFLiteModel` that take a float32 input."""
    return [
        op["name"]
        for op in runner.op_details
        if op["name"] in KERNEL_OPS and "float32" in op["input_types"]
    ]


def float_ops(runner):
    """Return the ops of a `TFLiteModel` with any float32 input or output tensor."""
    return [
        op["name"]
        for op in runner.op_details
        if "float32" in op["input_types"] + op["output_types"]
    ]


def zipped_size(arrays):
    """Return the zlib level 9 size in bytes of the arrays' raw bytes."""
    raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return len(zlib.compress(raw, 9))


# Experiments. Each returns a dict of measured values.


def train_float(data, settings, model_kind):
    model = build_student() if model_kind == "cnn" else build_mlp()
    compile_model(model, settings.learning_rate)
    fit(model, data, settings.float_epochs)
    return model


def continue_float(model, data, settings):
    """Train a copy of `model` for as many epochs, at the same rate, as QAT gets."""
    copy = copy_model(model)
    compile_model(copy, settings.qat_learning_rate)
    fit(copy, data, settings.qat_epochs)
    return accuracy(copy, data)


def int8_post_training(model, data):
    (x_train, _), _ = data
    flatbuffer = export_tflite(
        model, representative_data=x_train[:CALIBRATION_SIZE], quantize="int8"
    )
    runner = TFLiteModel(flatbuffer)
    return {
        "accuracy": accuracy(runner, data),
        "float_kernel_ops": float_kernel_ops(runner),
        "float_ops": float_ops(runner),
        "bytes": len(flatbuffer),
    }


def quantization_aware_training(model, data, settings, num_bits):
    """Return a `quantize_model` copy of `model` with `num_bits` kernels, fine-tuned.

    The outputs, the logits included, are fake-quantized to 8 bits
    (`activation_bits` left at its default).
    """
    qat_model = quantize_model(model, num_bits=num_bits)
    compile_model(qat_model, settings.qat_learning_rate)
    fit(qat_model, data, settings.qat_epochs)
    return qat_model


def tied_fraction(model, data):
    """Return the fraction of test images whose two largest logits are equal."""
    _, (x_test, _) = data
    logits = np.sort(model.predict(x_test, batch_size=len(x_test), verbose=0), axis=-1)
    return float(np.mean(logits[:, -1] == logits[:, -2]))


def kernels_only_post_training(model, num_bits):
    """Return a copy of `model` with its kernels on `QuantizeWrapper`'s grid, untrained.

    The grid is symmetric, narrow range ([-3, 3] at 3 bits) and has one range
    per tensor. The outputs stay in float.
    """
    quantizer = LinearQuantizer(num_bits=num_bits, symmetric=True, narrow_range=True)
    ptq_model = quantize_weights(model, quantizer)
    _check_same_kernel_grid(model, ptq_model, num_bits)
    return ptq_model


def _check_same_kernel_grid(model, ptq_model, num_bits):
    """Assert that `ptq_model` has the kernels that an untrained QAT copy of `model` runs."""
    qat_model = quantize_model(model, num_bits=num_bits)
    wrappers = [layer for layer in qat_model.layers if isinstance(layer, QuantizeWrapper)]
    kernels = [layer.kernel for layer in ptq_model.layers if hasattr(layer, "kernel")]
    assert len(wrappers) == len(kernels), (len(wrappers), len(kernels))
    for wrapper, kernel in zip(wrappers, kernels):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(wrapper.quantized_kernel()),
            keras.ops.convert_to_numpy(kernel),
            rtol=1e-6,
            atol=1e-7,
        )


def low_bit(model, data, settings, num_bits):
    """Measure kernels-only post-training and `quantize_model` QAT accuracy at `num_bits`."""
    ptq_model = kernels_only_post_training(model, num_bits)
    qat_model = quantization_aware_training(model, data, settings, num_bits)
    return {
        "ptq_accuracy": accuracy(ptq_model, data),
        "qat_accuracy": accuracy(qat_model, data),
        "qat_tied_fraction": tied_fraction(qat_model, data),
    }


def kmeans_clustering(model, data, settings):
    """Cluster every kernel of `model` into 16 values and measure accuracy and zipped size."""
    quantizer = KMeansQuantizer(num_clusters=NUM_CLUSTERS)
    clustered = quantize_weights(model, quantizer)

    packed = []
    for layer, clustered_layer in zip(model.layers, clustered.layers):
        if not layer.weights:
            continue
        codes, params = quantizer.quantize(layer.kernel)
        codes = keras.ops.convert_to_numpy(codes).astype(np.uint8).ravel()
        codebook = keras.ops.convert_to_numpy(params["codebook"]).astype(np.float32)
        # The packed form must decode to the kernel that the accuracy uses.
        np.testing.assert_array_equal(
            codebook[codes].reshape(layer.kernel.shape), clustered_layer.kernel.numpy()
        )
        if len(codes) % 2:
            codes = np.append(codes, np.uint8(0))
        packed.append(codes[0::2] | (codes[1::2] << 4))
        packed.append(codebook)
        packed.append(layer.bias.numpy())

    float_zip = zipped_size(model.get_weights())
    clustered_zip = zipped_size(packed)
    return {
        "accuracy": accuracy(clustered, data),
        "fine_tuned": kmeans_fine_tune(clustered, data, settings),
        "float_zip": float_zip,
        "clustered_zip": clustered_zip,
        "ratio": float_zip / clustered_zip,
    }


class ReclusterConstraint(keras.constraints.Constraint):
    """Replace a kernel by its k-means clustered values after every optimizer step."""

    def __init__(self, quantizer):
        self.quantizer = quantizer

    def __call__(self, kernel):
        codes, params = self.quantizer.quantize(kernel)
        return self.quantizer.dequantize(codes, params)


def kmeans_fine_tune(clustered, data, settings):
    """Fine-tune a copy of `clustered` that stays clustered, and measure its accuracy.

    keras_cost has no clustering-aware training, so each kernel gets a
    `ReclusterConstraint`: the optimizer step updates every weight and the
    constraint clusters the kernel again (the codebook is re-learned from
    scratch each time). Biases train freely.
    """
    model = copy_model(clustered)
    for layer in model.layers:
        if layer.weights:
            layer.kernel.constraint = ReclusterConstraint(KMeansQuantizer(NUM_CLUSTERS))
    compile_model(model, settings.qat_learning_rate)
    fit(model, data, settings.cluster_epochs)
    distinct = [len(np.unique(layer.kernel.numpy())) for layer in model.layers if layer.weights]
    return {"accuracy": accuracy(model, data), "max_distinct_values": max(distinct)}


def int8_qat_export(model, data, settings):
    (x_train, _), _ = data
    qat_model = quantization_aware_training(model, data, settings, 8)
    flatbuffer = export_tflite(
        qat_model, representative_data=x_train[:CALIBRATION_SIZE], quantize="int8"
    )
    runner = TFLiteModel(flatbuffer)
    agreement = np.mean(predictions(runner, data) == predictions(qat_model, data))
    return {
        "qat_accuracy": accuracy(qat_model, data),
        "tflite_accuracy": accuracy(runner, data),
        "agreement": 100.0 * float(agreement),
        "float_kernel_ops": float_kernel_ops(runner),
        "float_ops": float_ops(runner),
    }


def run_seed(seed, data, settings, model_kind, log):
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    model = train_float(data, settings, model_kind)
    result = {"seed": seed, "float_accuracy": accuracy(model, data)}
    result["parameters"] = model.count_params()
    log(f"seed {seed}: float {result['float_accuracy']:.2f}%")

    result["int8_ptq"] = int8_post_training(model, data)
    log(f"seed {seed}: int8 post-training {result['int8_ptq']}")
    result["four_bit"] = low_bit(model, data, settings, 4)
    log(f"seed {seed}: 4-bit {result['four_bit']}")
    result["three_bit"] = low_bit(model, data, settings, 3)
    log(f"seed {seed}: 3-bit {result['three_bit']}")
    result["kmeans"] = kmeans_clustering(model, data, settings)
    log(f"seed {seed}: k-means {result['kmeans']}")
    result["int8_qat"] = int8_qat_export(model, data, settings)
    log(f"seed {seed}: int8 QAT export {result['int8_qat']}")
    result["float_continued_accuracy"] = continue_float(model, data, settings)
    log(f"seed {seed}: float continued {result['float_continued_accuracy']:.2f}%")

    result["seconds"] = time.perf_counter() - started
    log(f"seed {seed}: {result['seconds']:.0f} s")
    return result


# Report.


def _mean_worst_drop(results, accuracy_of):
    drops = [r["float_accuracy"] - accuracy_of(r) for r in results]
    return statistics.mean(drops), max(drops)


def _verdict(ok):
    return "met" if ok else "NOT met"


def _recovery(results):
    """Return the per-seed recovered fractions at 3 bits and the ratio of the mean gains.

    A seed whose post-training model lost nothing has no recovery to measure,
    so it gets `None` in the per-seed list.
    """
    losses = [r["float_accuracy"] - r["three_bit"]["ptq_accuracy"] for r in results]
    gains = [r["three_bit"]["qat_accuracy"] - r["three_bit"]["ptq_accuracy"] for r in results]
    per_seed = [gain / loss if loss > 0 else None for gain, loss in zip(gains, losses)]
    mean_loss = statistics.mean(losses)
    pooled = statistics.mean(gains) / mean_loss if mean_loss > 0 else None
    return per_seed, pooled


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.0f}%"


def report(results, settings, model_kind, seconds):
    lines = []
    float_accuracies = [r["float_accuracy"] for r in results]
    lines.append(
        f"Model {model_kind}, {results[0]['parameters']} parameters. Seeds: "
        f"{[r['seed'] for r in results]}; float test accuracy mean "
        f"{statistics.mean(float_accuracies):.2f}%, min {min(float_accuracies):.2f}%. "
        "Drops are in accuracy points (float minus quantized), per seed against "
        "its own float model; the worst seed is the largest drop."
    )
    lines.append("")
    lines.append("| experiment | result (mean) | worst seed | target | verdict |")
    lines.append("| --- | --- | --- | --- | --- |")

    mean, worst = _mean_worst_drop(results, lambda r: r["float_continued_accuracy"])
    lines.append(
        f"| control: float trained {settings.qat_epochs} more epochs at "
        f"lr {settings.qat_learning_rate:g}, no quantization | drop {mean:.2f} "
        f"| drop {worst:.2f} | - | - |"
    )

    mean, worst = _mean_worst_drop(results, lambda r: r["int8_ptq"]["accuracy"])
    lines.append(
        f"| int8 post-training .tflite ({CALIBRATION_SIZE} calibration images) "
        f"| drop {mean:.2f} | drop {worst:.2f} | abs(mean drop) <= 0.3 "
        f"| {_verdict(abs(mean) <= 0.3)} |"
    )
    counts = [len(r["int8_ptq"]["float_kernel_ops"]) for r in results]
    lines.append(
        f"| int8 post-training .tflite: Dense/Conv ops with a float32 input "
        f"| {statistics.mean(counts):.1f} | {max(counts)} | 0 | {_verdict(max(counts) == 0)} |"
    )
    lines.append(_float_ops_row("int8 post-training .tflite", results, "int8_ptq"))

    lines.extend(_low_bit_rows(results, settings, "four_bit", 4))
    lines.extend(_low_bit_rows(results, settings, "three_bit", 3))

    mean, worst = _mean_worst_drop(results, lambda r: r["kmeans"]["accuracy"])
    lines.append(
        f"| {NUM_CLUSTERS}-cluster k-means, post-training, no fine-tune | drop {mean:.2f} "
        f"| drop {worst:.2f} | drop <= 0.3 | {_verdict(mean <= 0.3)} |"
    )
    mean, worst = _mean_worst_drop(results, lambda r: r["kmeans"]["fine_tuned"]["accuracy"])
    distinct = max(r["kmeans"]["fine_tuned"]["max_distinct_values"] for r in results)
    lines.append(
        f"| {NUM_CLUSTERS}-cluster k-means, then {settings.cluster_epochs} epochs at lr "
        f"{settings.qat_learning_rate:g} re-clustering each kernel after every step (at "
        f"most {distinct} distinct values per kernel) | drop {mean:.2f} | drop {worst:.2f} "
        f"| drop <= 0.3 | {_verdict(mean <= 0.3)} |"
    )
    ratios = [r["kmeans"]["ratio"] for r in results]
    lines.append(
        f"| zipped float32 weights / zipped 4-bit indices + codebooks + float32 biases "
        f"| {statistics.mean(ratios):.2f}x | {min(ratios):.2f}x | >= 4x "
        f"| {_verdict(min(ratios) >= 4)} |"
    )

    mean, worst = _mean_worst_drop(results, lambda r: r["int8_qat"]["qat_accuracy"])
    lines.append(
        f"| 8-bit QAT Keras model, {settings.qat_epochs} epochs | drop {mean:.2f} "
        f"| drop {worst:.2f} | - | - |"
    )
    mean, worst = _mean_worst_drop(results, lambda r: r["int8_qat"]["tflite_accuracy"])
    lines.append(
        f"| int8 .tflite of the 8-bit QAT model | drop {mean:.2f} | drop {worst:.2f} | - | - |"
    )
    agreements = [r["int8_qat"]["agreement"] for r in results]
    lines.append(
        f"| int8 .tflite of the 8-bit QAT model: argmax agreement with the QAT Keras model "
        f"| {statistics.mean(agreements):.2f}% | {min(agreements):.2f}% | >= 99% "
        f"| {_verdict(min(agreements) >= 99)} |"
    )
    counts = [len(r["int8_qat"]["float_kernel_ops"]) for r in results]
    lines.append(
        f"| int8 .tflite of the 8-bit QAT model: Dense/Conv ops with a float32 input "
        f"| {statistics.mean(counts):.1f} | {max(counts)} | 0 | {_verdict(max(counts) == 0)} |"
    )
    lines.append(_float_ops_row("int8 .tflite of the 8-bit QAT model", results, "int8_qat"))

    lines.append("")
    lines.append(f"Total run time {seconds / 60:.1f} min.")
    return "\n".join(lines)


def _float_ops_row(name, results, key):
    counts = [len(r[key]["float_ops"]) for r in results]
    names = sorted({op for r in results for op in r[key]["float_ops"]})
    return (
        f"| {name}: ops of any kind with a float32 tensor {names} "
        f"| {statistics.mean(counts):.1f} | {max(counts)} | - | - |"
    )


def _low_bit_rows(results, settings, key, num_bits):
    lines = []
    tied = 100 * statistics.mean(r[key]["qat_tied_fraction"] for r in results)
    experiments = (
        ("ptq_accuracy", "post-training: kernels only, outputs in float, no training "
         "(`quantize_weights`, symmetric, narrow range, per tensor)"),
        ("qat_accuracy", "QAT: kernels and 8-bit outputs "
         f"(`quantize_model(num_bits={num_bits})`), {settings.qat_epochs} epochs; "
         f"top-2 logits tied on {tied:.1f}% of test images"),
    )
    for accuracy_key, name in experiments:
        mean, worst = _mean_worst_drop(results, lambda r: r[key][accuracy_key])
        # The acceptance target at 4 bits is on the QAT model.
        if num_bits == 4 and accuracy_key == "qat_accuracy":
            target, verdict = "mean drop <= 0.3", _verdict(mean <= 0.3)
        else:
            target, verdict = "-", "-"
        lines.append(
            f"| {num_bits}-bit {name} | drop {mean:.2f} | drop {worst:.2f} "
            f"| {target} | {verdict} |"
        )
    if num_bits != 3:
        return lines

    per_seed, pooled = _recovery(results)
    measured = [value for value in per_seed if value is not None]
    worst = _percent(min(measured)) if measured else "n/a"
    ok = pooled is not None and pooled >= 0.8
    lines.append(
        "| 3-bit QAT vs 3-bit kernels-only post-training: share of the post-training "
        f"loss recovered, mean gain / mean loss (per seed {[_percent(v) for v in per_seed]}) "
        f"| {_percent(pooled)} | {worst} | >= 80% | {_verdict(ok)} |"
    )
    return lines


def _print_now(message):
    print(message, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, 0 to N-1")
    parser.add_argument(
        "--quick", action="store_true",
        help="one seed and short training, to check that the script runs",
    )
    parser.add_argument(
        "--model", choices=("cnn", "mlp"), default="cnn",
        help="the demo student CNN or the MLP 64-128-64-10",
    )
    parser.add_argument(
        "--qat-epochs", type=int, default=None,
        help=f"QAT fine-tune epochs (default {Settings.qat_epochs}, {QUICK.qat_epochs} "
        "with --quick); the control row trains as many",
    )
    parser.add_argument(
        "--qat-learning-rate", type=float, default=None,
        help=f"Adam learning rate of the QAT fine-tune and the control "
        f"(default {Settings.qat_learning_rate:g})",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    settings = QUICK if args.quick else Settings()
    seeds = 1 if args.quick else args.seeds
    if args.qat_epochs is not None:
        settings = dataclasses.replace(settings, qat_epochs=args.qat_epochs)
    if args.qat_learning_rate is not None:
        settings = dataclasses.replace(settings, qat_learning_rate=args.qat_learning_rate)

    # One TensorFlow thread, so that the run time does not depend on the core count.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")
    data = load_data(args.model)
    started = time.perf_counter()
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for seed in range(seeds):
            results.append(run_seed(seed, data, settings, args.model, _print_now))
    print()
    print(report(results, settings, args.model, time.perf_counter() - started))


if __name__ == "__main__":
    sys.exit(main())
