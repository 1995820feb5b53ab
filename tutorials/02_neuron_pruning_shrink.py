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
# # Neuron pruning by activation and by L0 regularization, then `shrink`
#
# **What.** Instead of single weights (tutorial 01), structured pruning
# removes whole units: a Dense neuron or a convolution filter, that is, a
# whole column of the kernel. Which units go is decided by a criterion:
#
# - `"magnitude"`: units whose weights have the smallest total magnitude;
# - `"activation"`: units whose mean |activation| on the training batches
#   is smallest;
# - `"apoz"`: units whose output is zero most often after ReLU (the
#   average percentage of zeros, APoZ, of Hu et al. 2016).
#
# **Why.** Zeros scattered through a kernel save storage once zipped, but
# a dense matrix multiply still multiplies them. A unit whose column is
# all zeros can be cut out of the network altogether.
# `keras_cost.pruning.shrink` rebuilds the model without it, so the
# parameter count, the float32 size and the FLOPs all fall. That saving
# holds on any hardware and needs no sparse kernels.
#
# A fourth way lets training choose how many units each layer keeps: L0
# regularization puts a learned gate on every unit and adds a penalty for
# each gate that is open (Louizos et al. 2018).
#
# **How.** `PruneCallback(schedule, criterion="activation",
# granularity="neuron", layers=[...])` during `fit`, or
# `l0_regularize(model, l0_lambda)` before `fit` and `strip_pruning`
# after it. Then `shrink(model)`. The outputs of the shrunk model equal the pruned
# model's up to float rounding: a pruned unit outputs the constant
# `activation(bias)`, which `shrink` folds into the next layer's bias.
#
# Set `KERAS_COST_FAST=1` for a quick run with fewer epochs and
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
from keras_cost.cost import compare
from keras_cost.cost import model_cost
from keras_cost.datasets import load_digits
from keras_cost.pruning import PolynomialDecay
from keras_cost.pruning import l0_regularize
from keras_cost.pruning import shrink
from keras_cost.pruning import strip_pruning

FAST = os.environ.get("KERAS_COST_FAST") == "1"
BASELINE_EPOCHS = 3 if FAST else 20
PRUNE_EPOCHS = 2 if FAST else 12
L0_EPOCHS = 2 if FAST else 15
NEURON_SPARSITY = 0.75
BATCH_SIZE = 32
OUT_DIR = os.environ.get("KERAS_COST_TUTORIAL_OUT") or tempfile.mkdtemp(
    prefix="keras_cost_tutorial_"
)
os.makedirs(OUT_DIR, exist_ok=True)
keras.utils.set_random_seed(0)

(x_train, y_train), (x_test, y_test) = load_digits()
steps_per_epoch = int(np.ceil(len(x_train) / BATCH_SIZE))

# %% [markdown]
# ## 1. A dense baseline
#
# Two hidden layers of 256 and 128 ReLU units. Only the hidden layers will
# lose units: the 10 output units are the classes.

# %%
def build_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu", name="hidden_1"),
            keras.layers.Dense(128, activation="relu", name="hidden_2"),
            keras.layers.Dense(10, name="logits"),
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
print(f"baseline: test accuracy {baseline_accuracy:.3f}")

# %% [markdown]
# ## 2. Prune 75% of the hidden units, three ways
#
# Each run starts from a copy of the trained baseline. The sparsity rises
# over the first half of the pruning epochs and the second half fine-tunes
# the units that are left. `layers=["hidden_1", "hidden_2"]` keeps the
# output layer whole.

