"""PruneCallback under MirroredStrategy over two logical CPU devices.

Logical devices must be configured before TensorFlow initializes its
devices, which the test session has already done, so the run happens in a
fresh Python process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

    import keras
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import PolynomialDecay

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ])
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    def train(model):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 16)).astype("float32")
        y = rng.integers(0, 10, size=(256,))
        schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=2)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                  callbacks=[PruneCallback(schedule)])

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
    train(mirrored)
    single = build()
    train(single)

    result = {"replicas": strategy.num_replicas_in_sync, "layers": []}
    for layer, reference in zip(mirrored.layers, single.layers):
        mask = layer.kernel.constraint.mask
        replicas = [
            np.asarray(v) for v in strategy.experimental_local_results(mask.value)
        ]
        kernel = layer.kernel.numpy()
        result["layers"].append({
            "mask_values": sorted(set(np.unique(replicas[0]).tolist())),
            "masks_equal": bool(np.array_equal(replicas[0], replicas[1])),
            "zeros": int((kernel == 0).sum()),
            "size": int(kernel.size),
            "max_diff": float(np.abs(kernel - reference.kernel.numpy()).max()),
            "same_pattern": bool(np.array_equal(
                kernel == 0, reference.kernel.numpy() == 0)),
        })
    print("RESULT", json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def mirrored_result():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(l for l in run.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_mirrored_two_replicas(mirrored_result):
    assert mirrored_result["replicas"] == 2


def test_mirrored_masks_binary(mirrored_result):
    for layer in mirrored_result["layers"]:
        assert layer["mask_values"] == [0.0, 1.0]


def test_mirrored_replicas_agree(mirrored_result):
    for layer in mirrored_result["layers"]:
        assert layer["masks_equal"]


def test_mirrored_target_sparsity(mirrored_result):
    for layer in mirrored_result["layers"]:
        assert layer["zeros"] == round(0.5 * layer["size"])


def test_mirrored_matches_single_device(mirrored_result):
    for layer in mirrored_result["layers"]:
        assert layer["max_diff"] < 1e-4


def test_mirrored_same_zero_pattern(mirrored_result):
    for layer in mirrored_result["layers"]:
        assert layer["same_pattern"]
