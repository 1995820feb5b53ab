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
# # Weight pruning during `model.fit`
#
# **What.** Magnitude pruning sets the weights with the smallest absolute
# values to exactly zero and keeps them at zero while the rest of the
# network trains on. A model pruned to 80% sparsity has only one weight in
# five left.
#
# **Why.** Zeros compress: a pruned model zips to a fraction of its size,
# and sparse kernels can run faster on hardware and runtimes that skip
# zeros. Most networks tolerate high sparsity with little accuracy loss if
# the sparsity is raised gradually and the surviving weights are trained
# to make up for the removed ones.
#
# **How.** `PruneCallback` goes into the `callbacks` list of `fit`. A
# schedule sets when to prune and to what sparsity. The mask is a kernel
# constraint, so the optimizer re-applies it after every update inside the
# compiled train step. After training, `strip_pruning` returns a plain
# model without the masks.
#
# This tutorial trains a small network on the bundled digits data, prunes
# copies of it to several sparsities, and measures accuracy and zipped
# size. Set `KERAS_COST_FAST=1` for a quick run with fewer epochs and
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

from keras_cost.callbacks.prune import PruneCallback
from keras_cost.cost import model_cost
from keras_cost.datasets import load_digits
from keras_cost.pruning import PolynomialDecay
from keras_cost.pruning import sparsity
from keras_cost.pruning import strip_pruning

FAST = os.environ.get("KERAS_COST_FAST") == "1"
BASELINE_EPOCHS = 3 if FAST else 20
PRUNE_EPOCHS = 3 if FAST else 12
TARGET_SPARSITIES = [0.5, 0.9] if FAST else [0.5, 0.7, 0.8, 0.9, 0.95]
BATCH_SIZE = 32
OUT_DIR = os.environ.get("KERAS_COST_TUTORIAL_OUT") or tempfile.mkdtemp(
    prefix="keras_cost_tutorial_"
)
os.makedirs(OUT_DIR, exist_ok=True)
keras.utils.set_random_seed(0)

(x_train, y_train), (x_test, y_test) = load_digits()
steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))
print("training steps per epoch:", steps_per_epoch)

# %% [markdown]
# ## 1. Train a dense baseline
#
# A multilayer perceptron with two hidden layers: 64 pixels in, 256 and
# 128 hidden units, 10 classes out, about 51,000 weights.

# %%
def build_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mlp",
    )


def compile_model(model, learning_rate=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


baseline = build_model()
compile_model(baseline)
baseline.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=BASELINE_EPOCHS, verbose=0)
_, baseline_accuracy = baseline.evaluate(x_test, y_test, verbose=0)
baseline_cost = model_cost(baseline)
print(f"baseline: test accuracy {baseline_accuracy:.3f}")
print(baseline_cost.to_markdown())

# %% [markdown]
# Expect a test accuracy of about 0.97 after 20 epochs. The zipped size is
# close to the float32 size: trained weights look random to zlib.

# %% [markdown]
# ## 2. Prune with a polynomial schedule
#
# `PolynomialDecay(initial_sparsity, final_sparsity, begin_step, end_step)`
# raises the sparsity from 0 to the target along a cubic curve: fast at
# first, while the network still has many redundant weights, and slowly
# near the end. Steps are optimizer updates (`optimizer.iterations`), not
# epochs. Here the sparsity rises during the first two thirds of the
# pruning epochs, and the last third fine-tunes at the final sparsity.
#
# Start from a copy of the trained baseline with a fresh optimizer, so the
# step counter starts at 0.

# %%
def copy_of_baseline():
    model = keras.models.clone_model(baseline)
    model.set_weights(baseline.get_weights())
    compile_model(model)
    return model


def prune(target_sparsity):
    model = copy_of_baseline()
    end_step = max(1, (2 * PRUNE_EPOCHS * steps_per_epoch) // 3)
    schedule = PolynomialDecay(0.0, target_sparsity, begin_step=0, end_step=end_step)
    history = model.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=PRUNE_EPOCHS,
        verbose=0,
        callbacks=[PruneCallback(schedule)],
    )
    return model, history


