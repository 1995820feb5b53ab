"""Compare keras-cost's LBFGS with Adam, SGD, scipy's L-BFGS-B and torch.optim.LBFGS.

Every method trains the same digits MLP (64 inputs, 32 tanh units, 10
logits) from the same initial weights on the same objective: mean softmax
cross-entropy plus `l2 * (||W1||^2 + ||W2||^2)`. The L2 strength is tuned
first with scipy's L-BFGS-B on a validation split of the training set.
For each method the script prints the final training objective, the test
accuracy and the wall time of training (for Keras `fit`, the time includes
tracing the compiled functions). A floor row times `fit` alone: as many
steps of a plain gradient step with learning rate 0, which is what one
L-BFGS iteration per step costs before any L-BFGS work. Its row with
`iterations_per_step` runs all iterations in one `fit` step, as torch's
single `optimizer.step(closure)` does.

That row and the two torch rows are the head-to-head comparison. They take
about half a second each, so the script runs them `--repeats` times in
turn, ours then torch with 1 and 2 threads, and reports the median and
every run. On the shared 2-core machine of RESULTS.md, single runs were up
to 25% off their median.

Run:
    python benchmarks/lbfgs_benchmark.py

torch (`pip install torch==2.13.0`) and scipy are needed here only; the
package and its tests never import torch.
"""

import argparse
import gc
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import scipy.optimize
import tensorflow as tf

from keras_cost.datasets import load_digits
from keras_cost.optimizers import LBFGS, install_lbfgs_step

HIDDEN = 32
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def collect_garbage():
    """Run Python's full garbage collection before a timed run.

    The Keras rows leave many Python objects behind, and a full collection
    that they trigger takes up to 0.3 s late in the script. Without this, it
    lands in whichever run comes next, torch's included.
    """
    gc.collect()


def load_data():
    (x_train, y_train), (x_test, y_test) = load_digits()
    return x_train.reshape(-1, 64), y_train, x_test.reshape(-1, 64), y_test


def initial_weights(seed):
    keras.utils.set_random_seed(seed)
    model = build_model(l2=0.0)
    return [w.copy() for w in model.get_weights()]


def build_model(l2):
    regularizer = keras.regularizers.L2(l2)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(HIDDEN, activation="tanh", kernel_regularizer=regularizer),
            keras.layers.Dense(10, kernel_regularizer=regularizer),
        ]
    )


# A numpy copy of the model for scipy: the weights as one float64 vector.
def split(theta):
    sizes = [64 * HIDDEN, HIDDEN, HIDDEN * 10, 10]
    w1, b1, w2, b2 = np.split(theta, np.cumsum(sizes)[:-1])
    return w1.reshape(64, HIDDEN), b1, w2.reshape(HIDDEN, 10), b2


def numpy_objective(x, y, l2):
    x = x.astype("float64")
    targets = np.eye(10)[y]

    def objective(theta):
        w1, b1, w2, b2 = split(theta)
        hidden = np.tanh(x @ w1 + b1)
        logits = hidden @ w2 + b2
        logits = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        probabilities = np.exp(logits - log_norm[:, None])
        loss = np.mean(log_norm - (logits * targets).sum(axis=1))
        loss += l2 * (np.sum(w1**2) + np.sum(w2**2))

        dlogits = (probabilities - targets) / len(x)
        dhidden = (dlogits @ w2.T) * (1.0 - hidden**2)
        gradient = [
            x.T @ dhidden + 2 * l2 * w1,
            dhidden.sum(axis=0),
            hidden.T @ dlogits + 2 * l2 * w2,
            dlogits.sum(axis=0),
        ]
        return loss, np.concatenate([g.ravel() for g in gradient])

    return objective


def numpy_accuracy(theta, x, y):
    w1, b1, w2, b2 = split(theta)
    logits = np.tanh(x @ w1 + b1) @ w2 + b2
    return float(np.mean(logits.argmax(axis=1) == y))


def flatten(weights):
    return np.concatenate([w.ravel() for w in weights]).astype("float64")


