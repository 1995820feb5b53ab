"""Acceptance experiments of the pruning toolkit on the digits data.

For each seed the reference MLP 64-128-64-10 is trained dense, then the
experiments below start from that dense model and report test accuracy
(360 digits images, so one image is 0.28 points) and size:

1. dense baseline (Adam, `Settings.dense_epochs`, batch 32);
2. 80% unstructured magnitude pruning, per layer, with `PolynomialDecay`
   over `Settings.prune_epochs`, then `Settings.finetune_epochs` at the
   final sparsity;
3. the same at 90% with `scope="global"`;
4. size of the stripped 80% model: zlib level 9 of the float32 weights, of
   its weights rounded to int8 (`model_cost(...).zipped_int8_bytes`, one
   symmetric scale per output channel) and of its int8 `.tflite` file,
   against zlib level 9 of the dense float32 weights;
5. L0 regularization (`l0_regularize`) for each `Settings.l0_lambdas` value
   (or `--l0-lambdas`), then
   `strip_pruning` and `shrink`, and a fine-tune of the smaller model;
6. APoZ pruning with the rule of Hu et al. (2016). Each round removes the
   units of a hidden layer whose APoZ is above the mean plus one standard
   deviation of that layer's remaining units, then fine-tunes the model.
   After the last round `shrink` removes the pruned units.

A control row trains the dense model for as many more epochs as the pruned
models get, because part of their accuracy comes from the extra epochs.
`--model cnn` runs them on the demo student CNN instead.

Usage:
    python benchmarks/pruning_acceptance.py [--seeds 5] [--quick] [--model mlp|cnn]

`--quick` runs one seed with short training, to check that the script works.

References:
    Zhu and Gupta, "To prune, or not to prune", 2017,
    https://arxiv.org/abs/1710.01878
    Louizos, Welling and Kingma, "Learning sparse neural networks through L0
    regularization", ICLR 2018, https://arxiv.org/abs/1712.01312
    Hu et al., "Network trimming: a data-driven neuron pruning approach
    towards efficient deep architectures", 2016,
    https://arxiv.org/abs/1607.03250
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

from keras_cost.callbacks.prune import PruneCallback  # noqa: E402
from keras_cost.cost import int8_weight_codes  # noqa: E402
from keras_cost.cost import model_cost  # noqa: E402
from keras_cost.datasets import load_digits  # noqa: E402
from keras_cost.demo import build_student  # noqa: E402
from keras_cost.pruning import ConstantSparsity  # noqa: E402
from keras_cost.pruning import PolynomialDecay  # noqa: E402
from keras_cost.pruning import l0_regularize  # noqa: E402
from keras_cost.pruning import shrink  # noqa: E402
from keras_cost.pruning import sparsity  # noqa: E402
from keras_cost.pruning import strip_pruning  # noqa: E402

BATCH_SIZE = 32
# Outputs of a shrunk model must match the masked model to this bound.
SHRINK_TOLERANCE = 1e-5


@dataclasses.dataclass
class Settings:
    dense_epochs: int = 40
    prune_epochs: int = 10
    finetune_epochs: int = 20
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-3
    prune_frequency: int = 15
    l0_lambdas: tuple = (1e-4, 2e-4, 5e-4)
    l0_epochs: int = 30
    l0_learning_rate: float = 1e-2
    l0_initial_log_alpha: float = 1.0
    l0_finetune_epochs: int = 10
    apoz_rounds: int = 4
    apoz_target_reduction: float = 2.0
    apoz_finetune_epochs: int = 5


QUICK = Settings(
    dense_epochs=10,
    prune_epochs=3,
    finetune_epochs=3,
    l0_lambdas=(3e-4,),
    l0_epochs=5,
    l0_finetune_epochs=2,
    apoz_rounds=2,
    apoz_finetune_epochs=1,
)


# Data, model and training.


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


def hidden_unit_layers(model):
    """Return the Dense and Conv2D layers of `model` except the output layer."""
    layers = [
        layer for layer in model.layers
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
    ]
    return layers[:-1]


def hidden_units(model):
    return [layer.kernel.shape[-1] for layer in hidden_unit_layers(model)]


def copy_model(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def fit(model, data, epochs, callbacks=()):
    (x_train, y_train), _ = data
    model.fit(
        x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs,
        callbacks=list(callbacks), verbose=0,
    )


def accuracy(model, data):
    """Return the test accuracy in percent."""
    _, (x_test, y_test) = data
    logits = model.predict(x_test, batch_size=360, verbose=0)
    return 100.0 * float(np.mean(np.argmax(logits, axis=-1) == y_test))


def steps_per_epoch(data):
    (x_train, _), _ = data
    return -(-len(x_train) // BATCH_SIZE)


def zipped_size(arrays):
    """Return the zlib level 9 size in bytes of the arrays' raw bytes."""
    raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return len(zlib.compress(raw, 9))


