"""Small models and data shared by the quantization tests."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest


@keras.saving.register_keras_serializable(package="keras_cost_tests")
class FixedMask(keras.constraints.Constraint):
    """Multiply a kernel by a fixed 0/1 mask, as a pruned layer's constraint does."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, "float32")

    def __call__(self, w):
        return w * self.mask

    def get_config(self):
        return {"mask": self.mask.tolist()}


def small_cnn():
    """Conv2D(relu), MaxPooling2D, Conv2D(relu), Flatten, Dense(10) on 8x8x1 digits."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


def compile_classifier(model):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def load_in_fresh_process(path, inputs_path, outputs_path):
    """Load a .keras file in a new interpreter with `import keras_cost` and predict."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        import keras
        import keras_cost
        model = keras.models.load_model({str(path)!r})
        x = np.load({str(inputs_path)!r})
        np.save({str(outputs_path)!r}, model.predict(x, verbose=0))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return np.load(outputs_path)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def fixed_mask():
    return FixedMask


@pytest.fixture
def cnn():
    return small_cnn


@pytest.fixture
def classifier():
    return compile_classifier


@pytest.fixture
def fresh_load():
    return load_in_fresh_process
