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
# # Cost accounting: what does a model cost to store, to run and to train?
#
# Before making a model cheaper, measure what it costs now. keras-cost
# answers two questions:
#
# - **Deployment cost** of a model: `keras_cost.cost.model_cost(model)`
#   returns a `ModelCost` with the number of parameters, how many of them
#   are non-zero, the forward FLOPs per example, and the weight size stored
#   as float32, as int8 and zipped.
# - **Training cost** of a `fit` run: `keras_cost.callbacks.cost.CostCallback`
#   logs seconds per step, examples per second, an estimate of the training
#   FLOPs and, given a price per hour, the money spent.
#
# This tutorial measures two small classifiers on the bundled digits data
# (1,437 training and 360 test images of 8x8 pixels) and plots their
# accuracy against their size and FLOPs.
#
# Run it as a script with `python tutorials/07_cost_accounting.py`, or open
# it as a notebook with jupytext. Set `KERAS_COST_FAST=1` for a quick run
# with fewer epochs (the numbers are then less accurate) and
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

from keras_cost.callbacks.cost import CostCallback
from keras_cost.cost import compare
from keras_cost.cost import model_cost
from keras_cost.cost import plot_tradeoff
from keras_cost.datasets import load_digits

FAST = os.environ.get("KERAS_COST_FAST") == "1"
EPOCHS = 2 if FAST else 20
OUT_DIR = os.environ.get("KERAS_COST_TUTORIAL_OUT") or tempfile.mkdtemp(
    prefix="keras_cost_tutorial_"
)
os.makedirs(OUT_DIR, exist_ok=True)
keras.utils.set_random_seed(0)

(x_train, y_train), (x_test, y_test) = load_digits()
print("train:", x_train.shape, "test:", x_test.shape)

# %% [markdown]
# ## Two models to compare
#
# A multilayer perceptron (MLP) that flattens the 64 pixels, and a small
# convolutional network (CNN). The CNN has fewer parameters but spends more
# FLOPs, because every convolution kernel is applied at each of the 8x8
# positions.

# %%
def build_mlp():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mlp",
    )


def build_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ],
        name="cnn",
    )


mlp = build_mlp()
cnn = build_cnn()

# %% [markdown]
# ## Deployment cost of one model
#
# `model_cost` needs only a built model: training does not change any
# number here except the zipped size and the non-zero count.
#
# The FLOP convention is the one of the TensorFlow profiler: a multiply-add
# counts as 2 FLOPs. Check one layer by hand. The first Dense layer of the
# MLP has 64 inputs and 128 units. Its matrix product costs
# `2 * 64 * 128 = 16,384` FLOPs, the bias 128 and the ReLU 128 (one
# comparison per element), 16,640 in all. The output layer has 128
# inputs, 10 units and no activation: `2 * 128 * 10 + 10 = 2,570` FLOPs.

# %%
mlp_cost = model_cost(mlp)
print(mlp_cost.to_markdown())

dense_flops_by_hand = (2 * 64 * 128 + 128 + 128) + (2 * 128 * 10 + 10)
print("Dense FLOPs by hand:  ", dense_flops_by_hand)
print("Dense FLOPs, measured:", mlp_cost.flops_by_layer_type["Dense"])

# %% [markdown]
# Expect 9,610 parameters for the MLP: `64 * 128 + 128` in the first
# layer and `128 * 10 + 10` in the second. Stored as float32 that is
# `4 * 9,610 = 38,440` bytes. The int8 estimate, 10,170 bytes, is one byte
# per weight plus one float32 scale per output channel of each kernel and
# one per bias, about 3.8x smaller. Keras initializes biases to zero, so
# 138 of the parameters are zero before training (1.4% "sparsity"). The
# other weights are random, so zlib saves little on the float32 bytes.

# %%
cnn_cost = model_cost(cnn)
print(cnn_cost.to_markdown())

# %% [markdown]
# ## Training cost with `CostCallback`
#
# `CostCallback` writes its values into the `logs` of every epoch, so they
# appear in `history.history` next to the loss, and in `CSVLogger` or
# `TensorBoard` if you add those after it. Keras does not tell callbacks
# the batch size, so pass the one you give to `fit`: without it the
# callback cannot count examples or training FLOPs.
#
# The training FLOPs are an estimate: three forward passes per example,
# because the backward pass costs about twice the forward pass.
#
# `price_per_hour` is the price of your machine; 2.5 below is an example
# value in any currency. With `log_dir` the totals also go to
# `cost_summary.json`.