# %%
def prune_neurons(criterion):
    model = keras.models.clone_model(baseline)
    model.set_weights(baseline.get_weights())
    compile_model(model)
    schedule = PolynomialDecay(
        0.0,
        NEURON_SPARSITY,
        begin_step=0,
        end_step=max(1, PRUNE_EPOCHS * steps_per_epoch // 2),
        frequency=5,
    )
    callback = PruneCallback(
        schedule,
        criterion=criterion,
        granularity="neuron",
        layers=["hidden_1", "hidden_2"],
    )
    model.fit(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        epochs=PRUNE_EPOCHS,
        verbose=0,
        callbacks=[callback],
    )
    return model


def live_units(model, name):
    kernel = model.get_layer(name).kernel.numpy()
    return int(np.count_nonzero(np.any(kernel != 0, axis=0)))


pruned = {}
for criterion in ("magnitude", "activation", "apoz"):
    pruned[criterion] = prune_neurons(criterion)
    _, accuracy = pruned[criterion].evaluate(x_test, y_test, verbose=0)
    print(
        f"{criterion:10s}: test accuracy {accuracy:.3f}, live units "
        f"hidden_1 {live_units(pruned[criterion], 'hidden_1')}/256, "
        f"hidden_2 {live_units(pruned[criterion], 'hidden_2')}/128"
    )

# %% [markdown]
# Each hidden layer keeps a quarter of its units: 64 of 256 and 32 of 128.
# In one full run the baseline reached 0.975, the magnitude criterion
# 0.975 and the two activation criteria 0.958 each. Which criterion wins
# depends on the model and the data, so try more than one.
#
# ## 3. Shrink: cut the dead units out
#
# The pruned model still has 256 and 128 units, three quarters of them
# with all-zero weights. `shrink` builds a new `Sequential` model with only
# the live ones.

# %%
pruned_model = pruned["activation"]
small = shrink(pruned_model)
print([(layer.name, layer.units) for layer in small.layers if hasattr(layer, "units")])

difference = np.max(
    np.abs(pruned_model.predict(x_test, verbose=0) - small.predict(x_test, verbose=0))
)
print(f"largest difference between pruned and shrunk outputs: {difference:.1e}")

compile_model(small)
_, small_accuracy = small.evaluate(x_test, y_test, verbose=0)
print(f"shrunk model: test accuracy {small_accuracy:.3f}")

table, rows = compare(
    [model_cost(baseline, name="baseline"), model_cost(small, name="shrunk")]
)
print(table)
print(f"parameters {rows[0]['parameters'] / rows[1]['parameters']:.1f}x fewer, "
      f"FLOPs {rows[0]['flops'] / rows[1]['flops']:.1f}x fewer")

# %% [markdown]
# Expect output differences of 1e-6 or less (float rounding) and the same
# accuracy as the pruned model. The shrunk network has 64 and 32 hidden
# units: 6,570 parameters instead of 50,826, so 7.7x fewer parameters,
# float32 bytes and FLOPs. Unlike weight pruning, this saving
# needs no zip file and no sparse kernel.

# %% [markdown]
# ## 4. L0 regularization: let training choose the widths
#
# `l0_regularize(model, l0_lambda)` returns a copy of the model with an
# `L0Gate` around every Dense layer but the last. Each gate multiplies one
# unit's output by a random variable from the hard-concrete distribution,
# whose location `log_alpha` is learned. The loss gains
# `l0_lambda * (expected number of non-zero weights)`, the `λ‖W‖0` of
# L0 regularization, where an open gate keeps its unit's inputs and bias.
# So a unit with `n` inputs stays open only if it lowers the data loss by
# more than `l0_lambda * (n + 1)`. At inference a gate is deterministic,
# and exactly 0 for a closed unit.
#
# `l0_lambda=1.5e-4` and `initial_log_alpha=1.0` close many units within
# 15 epochs at a learning rate of 0.01. The default `initial_log_alpha=3.0`
# keeps the model's outputs unchanged at the start, but the gates then
# need more steps to close. After training, `strip_pruning` folds the
# gates into the kernels (a closed unit becomes a zero column) and
# `shrink` removes the closed units.

# %%
gated = l0_regularize(baseline, l0_lambda=1.5e-4, initial_log_alpha=1.0)
print([type(layer).__name__ for layer in gated.layers])
compile_model(gated, learning_rate=1e-2)
gated.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=L0_EPOCHS, verbose=0)

l0_small = shrink(strip_pruning(gated))
compile_model(l0_small)
_, l0_accuracy = l0_small.evaluate(x_test, y_test, verbose=0)
l0_units = [layer.units for layer in l0_small.layers if hasattr(layer, "units")]
print("units after L0 and shrink:", l0_units)
print(f"L0 model: test accuracy {l0_accuracy:.3f}")

table, rows = compare(
    [
        model_cost(baseline, name="baseline"),
        model_cost(small, name="activation, shrunk"),
        model_cost(l0_small, name="L0, shrunk"),
    ]
)
print(table)

# %% [markdown]
# In one full run L0 kept 136 of 256 and 15 of 128 units, at the
# baseline's test accuracy of 0.975: 4.6x fewer parameters than the
# baseline. With `l0_lambda=3e-4` it kept 62 and 8 units, at 0.819.
# Unlike the fixed 75% above, L0 removed a larger share of the second
# layer than of the first. A second-layer unit has 257 weights to pay for
# and a first-layer unit 65, so training decided where units were worth
# their price. Raise `l0_lambda` for a smaller model, lower it for a more
# accurate one.

# %%
names = ["hidden_1", "hidden_2"]
models = {"baseline": baseline, "activation, shrunk": small, "L0, shrunk": l0_small}
units = {
    label: [layer.units for layer in model.layers if hasattr(layer, "units")][:2]
    for label, model in models.items()
}

figure, (units_axes, cost_axes) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
positions = np.arange(len(names))
width = 0.8 / len(models)
for index, (label, counts) in enumerate(units.items()):
    units_axes.bar(positions + (index - 1) * width, counts, width=width, label=label)
units_axes.set_xticks(positions, names)
units_axes.set_ylabel("units")
units_axes.set_title("units per hidden layer")
units_axes.legend()
cost_axes.bar([row["name"] for row in rows], [row["flops"] for row in rows], color="tab:orange")
cost_axes.set_ylabel("forward FLOPs per example")
cost_axes.set_title("compute per example")
for axes in (units_axes, cost_axes):
    axes.grid(True, axis="y", alpha=0.3)
plot_path = os.path.join(OUT_DIR, "02_neuron_pruning_shrink.png")
figure.savefig(plot_path, dpi=100)
print("saved", plot_path)

# %% [markdown]
# ## Limits
#
# - `shrink` takes a `keras.Sequential` model of Dense and convolution
#   layers, with optional BatchNormalization, activation, dropout, pooling
#   and Flatten layers between them.
# - A convolution with `padding="same"` after a removed filter whose
#   constant output is not zero cannot be folded exactly (the zero padding
#   changes the constant at the borders), and `shrink` raises an error.
