"""Chief-only saving in one process, where the process is the chief."""

import keras
import numpy as np
import pytest

from keras_cost.distribute import chief_only_path
from keras_cost.distribute import save_model_on_chief


def _model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def test_chief_path_unchanged(tmp_path):
    target = tmp_path / "weights.weights.h5"
    with chief_only_path(target) as path:
        assert path == str(target)


def test_save_model_on_chief_writes(tmp_path):
    model = _model()
    target = tmp_path / "model.keras"
    assert save_model_on_chief(model, target)
    loaded = keras.models.load_model(target)
    for weight, expected in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(weight, expected)


def test_save_model_rejected_path(tmp_path):
    with pytest.raises(ValueError, match="should not end in `.keras`"):
        save_model_on_chief(_model(), tmp_path / "model.keras", zipped=False)


def test_save_model_passes_kwargs(tmp_path):
    target = tmp_path / "model_folder"
    save_model_on_chief(_model(), target, zipped=False)
    assert target.is_dir()
