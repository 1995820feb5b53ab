"""Size of the int8 TFLite file over the float TFLite file, by model size.

An int8 file stores 1 byte per weight against 4, but both files also carry a
fixed part: tensor names, shapes, quantization parameters, the operator list
and the signature. One run measures, for three digits CNNs of 13,706 (the
CNN of `qat_overhead.py`), 38,282 (the demo student) and 283,786 (the demo
teacher) parameters:

- the float file, the int8 file of the QAT copy (`quantize_model`, one epoch)
  and the int8 file of post-training quantization of the float model;
- how many bytes of each file are weight buffers and how many are the rest;
- the same for TFMOT's `quantize_model` on a `tf_keras` twin of the
  13,706-parameter CNN, converted with the same converter settings (skipped
  with a message when the `bench` extra is missing).

File sizes do not depend on how long the models train, so each trains for
one epoch.

Usage:
    python benchmarks/int8_file_size.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.keras must be tf_keras (Keras 2) for TFMOT; `import keras` stays Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from qat_overhead import compile_model  # noqa: E402
from qat_overhead import float_model  # noqa: E402
from qat_overhead import tfmot_available  # noqa: E402
from qat_overhead import tfmot_models  # noqa: E402

from keras_cost.datasets import load_digits  # noqa: E402
from keras_cost.demo import build_student  # noqa: E402
from keras_cost.demo import build_teacher  # noqa: E402
from keras_cost.quantization import export_tflite  # noqa: E402
from keras_cost.quantization import quantize_model  # noqa: E402

CALIBRATION_IMAGES = 256


def buffer_bytes(content):
    """Return the bytes of `content` that are constant buffers (the weights)."""
    model = schema.Model.GetRootAs(content, 0)
    return sum(model.Buffers(index).DataLength() for index in range(model.BuffersLength()))


def describe(label, content, float_bytes):
    weights = buffer_bytes(content)
    ratio = len(content) / float_bytes
    print(
        f"| {label} | {len(content):,} | {weights:,} | {len(content) - weights:,} | {ratio:.3f} |"
    )


def tfmot_int8(qat, x_calibration):
    """Convert a TFMOT QAT model with the converter settings of `export_tflite`."""

    def representative_dataset():
        for image in x_calibration:
            yield [image[None].astype("float32")]

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def main():
    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = load_digits()
    calibration = x_train[:CALIBRATION_IMAGES]
    print("| model | file bytes | weight buffer bytes | other bytes | file / float file |")
    print("| --- | --- | --- | --- | --- |")
    for name, build in (
        ("CNN of qat_overhead.py", float_model),
        ("demo student", build_student),
        ("demo teacher", build_teacher),
    ):
        model = compile_model(build())
        model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
        qat = compile_model(quantize_model(model))
        qat.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
        float_file = export_tflite(model)
        label = f"{name} ({model.count_params():,} parameters)"
        describe(f"{label}, float", float_file, len(float_file))
        describe(
            f"{label}, int8 from QAT",
            export_tflite(qat, representative_data=calibration, quantize="int8"),
            len(float_file),
        )
        describe(
            f"{label}, int8 post-training",
            export_tflite(model, representative_data=calibration, quantize="int8"),
            len(float_file),
        )

    if not tfmot_available():
        print("TFMOT or tf_keras is not installed (pip install -e '.[bench]'): its rows are skipped")
        return
    twin, twin_qat = tfmot_models(x_train, y_train)
    converter = tf.lite.TFLiteConverter.from_keras_model(twin)
    twin_float = converter.convert()
    label = f"TFMOT twin of the qat_overhead.py CNN ({twin.count_params():,} parameters)"
    describe(f"{label}, float", twin_float, len(twin_float))
    describe(f"{label}, int8 from QAT", tfmot_int8(twin_qat, calibration), len(twin_float))


if __name__ == "__main__":
    main()