# %%
BATCH_SIZE = 32
histories = {}
summaries = {}
accuracies = {}
for model in (mlp, cnn):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callback = CostCallback(
        price_per_hour=2.5,
        batch_size=BATCH_SIZE,
        log_dir=os.path.join(OUT_DIR, f"cost_{model.name}"),
    )
    histories[model.name] = model.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[callback],
    )
    summaries[model.name] = callback.summary()
    _, accuracies[model.name] = model.evaluate(x_test, y_test, verbose=0)

for name, summary in summaries.items():
    print(
        f"{name}: {summary['epochs']} epochs, {summary['steps']} steps, "
        f"{summary['examples_per_second']:,.0f} examples/s, "
        f"{summary['train_flops']:.3g} training FLOPs, "
        f"cost {summary['cost']:.6f} at 2.5 per hour, "
        f"test accuracy {accuracies[name]:.3f}"
    )

# %% [markdown]
# With the full 20 epochs both models reach a test accuracy of about 0.95
# or more on these 360 images. The first epoch is the slowest, because
# Keras traces and compiles the train step then. Speeds depend on your
# machine. On the shared 2-core machine used to write this tutorial the
# MLP trained at about 2,000 examples per second and the CNN at about
# 1,300.
#
# The training FLOPs can be checked by hand: each epoch feeds
# `ceil(1437 / 32) = 45` batches of 32 examples (the callback counts the
# last, partial batch as full), so after `EPOCHS` epochs the estimate is
# `3 * forward FLOPs * 45 * 32 * EPOCHS`.

# %%
steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))
expected_train_flops = 3 * mlp_cost.flops * steps_per_epoch * BATCH_SIZE * EPOCHS
print("MLP training FLOPs, by hand:", f"{expected_train_flops:.4g}")
print("MLP training FLOPs, logged: ", f"{summaries['mlp']['train_flops']:.4g}")

# %% [markdown]
# ## Plot the training cost per epoch
#
# The logged values are ordinary entries of `history.history`.

# %%
figure, (speed_axes, flops_axes) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for name, history in histories.items():
    epochs = np.arange(1, len(history.history["loss"]) + 1)
    speed_axes.plot(epochs, history.history["examples_per_second"], marker="o", label=name)
    flops_axes.plot(epochs, history.history["train_flops"], marker="o", label=name)
speed_axes.set_xlabel("epoch")
speed_axes.set_ylabel("examples per second")
speed_axes.set_title("training throughput")
flops_axes.set_xlabel("epoch")
flops_axes.set_ylabel("cumulative training FLOPs (estimate)")
flops_axes.set_title("training FLOPs")
for axes in (speed_axes, flops_axes):
    axes.legend()
    axes.grid(True, alpha=0.3)
training_plot = os.path.join(OUT_DIR, "07_training_cost.png")
figure.savefig(training_plot, dpi=100)
print("saved", training_plot)

# %% [markdown]
# ## Compare trained models side by side
#
# After training, measure again: the weights are no longer random, which
# changes the zipped size a little. `compare` returns a markdown table and
# the same numbers as dicts, and `plot_tradeoff` draws accuracy against
# zipped size and against FLOPs.

# %%
reports = [model_cost(mlp), model_cost(cnn)]
table, rows = compare(reports)
print(table)

tradeoff_plot = plot_tradeoff(
    reports,
    os.path.join(OUT_DIR, "07_tradeoff.png"),
    accuracies=[accuracies["mlp"], accuracies["cnn"]],
)
print("saved", tradeoff_plot)

# %% [markdown]
# ## What to take away
#
# - The MLP stores about twice as many weights as the CNN, while the CNN
#   needs about 9x more FLOPs per example: size and compute are different
#   costs, and the right one to cut depends on where the model runs.
# - `int8_bytes` is close to a quarter of `float32_bytes`: that is what
#   int8 quantization (tutorial 03) saves in storage.
# - `nonzero_parameters` equals `parameters` for a dense model. Pruning
#   (tutorial 01) sets weights to exactly zero, which shrinks
#   `zipped_bytes`, not `float32_bytes`.
# - `zipped_int8_bytes` combines both: the weights rounded to int8 (the
#   rounding of `int8_weight_codes`), then zipped. For a pruned model it is
#   the smallest of the sizes here.
