"""Training-time overhead of pruning: keras-cost on Keras 3 against TFMOT on tf_keras.

One run times, interleaved and repeated, four `fit` calls on the same CNN and
data: plain Keras 3, Keras 3 with `PruneCallback`, plain `tf_keras`, and
`tf_keras` with TFMOT `prune_low_magnitude`. Each framework's overhead is its
pruned time over its own plain time, so the two ratios compare the pruning
machinery rather than the two Keras versions.

Usage:
    python benchmarks/prune_overhead.py [--epochs 3] [--repeats 3] [--frequency 1]

The TFMOT part needs `pip install tensorflow-model-optimization==0.8.1
tf-keras` (the `bench` extra); without it only the Keras 3 part runs.
"""

import argparse
import os
import statistics
import sys
import time

# tf.keras must be tf_keras (Keras 2) for TFMOT; `import keras` stays Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_cost.callbacks.prune import PruneCallback  # noqa: E402
from keras_cost.datasets import load_digits  # noqa: E402
from keras_cost.pruning import PolynomialDecay  # noqa: E402
from keras_cost.pruning import sparsity  # noqa: E402

BATCH_SIZE = 32
FINAL_SPARSITY = 0.8


def load_data(copies):
    """Return the digits training images repeated `copies` times."""
    (x_train, y_train), _ = load_digits()
    return np.concatenate([x_train] * copies), np.concatenate([y_train] * copies)


def keras3_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def time_keras3(x, y, epochs, prune_steps, frequency):
    keras.utils.set_random_seed(0)
    model = keras3_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = []
    if prune_steps:
        schedule = PolynomialDecay(
            0.0, FINAL_SPARSITY, begin_step=0, end_step=prune_steps, frequency=frequency
        )
        callbacks.append(PruneCallback(schedule))
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, sparsity(model).overall


def time_tfmot(x, y, epochs, prune_steps, frequency):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf.random.set_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Conv2D(16, 3, activation="relu", input_shape=(8, 8, 1)),
            tf_keras.layers.MaxPooling2D(),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(10),
        ]
    )
    callbacks = []
    if prune_steps:
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            0.0, FINAL_SPARSITY, begin_step=0, end_step=prune_steps, frequency=frequency
        )
        model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    kernels = [w.numpy() for w in model.weights if w.name.endswith("kernel:0")]
    zeros = sum(int((k == 0).sum()) for k in kernels)
    return seconds, zeros / sum(k.size for k in kernels)


def tfmot_available():
    try:
        import tensorflow_model_optimization  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per variant")
    parser.add_argument("--copies", type=int, default=5, help="copies of the 1,437 digits images")
    parser.add_argument("--frequency", type=int, default=1, help="steps between mask updates")
    args = parser.parse_args(argv)

    x, y = load_data(args.copies)
    steps = args.epochs * int(np.ceil(len(x) / BATCH_SIZE))
    # Prune over the first two thirds of training and fine-tune in the rest.
    prune_steps = (2 * steps) // 3
    variants = {
        "keras3_plain": lambda: time_keras3(x, y, args.epochs, 0, args.frequency),
        "keras3_prune": lambda: time_keras3(x, y, args.epochs, prune_steps, args.frequency),
    }
    if tfmot_available():
        variants["tf_keras_plain"] = lambda: time_tfmot(x, y, args.epochs, 0, args.frequency)
        variants["tfmot_prune"] = lambda: time_tfmot(x, y, args.epochs, prune_steps, args.frequency)
    else:
        print("TFMOT or tf_keras not installed: timing the Keras 3 part only.")

    # One untimed fit per variant warms up TensorFlow and the data pipeline.
    for run in variants.values():
        run()
    times = {name: [] for name in variants}
    final_sparsity = {}
    for _ in range(args.repeats):
        for name, run in variants.items():
            seconds, value = run()
            times[name].append(seconds)
            final_sparsity[name] = value

    print(
        f"{len(x)} images, batch {BATCH_SIZE}, {args.epochs} epochs ({steps} steps), "
        f"pruning to {FINAL_SPARSITY} over {prune_steps} steps every {args.frequency} "
        f"step(s), median of {args.repeats} fits, {os.cpu_count()} CPUs"
    )
    for name, values in times.items():
        print(
            f"{name:15s} median {statistics.median(values):7.2f} s  "
            f"(min {min(values):.2f}, max {max(values):.2f})  "
            f"sparsity {final_sparsity[name]:.3f}"
        )
    ratio = statistics.median(times["keras3_prune"]) / statistics.median(times["keras3_plain"])
    print(f"keras-cost PruneCallback / Keras 3 fit: {ratio:.2f}")
    if "tfmot_prune" in times:
        ratio = statistics.median(times["tfmot_prune"]) / statistics.median(times["tf_keras_plain"])
        print(f"TFMOT prune_low_magnitude / tf_keras fit: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