# Experiments. Each returns a dict of measured values.


def train_dense(data, settings, model_kind):
    model = build_student() if model_kind == "cnn" else build_mlp()
    compile_model(model, settings.learning_rate)
    fit(model, data, settings.dense_epochs)
    return model


def continue_dense(dense, data, settings):
    """Train a copy of `dense` for as many epochs as the pruned models get."""
    model = copy_model(dense)
    compile_model(model, settings.finetune_learning_rate)
    fit(model, data, settings.prune_epochs + settings.finetune_epochs)
    return accuracy(model, data)


def magnitude_pruning(dense, data, settings, final_sparsity, scope):
    """Prune a copy of `dense` gradually, then fine-tune at the final sparsity."""
    model = copy_model(dense)
    compile_model(model, settings.finetune_learning_rate)
    end_step = settings.prune_epochs * steps_per_epoch(data)
    schedule = PolynomialDecay(
        0.0, final_sparsity, begin_step=0, end_step=end_step,
        frequency=settings.prune_frequency,
    )
    callback = PruneCallback(schedule, scope=scope)
    fit(model, data, settings.prune_epochs + settings.finetune_epochs, [callback])
    stripped = strip_pruning(model)
    return stripped, {
        "accuracy": accuracy(stripped, data),
        "sparsity": sparsity(stripped).overall,
        "per_kernel": sparsity(stripped).kernels,
    }


def sizes(dense, sparse, data):
    """Measure zipped sizes of the dense and the sparse model."""
    (x_train, _), _ = data
    dense_zip = zipped_size(dense.get_weights())
    sparse_zip = zipped_size(sparse.get_weights())
    result = {
        "dense_zip": dense_zip,
        "sparse_zip": sparse_zip,
        "int8_weights_zip": model_cost(sparse).zipped_int8_bytes,
        "int8_weights_accuracy": _int8_weights_accuracy(sparse, data),
    }
    try:
        from keras_cost.quantization import export_tflite

        flatbuffer = export_tflite(
            sparse, representative_data=x_train[:300], quantize="int8"
        )
        result["tflite_int8_zip"] = len(zlib.compress(flatbuffer, 9))
        result["tflite_int8_accuracy"] = _tflite_accuracy(flatbuffer, data)
        result["dense_tflite_float_zip"] = len(zlib.compress(export_tflite(dense), 9))
    except Exception as error:  # noqa: BLE001
        # The export belongs to another module. Its failure is reported in
        # the results, and the int8 weights size replaces it.
        result["tflite_error"] = f"{type(error).__name__}: {error}"
    return result


def _int8_weights_accuracy(model, data):
    """Return the test accuracy with the weights that `zipped_int8_bytes` stores."""
    copy = copy_model(model)
    copy.set_weights([int8_weight_codes(weight)[2] for weight in model.get_weights()])
    return accuracy(copy, data)


def _tflite_accuracy(flatbuffer, data):
    from ai_edge_litert.interpreter import Interpreter

    _, (x_test, y_test) = data
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x_test.shape)
    interpreter.allocate_tensors()
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    scale, zero_point = input_detail["quantization"]
    quantized = np.clip(np.round(x_test / scale + zero_point), -128, 127).astype(np.int8)
    interpreter.set_tensor(input_detail["index"], quantized)
    interpreter.invoke()
    outputs = interpreter.get_tensor(output_detail["index"])
    return 100.0 * float(np.mean(np.argmax(outputs, axis=-1) == y_test))


def max_output_difference(first, second, data):
    _, (x_test, _) = data
    a = first.predict(x_test, batch_size=360, verbose=0)
    b = second.predict(x_test, batch_size=360, verbose=0)
    return float(np.max(np.abs(a - b)))


def max_output(model, data):
    """Return the largest absolute output, the scale of float32 rounding errors."""
    _, (x_test, _) = data
    return float(np.max(np.abs(model.predict(x_test, batch_size=360, verbose=0))))


