# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # L-BFGS: fewer iterations for small, full-batch problems
#
# **What.** L-BFGS is a quasi-Newton method. From the last few steps and
# gradient changes it builds an estimate of the inverse curvature of the
# loss and turns the gradient into a better direction with it. A line
# search picks the step length, so there is no learning rate to tune.
#
# **Why.** On smooth, full-batch problems (logistic regression, small
# networks, fitting physical models, fine-tuning a last layer) it reaches
# a tight minimum in far fewer iterations than first-order methods such
# as Adam. Each iteration costs a few loss and gradient evaluations and
# memory for `history_size` vector pairs. It suits problems where one
# batch contains all the data; with noisy mini-batches Adam or SGD are
# usually the better choice.
#
# **How.** Keras has no L-BFGS. `keras_cost.optimizers.LBFGS` is a Keras
# optimizer, and `install_lbfgs_step(model)` replaces the model's train
# function with one that evaluates the loss as often as the line search
# needs. With `batch_size=len(x)`, one epoch is one L-BFGS iteration.
# `LBFGS(iterations_per_step=n)` runs up to n iterations in each `fit` step
# instead, which is faster when you do not need every iteration in History.
#
# Set `KERAS_COST_FAST=1` for a quick run with fewer iterations and
# `KERAS_COST_TUTORIAL_OUT` to choose where the plots go.

# %%
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

# A script has no display, so plots are drawn to files only. In Jupyter
# the inline backend stays, so the figures also show in the notebook.
if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

import keras
import numpy as np
import scipy.optimize
import scipy.special

from keras_cost.datasets import load_digits
from keras_cost.optimizers import LBFGS
from keras_cost.optimizers import install_lbfgs_step

FAST = os.environ.get("KERAS_COST_FAST") == "1"
ITERATIONS = 15 if FAST else 150
L2 = 1e-3
OUT_DIR = os.environ.get("KERAS_COST_TUTORIAL_OUT") or tempfile.mkdtemp(
    prefix="keras_cost_tutorial_"
)
os.makedirs(OUT_DIR, exist_ok=True)
keras.utils.set_random_seed(0)

(x_train, y_train), (x_test, y_test) = load_digits()
x_flat = x_train.reshape(len(x_train), -1)
x_test_flat = x_test.reshape(len(x_test), -1)

# %% [markdown]
# ## The problem: L2-regularized softmax regression
#
# One Dense layer from 64 pixels to 10 logits, trained with cross-entropy
# plus `L2 * sum(W**2)`. The loss is convex with a single minimum, so we
# can check every optimizer against a reference: SciPy's own L-BFGS-B
# applied to the same formula in NumPy.

# %%
def build_model():
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(
                10,
                kernel_initializer="zeros",
                kernel_regularizer=keras.regularizers.L2(L2),
            ),
        ],
        name="softmax_regression",
    )
    return model


cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class EvaluationCounter(keras.callbacks.Callback):
    """Record the optimizer's loss and gradient evaluations after each epoch."""

    def on_train_begin(self, logs=None):
        self.evaluations = []

    def on_epoch_end(self, epoch, logs=None):
        self.evaluations.append(self.model.optimizer.function_evaluations)


# %% [markdown]
# ## Train with L-BFGS
#
# Compile with `LBFGS()`, call `install_lbfgs_step`, and fit on the whole
# training set as one batch. `shuffle=False` keeps the batch identical
# between iterations, so each step can reuse the loss and gradient that
# the previous line search already computed at the accepted point.

# %%
lbfgs_model = build_model()
lbfgs_model.compile(optimizer=LBFGS(history_size=10), loss=cross_entropy, metrics=["accuracy"])
install_lbfgs_step(lbfgs_model)
counter = EvaluationCounter()
lbfgs_history = lbfgs_model.fit(
    x_flat,
    y_train,
    batch_size=len(x_flat),
    epochs=ITERATIONS,
    shuffle=False,
    verbose=0,
    callbacks=[counter],
)
optimizer = lbfgs_model.optimizer
print(f"iterations run: {len(lbfgs_history.history['loss'])}")
print(f"loss and gradient evaluations: {optimizer.function_evaluations}")
print(f"stop reason: {optimizer.stop_reason}")
print(f"final training loss: {lbfgs_history.history['loss'][-1]:.6f}")
_, lbfgs_accuracy = lbfgs_model.evaluate(x_test_flat, y_test, verbose=0)
print(f"test accuracy: {lbfgs_accuracy:.3f}")

# %% [markdown]
# `stop_reason` is `None` when `fit` ran all its epochs, and otherwise names
# the tolerance that stopped training early (`model.stop_training` is set, so
# `fit` returns before its last epoch).

