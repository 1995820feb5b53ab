"""Cost of quantization-aware training and what int8 export saves.

One run measures, on the digits CNN below:

- training time of `fit` on the QAT copy (`quantize_model`) over `fit` on the
  float model, timed interleaved and repeated after one warm-up epoch each,
  so tracing is not counted;
- the same ratio for TFMOT's `quantize_model` on a `tf_keras` twin of the
  model, timed in the same interleaved loop (skipped with a message when
  `tensorflow-model-optimization` and `tf_keras`, the `bench` extra, are
  missing);
- size of the int8 TFLite file over the float TFLite file;
- LiteRT latency of the int8 file over the float file, one example per call;
- test accuracy of the float model, the QAT model and the int8 file.

Usage:
    python benchmarks/qat_overhead.py [--epochs 3] [--repeats 3] [--copies 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.keras must be tf_keras (Keras 2) for TFMOT; `import keras` stays Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_cost.datasets import load_digits  # noqa: E402
from keras_cost.quantization import TFLiteModel, export_tflite, quantize_model  # noqa: E402

BATCH_SIZE = 32


def float_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def tfmot_models(x, y):
    """Return the float `tf_keras` twin and its TFMOT QAT copy, each after one epoch."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    layers = tf_keras.layers
    model = tf_keras.Sequential(
        [
            layers.Conv2D(16, 3, activation="relu", padding="same", input_shape=(8, 8, 1)),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10),
        ]
    )
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0)
    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    qat.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0)
    return model, qat


def tfmot_available():
    try:
        import tensorflow_model_optimization  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError:
        return False
    return True


def compile_model(model):
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def timed_fit(model, x, y, epochs):
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, verbose=0)
    return time.perf_counter() - start


def latency_per_example(runner, x, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.predict(x, batch_size=1)
        times.append((time.perf_counter() - start) / len(x))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per fit")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    parser.add_argument("--copies", type=int, default=5, help="copies of the 1,437 training images")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits()
    x = np.concatenate([x_train] * args.copies)
    y = np.concatenate([y_train] * args.copies)

    model = compile_model(float_model())
    model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0)
    qat = compile_model(quantize_model(model))
    qat.fit(x, y, epochs=1, batch_size=BATCH_SIZE, verbose=0)

    twins = tfmot_models(x, y) if tfmot_available() else None
    if twins is None:
        print("TFMOT or tf_keras is not installed (pip install -e '.[bench]'): its rows are skipped")

    float_times, qat_times, tfmot_float_times, tfmot_qat_times = [], [], [], []
    for _ in range(args.repeats):
        float_times.append(timed_fit(model, x, y, args.epochs))
        qat_times.append(timed_fit(qat, x, y, args.epochs))
        if twins is not None:
            tfmot_float_times.append(timed_fit(twins[0], x, y, args.epochs))
            tfmot_qat_times.append(timed_fit(twins[1], x, y, args.epochs))

    float_file = export_tflite(model)
    int8_file = export_tflite(qat, representative_data=x_train[:256], quantize="int8")
    float_runner = TFLiteModel(float_file, num_threads=1)
    int8_runner = TFLiteModel(int8_file, num_threads=1)
    float_latency = latency_per_example(float_runner, x_test, args.repeats)
    int8_latency = latency_per_example(int8_runner, x_test, args.repeats)

    float_accuracy = np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test)
    qat_accuracy = np.mean(qat.predict(x_test, verbose=0).argmax(1) == y_test)
    int8_accuracy = np.mean(int8_runner.predict(x_test).argmax(1) == y_test)

    float_time = statistics.median(float_times)
    qat_time = statistics.median(qat_times)
    print(f"parameters                 {model.count_params()}")
    print(f"training examples          {len(x)} x {args.epochs} epochs, batch {BATCH_SIZE}")
    print(f"float fit (median)         {float_time:.2f} s  {[round(t, 2) for t in float_times]}")
    print(f"QAT fit (median)           {qat_time:.2f} s  {[round(t, 2) for t in qat_times]}")
    print(f"QAT / float fit time       {qat_time / float_time:.2f}")
    print(f"same, fastest repeats      {min(qat_times) / min(float_times):.2f}")
    if twins is not None:
        tfmot_float = statistics.median(tfmot_float_times)
        tfmot_qat = statistics.median(tfmot_qat_times)
        print(f"TFMOT float fit (median)   {tfmot_float:.2f} s  {[round(t, 2) for t in tfmot_float_times]}")
        print(f"TFMOT QAT fit (median)     {tfmot_qat:.2f} s  {[round(t, 2) for t in tfmot_qat_times]}")
        print(f"TFMOT QAT / float fit time {tfmot_qat / tfmot_float:.2f}")
        print(f"same, fastest repeats      {min(tfmot_qat_times) / min(tfmot_float_times):.2f}")
    print(f"float TFLite file          {len(float_file)} bytes")
    print(f"int8 TFLite file           {len(int8_file)} bytes")
    print(f"int8 / float file size     {len(int8_file) / len(float_file):.3f}")
    print(f"float latency per example  {float_latency * 1e6:.1f} us")
    print(f"int8 latency per example   {int8_latency * 1e6:.1f} us")
    print(f"int8 / float latency       {int8_latency / float_latency:.2f}")
    accuracies = f"{float_accuracy:.4f} / {qat_accuracy:.4f} / {int8_accuracy:.4f}"
    print(f"test accuracy float / QAT / int8  {accuracies}")


if __name__ == "__main__":
    main()