pruned_80, history_80 = prune(0.8)
print("logged sparsity per epoch:", np.round(history_80.history["sparsity"], 3))

report = sparsity(pruned_80)
print(f"overall sparsity of the kernels: {report.overall:.3f}")
for name, value in report.kernels.items():
    print(f"  {name}: {value:.3f}")

# %% [markdown]
# `PruneCallback` logs the sparsity of all pruned kernels together in
# `history.history["sparsity"]`, and `keras_cost.pruning.sparsity(model)`
# measures it per kernel. With the default `scope="layer"` every kernel is
# pruned to the same 0.8. Biases are not pruned.

# %% [markdown]
# ## 3. Strip the masks and measure the cost
#
# `strip_pruning` returns a plain copy of the model, with the same weights
# and therefore the same zeros, but without the `PruningMask` constraints.
# Use it for export: the masks only matter while training.

# %%
stripped = strip_pruning(pruned_80)
compile_model(stripped)
_, pruned_accuracy = stripped.evaluate(x_test, y_test, verbose=0)
pruned_cost = model_cost(stripped, name="mlp pruned to 80%")
print(f"pruned to 80%: test accuracy {pruned_accuracy:.3f}")
print(pruned_cost.to_markdown())
print(
    f"zipped size: {baseline_cost.zipped_bytes:,} -> {pruned_cost.zipped_bytes:,} bytes "
    f"({baseline_cost.zipped_bytes / pruned_cost.zipped_bytes:.1f}x smaller)"
)

# %% [markdown]
# Expect about 3x smaller zipped weights at 80% sparsity, and a test
# accuracy within about one point of the baseline. The parameter count,
# the float32 bytes and the FLOPs do not change: the zeros are still
# stored and multiplied. To remove whole units and get a smaller dense
# model, prune neurons and shrink (tutorial 02).

# %% [markdown]
# ## 4. Accuracy against sparsity
#
# Prune copies of the baseline to several targets and plot test accuracy
# and zipped size against sparsity.

# %%
results = []
for target in TARGET_SPARSITIES:
    model, _ = prune(target)
    plain = strip_pruning(model)
    compile_model(plain)
    _, accuracy = plain.evaluate(x_test, y_test, verbose=0)
    zipped = model_cost(plain).zipped_bytes
    results.append((target, sparsity(plain).overall, accuracy, zipped))
    print(f"target {target:.2f}: measured sparsity {results[-1][1]:.3f}, "
          f"test accuracy {accuracy:.3f}, zipped {zipped:,} bytes")

# %%
targets = [0.0] + [row[0] for row in results]
accuracies = [baseline_accuracy] + [row[2] for row in results]
zipped_kib = [baseline_cost.zipped_bytes / 1024] + [row[3] / 1024 for row in results]

figure, (accuracy_axes, size_axes) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
accuracy_axes.plot(targets, accuracies, marker="o")
accuracy_axes.set_xlabel("sparsity of the kernels")
accuracy_axes.set_ylabel("test accuracy")
accuracy_axes.set_title("accuracy against sparsity")
size_axes.plot(targets, zipped_kib, marker="o", color="tab:orange")
size_axes.set_xlabel("sparsity of the kernels")
size_axes.set_ylabel("zipped weights (KiB)")
size_axes.set_title("zipped size against sparsity")
for axes in (accuracy_axes, size_axes):
    axes.grid(True, alpha=0.3)
plot_path = os.path.join(OUT_DIR, "01_pruning_tradeoff.png")
figure.savefig(plot_path, dpi=100)
print("saved", plot_path)

# %% [markdown]
# ## What to expect and what to try
#
# With the full epoch counts this network keeps close to its baseline
# accuracy up to about 90% sparsity and starts to lose accuracy beyond.
# The zipped size falls roughly in proportion to the weights left.
#
# Options of `PruneCallback` worth trying:
#
# - `scope="global"` ranks all kernels together, so layers with many small
#   weights lose more of them than others.
# - `granularity=(2, 4)` keeps at most 2 non-zeros in every 4 consecutive
#   weights (the 2:4 pattern that some GPUs accelerate). Pair it with a
#   schedule whose target is 0.5.
# - `granularity="neuron"` removes whole units; see tutorial 02.