# %% [markdown]
# ## The same problem with Adam
#
# Full-batch Adam with a tuned learning rate, one gradient evaluation per
# iteration. To be fair, give it as many gradient evaluations as L-BFGS
# used in total.

# %%
adam_model = build_model()
adam_model.compile(optimizer=keras.optimizers.Adam(0.05), loss=cross_entropy, metrics=["accuracy"])
adam_history = adam_model.fit(
    x_flat,
    y_train,
    batch_size=len(x_flat),
    epochs=optimizer.function_evaluations,
    shuffle=False,
    verbose=0,
)
_, adam_accuracy = adam_model.evaluate(x_test_flat, y_test, verbose=0)
print(f"Adam after {optimizer.function_evaluations} iterations: "
      f"training loss {adam_history.history['loss'][-1]:.6f}, test accuracy {adam_accuracy:.3f}")

# %% [markdown]
# ## A reference: SciPy's L-BFGS-B on the same loss
#
# The same objective in NumPy, in float64: mean cross-entropy of
# `x @ W + b` plus `L2 * sum(W**2)`, with its gradient written out by hand.

# %%
def loss_and_gradient(flat):
    kernel = flat[: 64 * 10].reshape(64, 10)
    bias = flat[64 * 10 :]
    logits = x_flat.astype("float64") @ kernel + bias
    log_probabilities = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    count = len(y_train)
    loss = -np.mean(log_probabilities[np.arange(count), y_train]) + L2 * np.sum(kernel**2)

    probabilities = np.exp(log_probabilities)
    probabilities[np.arange(count), y_train] -= 1.0
    probabilities /= count
    kernel_gradient = x_flat.astype("float64").T @ probabilities + 2 * L2 * kernel
    bias_gradient = probabilities.sum(axis=0)
    return loss, np.concatenate([kernel_gradient.ravel(), bias_gradient])


reference = scipy.optimize.minimize(
    loss_and_gradient,
    np.zeros(64 * 10 + 10),
    jac=True,
    method="L-BFGS-B",
    options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-14},
)
print(f"SciPy minimum: {reference.fun:.6f} after {reference.nit} iterations")
print(f"keras-cost L-BFGS: {lbfgs_history.history['loss'][-1]:.6f} after "
      f"{len(lbfgs_history.history['loss'])} iterations")
print(f"Adam:              {adam_history.history['loss'][-1]:.6f} after "
      f"{len(adam_history.history['loss'])} iterations")

# %% [markdown]
# With the full settings, expect L-BFGS to stop on its own after about 100
# iterations and 110 evaluations ("the relative loss change fell below
# tolerance_change"). Its loss equals the SciPy minimum, 0.354091, to the
# printed six decimals, although Keras computes in float32 and SciPy here
# in float64. Adam, given the same 110 gradient evaluations, is still
# about 1e-3 above the minimum, and the plot below shows the gap closing
# far more slowly. Both reach a test accuracy of about 0.96: on this
# problem the exact optimum is not more accurate than a nearly-optimal
# point. L-BFGS pays off where the exact minimum matters, and where each
# evaluation is expensive.

# %%
lbfgs_gap = np.maximum(np.array(lbfgs_history.history["loss"]) - reference.fun, 1e-8)
adam_gap = np.maximum(np.array(adam_history.history["loss"]) - reference.fun, 1e-8)

figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
axes.semilogy(counter.evaluations, lbfgs_gap, marker=".", label="L-BFGS (keras-cost)")
axes.semilogy(np.arange(1, len(adam_gap) + 1), adam_gap, label="Adam, learning rate 0.05")
axes.set_xlabel("loss and gradient evaluations")
axes.set_ylabel("training loss minus SciPy minimum")
axes.set_title("softmax regression on the digits data")
axes.grid(True, which="both", alpha=0.3)
axes.legend()
plot_path = os.path.join(OUT_DIR, "05_lbfgs_convergence.png")
figure.savefig(plot_path, dpi=100)
print("saved", plot_path)

# %% [markdown]
# ## Options
#
# - `history_size` (default 10): more pairs give a better curvature
#   estimate and cost more memory, `2 * history_size` copies of the weights.
# - `line_search="backtracking"` is cheaper per iteration than the default
#   `"strong_wolfe"`, but its steps are less reliable.
# - `tolerance_grad` and `tolerance_change` stop training once the gradient
#   or the loss change is small enough.
# - Mini-batches are allowed (each batch gets its own line search), but
#   the curvature estimate then mixes batches: prefer full batches.
