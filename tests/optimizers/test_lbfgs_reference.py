"""LBFGS against a plain numpy L-BFGS and against scipy's L-BFGS-B.

The numpy reference below follows Nocedal and Wright (2006): algorithm 7.4
for the direction, algorithms 3.5 and 3.6 with cubic interpolation
(equation 3.59) for the strong Wolfe line search. It is written with plain
loops so that it can be checked by eye, and it shares no code with the
package.
"""

import keras
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from keras_cost.datasets import load_digits
from keras_cost.optimizers import LBFGS, install_lbfgs_step

C1 = 1e-4
C2 = 0.9


def cubic_step(t_a, f_a, g_a, t_b, f_b, g_b, lower, upper):
    d1 = g_a + g_b - 3.0 * (f_a - f_b) / (t_a - t_b)
    square = d1 * d1 - g_a * g_b
    if not square >= 0.0 or not np.isfinite(f_a) or not np.isfinite(f_b):
        return 0.5 * (lower + upper)
    d2 = np.sign(t_b - t_a) * np.sqrt(square)
    t = t_b - (t_b - t_a) * (g_b + d2 - d1) / (g_b - g_a + 2.0 * d2)
    if not np.isfinite(t):
        return 0.5 * (lower + upper)
    return min(max(t, lower), upper)


def strong_wolfe(fun, x, f0, g0, d, t, max_evals=25, tolerance=1e-9):
    """Return (t, f, g, evaluations); t = 0 when no step lowered the loss."""
    slope0 = g0 @ d
    prev = (0.0, f0, slope0, g0)
    evals = 0
    low = high = prev
    bracketed = False
    while evals < max_evals:
        f, g = fun(x + t * d)
        evals += 1
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            f, g = np.inf, np.zeros_like(g)
        point = (t, f, g @ d, g)
        if f > f0 + C1 * t * slope0 or (evals > 1 and f >= prev[1]):
            low, high, bracketed = prev, point, True
            break
        if abs(point[2]) <= -C2 * slope0:
            return t, f, g, evals
        if point[2] >= 0:
            low, high, bracketed = point, prev, True
            break
        t_next = cubic_step(prev[0], prev[1], prev[2], t, f, point[2], t + 0.01 * (t - prev[0]), 10 * t)
        prev = point
        t = t_next
    if not bracketed:
        if prev[0] > 0 and prev[1] <= f0 + C1 * prev[0] * slope0:
            return prev[0], prev[1], prev[3], evals
        return 0.0, f0, g0, evals

    size = np.max(np.abs(d))
    while evals < max_evals and abs(high[0] - low[0]) * size > tolerance:
        lower, upper = min(low[0], high[0]), max(low[0], high[0])
        margin = 0.1 * (upper - lower)
        t = cubic_step(low[0], low[1], low[2], high[0], high[1], high[2], lower + margin, upper - margin)
        f, g = fun(x + t * d)
        evals += 1
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            f, g = np.inf, np.zeros_like(g)
        point = (t, f, g @ d, g)
        if f > f0 + C1 * t * slope0 or f >= low[1]:
            high = point
            continue
        if abs(point[2]) <= -C2 * slope0:
            return t, f, g, evals
        if point[2] * (high[0] - low[0]) >= 0:
            high = low
        low = point
    return low[0], low[1], low[3], evals


def reference_lbfgs(fun, x, iterations, history_size=10):
    """Return the loss after each iteration and the number of evaluations."""
    f, g = fun(x)
    evals = 1
    pairs = []
    losses = []
    for k in range(iterations):
        q = g.copy()
        alphas = []
        for s, y in reversed(pairs):
            alpha = (s @ q) / (s @ y)
            q -= alpha * y
            alphas.append(alpha)
        if pairs:
            s, y = pairs[-1]
            q *= (s @ y) / (y @ y)
        for (s, y), alpha in zip(pairs, reversed(alphas)):
            beta = (y @ q) / (s @ y)
            q += (alpha - beta) * s
        d = -q
        t0 = min(1.0, 1.0 / np.linalg.norm(g)) if k == 0 else 1.0
        t, f_new, g_new, used = strong_wolfe(fun, x, f, g, d, t0)
        evals += used
        if t == 0.0:
            break
        s, y = t * d, g_new - g
        if s @ y > 1e-10:
            pairs = (pairs + [(s, y)])[-history_size:]
        x, f, g = x + s, f_new, g_new
        losses.append(f)
    return np.array(losses), evals, x