def l0_pruning(dense, data, settings, l0_lambda):
    """Train L0 gates on a copy of `dense`, strip, shrink and fine-tune."""
    gated = l0_regularize(
        dense, l0_lambda, initial_log_alpha=settings.l0_initial_log_alpha
    )
    compile_model(gated, settings.l0_learning_rate)
    fit(gated, data, settings.l0_epochs)

    masked = strip_pruning(gated)
    small = shrink(masked)
    result = {
        "lambda": l0_lambda,
        "gated_accuracy": accuracy(gated, data),
        "accuracy_before_finetune": accuracy(masked, data),
        "units": hidden_units(small),
        "parameters": small.count_params(),
        "removed_fraction": 1.0 - small.count_params() / dense.count_params(),
        "max_difference": max_output_difference(masked, small, data),
        "max_output": max_output(masked, data),
        "gate_fold_difference": max_output_difference(gated, masked, data),
    }
    compile_model(small, settings.finetune_learning_rate)
    fit(small, data, settings.l0_finetune_epochs)
    result["accuracy"] = accuracy(small, data)
    return result


def apoz_per_unit(model, layer_name, data):
    """Return each unit's average percentage of zeros on the training data."""
    (x_train, _), _ = data
    probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
    outputs = probe.predict(x_train, batch_size=360, verbose=0)
    # A filter's APoZ counts every spatial position of every image.
    return np.mean(outputs.reshape(-1, outputs.shape[-1]) == 0.0, axis=0)


def apoz_units_to_prune(model, layer_name, data):
    """Return how many units the APoZ rule removes in total after this round.

    The rule of Hu et al.: among the units still alive, those whose APoZ is
    above the mean plus one standard deviation of the alive units' APoZ.
    """
    kernel = model.get_layer(layer_name).kernel.numpy()
    dead = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0.0, axis=0)
    apoz = apoz_per_unit(model, layer_name, data)
    alive = apoz[~dead]
    threshold = alive.mean() + alive.std()
    return int(dead.sum() + np.count_nonzero(alive > threshold))


def apoz_pruning(dense, data, settings):
    """Prune hidden units by the APoZ rule for several rounds, then shrink.

    `PruneCallback(criterion="apoz", granularity="neuron")` prunes a fixed
    fraction of units per layer, so this computes the rule's count per layer
    and gives each layer its own callback with
    `ConstantSparsity(count / units)`, firing once at the end of the
    round's first epoch. The callback ranks units by the APoZ it records on
    that epoch's batches, and removed units, whose output is always 0, rank
    first. Rounds stop after `settings.apoz_rounds`, or earlier once the
    shrunk model has `settings.apoz_target_reduction` times fewer
    parameters than `dense`.
    """
    model = copy_model(dense)
    steps = steps_per_epoch(data)
    rounds = []
    for _ in range(settings.apoz_rounds):
        compile_model(model, settings.finetune_learning_rate)
        step = int(model.optimizer.iterations.numpy())
        callbacks = []
        counts = {}
        for layer in hidden_unit_layers(model):
            name = layer.name
            units = layer.kernel.shape[-1]
            count = apoz_units_to_prune(model, name, data)
            counts[name] = units - count
            schedule = ConstantSparsity(
                count / units, begin_step=step + steps - 1, end_step=step + steps - 1
            )
            callbacks.append(
                PruneCallback(schedule, criterion="apoz", granularity="neuron", layers=[name])
            )
        fit(model, data, 1 + settings.apoz_finetune_epochs, callbacks)
        parameters = shrink(strip_pruning(model)).count_params()
        rounds.append(
            {"units": counts, "parameters": parameters, "accuracy": accuracy(model, data)}
        )
        if dense.count_params() / parameters >= settings.apoz_target_reduction:
            break

    masked = strip_pruning(model)
    small = shrink(masked)
    return {
        "rounds": rounds,
        "accuracy": accuracy(masked, data),
        "units": hidden_units(small),
        "parameters": small.count_params(),
        "reduction": dense.count_params() / small.count_params(),
        "max_difference": max_output_difference(masked, small, data),
        "max_output": max_output(masked, data),
    }


