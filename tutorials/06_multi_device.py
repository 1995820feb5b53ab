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
# # Multi-device training with `tf.distribute`
#
# **What.** `tf.distribute.MirroredStrategy` keeps one copy ("replica") of
# the model on each device of a machine. Every step splits the global batch
# between the replicas, each computes gradients on its share, the gradients
# are summed across replicas, and every replica applies the same update.
#
# **Why.** With N GPUs a step processes N times the examples in about the
# time of one. The result should be the training run you would get on one
# device with the same global batch, only faster. keras-cost's callbacks
# and models are written to keep that promise: pruning masks are the same
# on every replica, and losses are scaled for the number of replicas.
#
# **How.** Create the strategy, then build and compile the model inside
# `strategy.scope()`. `fit` does the rest.
#
# This tutorial has no GPU to work with, so it splits the CPU into two
# logical devices. That shows the mechanics and checks that two replicas
# train the same model as one device, not a speed-up.
#
# Set `KERAS_COST_FAST=1` for a quick run with fewer epochs and
# `KERAS_COST_TUTORIAL_OUT` to choose where the plots go.

# %% [markdown]
# ## Two logical CPU devices
#
# Logical devices must be configured before TensorFlow first uses its
# devices, so this cell comes first. In a notebook, restart the kernel
# before running it again.

# %%
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu,
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)
print("logical devices:", [device.name for device in tf.config.list_logical_devices("CPU")])

# %%
import matplotlib

# A script has no display, so plots are drawn to files only. In Jupyter
# the inline backend stays, so the figures also show in the notebook.
if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

import keras
import numpy as np

from keras_cost.callbacks.cost import CostCallback
from keras_cost.callbacks.prune import PruneCallback
from keras_cost.datasets import load_digits
from keras_cost.pruning import PolynomialDecay
from keras_cost.pruning import sparsity

FAST = os.environ.get("KERAS_COST_FAST") == "1"
EPOCHS = 2 if FAST else 10
GLOBAL_BATCH_SIZE = 64
OUT_DIR = os.environ.get("KERAS_COST_TUTORIAL_OUT") or tempfile.mkdtemp(
    prefix="keras_cost_tutorial_"
)
os.makedirs(OUT_DIR, exist_ok=True)

(x_train, y_train), (x_test, y_test) = load_digits()

# Keep a whole number of global batches: see "Do the two runs agree?" below.
usable = (len(x_train) // GLOBAL_BATCH_SIZE) * GLOBAL_BATCH_SIZE
x_train, y_train = x_train[:usable], y_train[:usable]
steps_per_epoch = usable // GLOBAL_BATCH_SIZE
print(f"training on {usable} images, {steps_per_epoch} steps per epoch")

# %% [markdown]
# ## One training function for both runs
#
# Everything that creates variables (the model, the optimizer, the
# metrics) is created inside `strategy.scope()`. The batch size given to
# `fit` is the **global** batch: each of the 2 replicas computes on 32 of the 64
# examples per step.
#
# `shuffle=False` and a fixed seed make both runs see the same batches in
# the same order from the same initial weights, so their results can be
# compared number by number. The run prunes too: `PruneCallback` computes
# one mask per kernel and every replica uses it.

# %%
def build_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="mlp",
    )


def train(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=EPOCHS * steps_per_epoch // 2)
    cost = CostCallback(batch_size=GLOBAL_BATCH_SIZE)
    history = model.fit(
        x_train,
        y_train,
        batch_size=GLOBAL_BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[PruneCallback(schedule), cost],
    )
    return model, history, cost.summary()


# %% [markdown]
# ## Train on two replicas, then on one device

# %%
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print("replicas in sync:", mirrored.num_replicas_in_sync)
two_replica_model, two_replica_history, two_replica_cost = train(mirrored)

one_device_model, one_device_history, one_device_cost = train(tf.distribute.get_strategy())

for name, model, summary in (
    ("2 replicas", two_replica_model, two_replica_cost),
    ("1 device  ", one_device_model, one_device_cost),
):
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"{name}: {summary['steps']} steps, {summary['examples_per_second']:,.0f} examples/s, "
        f"sparsity {sparsity(model).overall:.3f}, test accuracy {accuracy:.3f}"
    )

# %% [markdown]
# Both runs take the same number of optimizer steps, because a step
# consumes one global batch whatever the number of replicas. Two logical
# devices on the same CPU cores are not faster than one; on real GPUs the
# throughput would grow with the number of devices.
#
# ## Do the two runs agree?
#
# Summing the gradients of two halves of a batch gives the gradient of the
# whole batch, so the weights should agree up to float32 rounding, which
# differs because the sums are taken in another order.

# %%
differences = [
    float(np.max(np.abs(a - b)))
    for a, b in zip(two_replica_model.get_weights(), one_device_model.get_weights())
]
print("largest weight difference per variable:", [f"{d:.1e}" for d in differences])
same_zeros = all(
    np.array_equal(a == 0, b == 0)
    for a, b in zip(two_replica_model.get_weights(), one_device_model.get_weights())
)
print("same pruning pattern in both runs:", same_zeros)

# %% [markdown]
# Expect differences below 1e-6 and the same pruning pattern. A
# difference of the size of the weights themselves would mean that the
# replicas trained different models, for example because a loss was not
# divided by the number of replicas.
#
# That is why the training set was cut to a multiple of the global batch
# size (1,408 of the 1,437 images). With all 1,437, the last batch of each
# epoch contains 29 examples, split 15 and 14 between the replicas. Each
# replica averages the loss over its own examples, so those examples
# weigh 1/30 and 1/28 instead of 1/29. With Keras 3.15 and TensorFlow 2.21
# this made the weights differ by about 5e-4 after two epochs, and that
# was enough to move a few weights across the pruning threshold: the masks
# differed and some weights then differed by their full value. The
# two-replica run is still a valid training run, just not the same one.

# %%
figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
epochs = np.arange(1, EPOCHS + 1)
axes.plot(epochs, one_device_history.history["loss"], marker="o", label="1 device")
axes.plot(
    epochs, two_replica_history.history["loss"], marker="x", linestyle="--", label="2 replicas"
)
axes.set_xlabel("epoch")
axes.set_ylabel("training loss")
axes.set_title("MirroredStrategy matches a single device")
axes.grid(True, alpha=0.3)
axes.legend()
plot_path = os.path.join(OUT_DIR, "06_multi_device.png")
figure.savefig(plot_path, dpi=100)
print("saved", plot_path)

# %% [markdown]
# ## Several machines
#
# Keras 3's `fit` fails under TensorFlow's stock
# `tf.distribute.MultiWorkerMirroredStrategy` ("Attempt to convert a value
# (PerReplica ...)", checked with Keras 3.15 and TensorFlow 2.21).
# `keras_cost.distribute` supplies a strategy that `fit` runs under, and
# helpers for saving and resuming. A worker script looks like this; start
# it once per machine, each with its own `TF_CONFIG`:
#
# ```python
# import keras_cost.distribute as kcd
#
# strategy = kcd.strategy_from_environment()  # reads TF_CONFIG
# with strategy.scope():
#     model = build_model()
#     model.compile(...)
# model.fit(x, y, batch_size=global_batch_size, shuffle=False,
#           callbacks=[kcd.MultiWorkerBackupAndRestore("/shared/backup")])
# kcd.save_model_on_chief(model, "/shared/model.keras")
# ```
#
# Without `TF_CONFIG`, `strategy_from_environment()` returns the default
# single-device strategy, so the same script also runs on one machine.