def digits_objective(l2):
    (x, y), _ = load_digits()
    features = x.reshape(len(x), 64).astype("float64")
    targets = np.eye(10)[y]

    def fun(theta):
        kernel = theta[:640].reshape(64, 10)
        logits = features @ kernel + theta[640:]
        logits = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        probabilities = np.exp(logits - log_norm[:, None])
        loss = np.mean(log_norm - (logits * targets).sum(axis=1)) + l2 * np.sum(kernel**2)
        dlogits = (probabilities - targets) / len(features)
        grad_kernel = features.T @ dlogits + 2 * l2 * kernel
        return loss, np.concatenate([grad_kernel.ravel(), dlogits.sum(axis=0)])

    return features, y, fun


@pytest.fixture
def float64_policy():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def digits_model(l2, **lbfgs_args):
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(l2))]
    )
    model.compile(
        optimizer=LBFGS(**lbfgs_args),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    install_lbfgs_step(model)
    start = np.concatenate([w.ravel() for w in model.get_weights()])
    return model, start


def fit_repeated_batch(model, features, labels, steps=500):
    # One epoch of many steps on the repeated full batch pays fit's per-epoch
    # overhead once, which keeps these long runs fast.
    dataset = tf.data.Dataset.from_tensors((features, labels)).repeat()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)


def test_matches_reference_iterates(float64_policy):
    l2 = 1e-3
    features, labels, fun = digits_objective(l2)
    model, start = digits_model(l2, tolerance_grad=0.0, tolerance_change=0.0)

    history = model.fit(features, labels, batch_size=len(features), epochs=15, shuffle=False, verbose=0)
    losses, evals, _ = reference_lbfgs(fun, start, iterations=15)

    ours = np.array(history.history["loss"])
    assert ours.shape == losses.shape
    np.testing.assert_allclose(ours, losses, rtol=1e-7)
    assert model.optimizer.function_evaluations == evals


def test_digits_logistic_matches_scipy(float64_policy):
    l2 = 1e-3
    features, labels, fun = digits_objective(l2)
    # The same stopping rules as scipy's defaults: pgtol 1e-5, factr 1e7.
    model, start = digits_model(l2, tolerance_grad=1e-5, tolerance_change=1e7 * np.finfo(float).eps)

    fit_repeated_batch(model, features, labels)
    result = scipy.optimize.minimize(fun, start, jac=True, method="L-BFGS-B")

    final_loss = model.evaluate(features, labels, batch_size=len(features), verbose=0)
    assert abs(final_loss - result.fun) / abs(result.fun) <= 1e-4
    assert model.optimizer.function_evaluations <= 1.5 * result.nfev
    assert model.optimizer.stop_reason is not None


def test_digits_float32_matches_scipy():
    l2 = 1e-3
    features, labels, fun = digits_objective(l2)
    model, start = digits_model(l2, tolerance_grad=1e-5, tolerance_change=1e7 * np.finfo(float).eps)

    fit_repeated_batch(model, features.astype("float32"), labels)
    result = scipy.optimize.minimize(fun, start.astype("float64"), jac=True, method="L-BFGS-B")

    final_loss = model.evaluate(features.astype("float32"), labels, batch_size=len(features), verbose=0)
    assert abs(final_loss - result.fun) / abs(result.fun) <= 1e-4
    assert model.optimizer.function_evaluations <= 1.5 * result.nfev


def test_reference_matches_scipy():
    # Checks the reference itself, so a wrong reference cannot hide a wrong LBFGS.
    _, _, fun = digits_objective(1e-3)
    start = np.zeros(650)

    losses, _, _ = reference_lbfgs(fun, start, iterations=300)
    result = scipy.optimize.minimize(fun, start, jac=True, method="L-BFGS-B")

    assert abs(losses[-1] - result.fun) / result.fun <= 1e-6