def run_seed(seed, data, settings, model_kind, log):
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    dense = train_dense(data, settings, model_kind)
    result = {"seed": seed, "dense_accuracy": accuracy(dense, data)}
    result["dense_parameters"] = dense.count_params()
    log(f"seed {seed}: dense {result['dense_accuracy']:.2f}%")

    sparse80, result["sparse80"] = magnitude_pruning(dense, data, settings, 0.8, "layer")
    log(f"seed {seed}: 80% layer {result['sparse80']['accuracy']:.2f}%")
    _, result["sparse90"] = magnitude_pruning(dense, data, settings, 0.9, "global")
    sparse90 = result["sparse90"]
    log(f"seed {seed}: 90% global {sparse90['accuracy']:.2f}% {sparse90['per_kernel']}")
    result["sizes"] = sizes(dense, sparse80, data)
    log(f"seed {seed}: sizes {result['sizes']}")

    result["l0"] = []
    for l0_lambda in settings.l0_lambdas:
        result["l0"].append(l0_pruning(dense, data, settings, l0_lambda))
        log(f"seed {seed}: L0 {result['l0'][-1]}")
    result["apoz"] = apoz_pruning(dense, data, settings)
    log(f"seed {seed}: APoZ {result['apoz']}")

    # Control: the pruned models train for more epochs than the dense one,
    # so this shows how much of their accuracy comes from the extra epochs.
    result["dense_continued_accuracy"] = continue_dense(dense, data, settings)
    log(f"seed {seed}: dense continued {result['dense_continued_accuracy']:.2f}%")
    result["seconds"] = time.perf_counter() - started
    log(f"seed {seed}: {result['seconds']:.0f} s")
    return result


# Report.


def _mean_worst_drop(results, accuracy_of):
    drops = [r["dense_accuracy"] - accuracy_of(r) for r in results]
    return statistics.mean(drops), max(drops)


def _verdict(ok):
    return "met" if ok else "NOT met"


def report(results, settings, model_kind, seconds):
    lines = []
    dense = [r["dense_accuracy"] for r in results]
    lines.append(
        f"Model {model_kind}. Seeds: {[r['seed'] for r in results]}; dense test accuracy mean "
        f"{statistics.mean(dense):.2f}%, min {min(dense):.2f}%; "
        f"{results[0]['dense_parameters']} parameters. Drops are in accuracy "
        "points (dense minus pruned), per seed against its own dense model."
    )
    lines.append("")
    lines.append("| experiment | result (mean) | worst seed | target | verdict |")
    lines.append("| --- | --- | --- | --- | --- |")

    mean, worst = _mean_worst_drop(results, lambda r: r["dense_continued_accuracy"])
    lines.append(
        f"| control: dense trained {settings.prune_epochs + settings.finetune_epochs} "
        f"more epochs, no pruning | drop {mean:.2f} | drop {worst:.2f} | - | - |"
    )
    mean, worst = _mean_worst_drop(results, lambda r: r["sparse80"]["accuracy"])
    lines.append(
        f"| 80% unstructured, per layer, PolynomialDecay + {settings.finetune_epochs} "
        f"fine-tune epochs | drop {mean:.2f} | drop {worst:.2f} | mean <= 0.5, worst <= 1.5 "
        f"| {_verdict(mean <= 0.5 and worst <= 1.5)} |"
    )
    mean, worst = _mean_worst_drop(results, lambda r: r["sparse90"]["accuracy"])
    lines.append(
        f"| 90% unstructured, scope=global | drop {mean:.2f} | drop {worst:.2f} "
        f"| mean <= 1.0 | {_verdict(mean <= 1.0)} |"
    )

    float_ratios = [r["sizes"]["dense_zip"] / r["sizes"]["sparse_zip"] for r in results]
    lines.append(
        f"| zipped float32 weights, dense / 80% sparse | {statistics.mean(float_ratios):.2f}x "
        f"| {min(float_ratios):.2f}x | >= 3x | {_verdict(min(float_ratios) >= 3)} |"
    )
    if all("tflite_int8_zip" in r["sizes"] for r in results):
        ratios = [r["sizes"]["dense_zip"] / r["sizes"]["tflite_int8_zip"] for r in results]
        lines.append(
            f"| zipped dense float32 weights / zipped int8 .tflite of 80% sparse "
            f"| {statistics.mean(ratios):.2f}x | {min(ratios):.2f}x | >= 9x "
            f"| {_verdict(min(ratios) >= 9)} |"
        )
        ratios = [
            r["sizes"]["dense_tflite_float_zip"] / r["sizes"]["tflite_int8_zip"] for r in results
        ]
        lines.append(
            f"| zipped dense float32 .tflite / zipped int8 .tflite of 80% sparse "
            f"| {statistics.mean(ratios):.2f}x | {min(ratios):.2f}x | (same files) | - |"
        )
        mean, worst = _mean_worst_drop(results, lambda r: r["sizes"]["tflite_int8_accuracy"])
        lines.append(
            f"| int8 .tflite of 80% sparse, accuracy | drop {mean:.2f} "
            f"| drop {worst:.2f} | - | - |"
        )
    ratios = [r["sizes"]["dense_zip"] / r["sizes"]["int8_weights_zip"] for r in results]
    lines.append(
        f"| zipped dense float32 weights / zipped int8 weights of 80% sparse "
        f"(`model_cost(...).zipped_int8_bytes`) | {statistics.mean(ratios):.2f}x "
        f"| {min(ratios):.2f}x | >= 9x | {_verdict(min(ratios) >= 9)} |"
    )
    mean, worst = _mean_worst_drop(results, lambda r: r["sizes"]["int8_weights_accuracy"])
    lines.append(
        f"| int8 weights of 80% sparse (`int8_weight_codes`), accuracy | drop {mean:.2f} "
        f"| drop {worst:.2f} | - | - |"
    )
    lines.extend(_structured_rows(results, settings))
    lines.append("")
    lines.append(f"Total run time {seconds / 60:.1f} min.")
    for r in results:
        if "tflite_error" in r["sizes"]:
            error = r["sizes"]["tflite_error"]
            lines.append(f"Seed {r['seed']}: int8 .tflite export failed: {error}")
    return "\n".join(lines)