def tune_l2(x, y, start, max_iterations):
    # The last fifth of the training set is the validation split.
    cut = int(0.8 * len(x))
    scores = {}
    for l2 in L2_GRID:
        result = scipy.optimize.minimize(
            numpy_objective(x[:cut], y[:cut], l2),
            flatten(start),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iterations},
        )
        scores[l2] = numpy_accuracy(result.x, x[cut:], y[cut:])
    best = max(scores, key=scores.get)
    return best, scores


def run_keras(optimizer, data, x, y, x_test, y_test, l2, start, **fit_args):
    """Fit on `data` (a tuple of arrays or a dataset) and evaluate on the arrays."""
    model = build_model(l2)
    model.set_weights(start)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    if isinstance(optimizer, LBFGS):
        install_lbfgs_step(model)

    collect_garbage()
    started = time.perf_counter()
    if isinstance(data, tuple):
        model.fit(*data, verbose=0, **fit_args)
    else:
        model.fit(data, verbose=0, **fit_args)
    seconds = time.perf_counter() - started

    objective = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["loss"]
    accuracy = model.evaluate(x_test, y_test, batch_size=len(x_test), verbose=0, return_dict=True)["accuracy"]
    return model, objective, accuracy, seconds


def run_scipy(x, y, x_test, y_test, l2, start, max_iterations):
    objective = numpy_objective(x, y, l2)
    collect_garbage()
    started = time.perf_counter()
    result = scipy.optimize.minimize(
        objective, flatten(start), jac=True, method="L-BFGS-B", options={"maxiter": max_iterations}
    )
    seconds = time.perf_counter() - started
    return result, float(result.fun), numpy_accuracy(result.x, x_test, y_test), seconds


def run_torch(x, y, x_test, y_test, l2, start, max_iterations, threads):
    import torch

    # With more intra-op threads than free cores, torch's threads spin and a
    # run can take ten times longer, so the benchmark reports both settings.
    torch.set_num_threads(threads)

    w1, b1, w2, b2 = [torch.tensor(w, requires_grad=True) for w in start]
    inputs, labels = torch.tensor(x), torch.tensor(y)

    def objective():
        logits = torch.tanh(inputs @ w1 + b1) @ w2 + b2
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss + l2 * (w1.pow(2).sum() + w2.pow(2).sum())

    optimizer = torch.optim.LBFGS(
        [w1, b1, w2, b2],
        lr=1.0,
        max_iter=max_iterations,
        history_size=10,
        tolerance_grad=1e-5,
        tolerance_change=2.2e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    collect_garbage()
    started = time.perf_counter()
    optimizer.step(closure)
    seconds = time.perf_counter() - started

    with torch.no_grad():
        final = float(objective())
        logits = torch.tanh(torch.tensor(x_test) @ w1 + b1) @ w2 + b2
        accuracy = float((logits.argmax(dim=1).numpy() == y_test).mean())
    evaluations = optimizer.state[optimizer._params[0]]["func_evals"]
    return evaluations, final, accuracy, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iterations", type=int, default=500, help="L-BFGS iteration cap for all three L-BFGS runs")
    parser.add_argument("--epochs", type=int, default=60, help="epochs for Adam and SGD")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size for Adam and SGD")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared initial weights")
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of each head-to-head row, whose median the table shows"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1. Received: --repeats {args.repeats}")

    x, y, x_test, y_test = load_data()
    start = initial_weights(args.seed)
    l2, scores = tune_l2(x, y, start, args.max_iterations)
    print(f"L2 validation accuracy: {scores}; chosen l2={l2}")

    rows = []
    tolerances = {"tolerance_grad": 1e-5, "tolerance_change": 1e7 * np.finfo(float).eps}
    model, objective, accuracy, seconds = run_keras(
        LBFGS(max_iterations=args.max_iterations, **tolerances),
        (x, y), x, y, x_test, y_test, l2, start,
        batch_size=len(x), epochs=args.max_iterations, shuffle=False,
    )
    evaluations = model.optimizer.function_evaluations
    rows.append(("keras-cost LBFGS, arrays, 1 epoch = 1 iteration", objective, accuracy, seconds, evaluations))

    # A repeated full batch keeps one dataset iterator for the whole fit,
    # where arrays build a new one every epoch.
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    model, objective, accuracy, seconds = run_keras(
        LBFGS(max_iterations=args.max_iterations, **tolerances),
        dataset, x, y, x_test, y_test, l2, start,
        steps_per_epoch=1, epochs=args.max_iterations,
    )
    evaluations = model.optimizer.function_evaluations
    rows.append(("keras-cost LBFGS, dataset, 1 epoch = 1 iteration", objective, accuracy, seconds, evaluations))

    # One epoch of many steps: the History has one entry, but fit's
    # per-epoch overhead is paid once.
    model, objective, accuracy, seconds = run_keras(
        LBFGS(max_iterations=args.max_iterations, **tolerances),
        dataset, x, y, x_test, y_test, l2, start,
        steps_per_epoch=args.max_iterations, epochs=1,
    )
    evaluations = model.optimizer.function_evaluations
    rows.append(("keras-cost LBFGS, dataset, 1 epoch in all", objective, accuracy, seconds, evaluations))

    # What fit alone costs for as many steps: a plain gradient step of
    # learning rate 0 on the same full batch, tracing included. It does not
    # train, so its loss and accuracy are those of the start point.
    _, objective, accuracy, seconds = run_keras(
        keras.optimizers.SGD(0.0),
        dataset, x, y, x_test, y_test, l2, start,
        steps_per_epoch=args.max_iterations, epochs=1,
    )
    name = f"floor: Keras fit, SGD(0.0) on the same dataset, {args.max_iterations} steps"
    rows.append((name, objective, accuracy, seconds, None))

    for name, optimizer in (
        ("Keras Adam (lr 1e-2)", keras.optimizers.Adam(1e-2)),
        ("Keras SGD (lr 0.1, momentum 0.9)", keras.optimizers.SGD(0.1, momentum=0.9)),
    ):
        _, objective, accuracy, seconds = run_keras(
            optimizer, (x, y), x, y, x_test, y_test, l2, start, batch_size=args.batch_size, epochs=args.epochs
        )
        rows.append((name, objective, accuracy, seconds, None))

    result, objective, accuracy, seconds = run_scipy(x, y, x_test, y_test, l2, start, args.max_iterations)
    rows.append(("scipy L-BFGS-B (float64)", objective, accuracy, seconds, result.nfev))

    import torch

    # All iterations inside one fit step, as torch's single
    # `optimizer.step(closure)` with `max_iter` runs them.
    ours = f"keras-cost LBFGS, dataset, iterations_per_step={args.max_iterations}, 1 step"
    torch_names = {
        threads: f"torch.optim.LBFGS (strong Wolfe, {threads} threads)"
        for threads in sorted({1, torch.get_num_threads()})
    }
    repeated = {name: [] for name in [ours, *torch_names.values()]}
    for _ in range(args.repeats):
        model, objective, accuracy, seconds = run_keras(
            LBFGS(max_iterations=args.max_iterations, iterations_per_step=args.max_iterations, **tolerances),
            dataset, x, y, x_test, y_test, l2, start,
            steps_per_epoch=1, epochs=1,
        )
        evaluations = model.optimizer.function_evaluations
        repeated[ours].append((objective, accuracy, seconds, evaluations))
        for threads, name in torch_names.items():
            evaluations, objective, accuracy, seconds = run_torch(
                x, y, x_test, y_test, l2, start, args.max_iterations, threads
            )
            repeated[name].append((objective, accuracy, seconds, evaluations))
    for name, runs in repeated.items():
        # Every run of a method reaches the same point, so only the time varies.
        objective, accuracy, _, evaluations = runs[0]
        rows.append((name, objective, accuracy, [seconds for _, _, seconds, _ in runs], evaluations))

    print()
    print(
        "| method | final training objective | test accuracy (%) | wall time (s) "
        "| loss evaluations | wall time of each run (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, objective, accuracy, seconds, evaluations in rows:
        count = "" if evaluations is None else str(evaluations)
        runs = ""
        if isinstance(seconds, list):
            runs = ", ".join(f"{value:.2f}" for value in seconds)
            seconds = float(np.median(seconds))
        print(f"| {name} | {objective:.5f} | {100 * accuracy:.2f} | {seconds:.2f} | {count} | {runs} |")


if __name__ == "__main__":
    main()