def _relative_difference(runs):
    return max(run["max_difference"] / run["max_output"] for run in runs)


def _structured_rows(results, settings):
    lines = []
    for index, l0_lambda in enumerate(settings.l0_lambdas):
        runs = [r["l0"][index] for r in results]
        removed = [100 * run["removed_fraction"] for run in runs]
        mean, worst = _mean_worst_drop(results, lambda r: r["l0"][index]["accuracy"])
        before, _ = _mean_worst_drop(
            results, lambda r: r["l0"][index]["accuracy_before_finetune"]
        )
        difference = max(run["max_difference"] for run in runs)
        relative = _relative_difference(runs)
        units = [run["units"] for run in runs]
        ok = min(removed) >= 40 and mean <= 0.5 and difference <= SHRINK_TOLERANCE
        lines.append(
            f"| L0 lambda={l0_lambda:g}: parameters removed by shrink; hidden units "
            f"{units} | {statistics.mean(removed):.1f}% removed, drop {mean:.2f} "
            f"(before fine-tune {before:.2f}), max abs output diff {difference:.1e} "
            f"({relative:.1e} of the largest output) "
            f"| {min(removed):.1f}% removed, drop {worst:.2f} "
            f"| >= 40% removed, mean drop <= 0.5, diff <= 1e-5 | {_verdict(ok)} |"
        )

    runs = [r["apoz"] for r in results]
    reductions = [run["reduction"] for run in runs]
    mean, worst = _mean_worst_drop(results, lambda r: r["apoz"]["accuracy"])
    difference = max(run["max_difference"] for run in runs)
    relative = _relative_difference(runs)
    units = [run["units"] for run in runs]
    rounds = [len(run["rounds"]) for run in runs]
    ok = min(reductions) >= 2 and mean <= 1.0 and difference <= SHRINK_TOLERANCE
    lines.append(
        f"| APoZ, mean + 1 std rule, rounds {rounds} (at most {settings.apoz_rounds}, "
        f"stop at {settings.apoz_target_reduction:g}x), then shrink; hidden "
        f"units {units} | {statistics.mean(reductions):.2f}x fewer parameters, drop "
        f"{mean:.2f}, max abs output diff {difference:.1e} ({relative:.1e} of the "
        f"largest output) | {min(reductions):.2f}x, drop "
        f"{worst:.2f} | >= 2x, mean drop <= 1.0 | {_verdict(ok)} |"
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
        "--model", choices=("mlp", "cnn"), default="mlp",
        help="the MLP 64-128-64-10 or the demo student CNN",
    )
    parser.add_argument(
        "--l0-lambdas", type=float, nargs="+", default=None,
        help="L0 penalty per expected non-zero weight, one run per value",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    settings = QUICK if args.quick else Settings()
    seeds = 1 if args.quick else args.seeds
    if args.l0_lambdas:
        settings = dataclasses.replace(settings, l0_lambdas=tuple(args.l0_lambdas))

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
