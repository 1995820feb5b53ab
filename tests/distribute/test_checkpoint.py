"""`MultiWorkerModelCheckpoint` in one process, where the process is the chief.

The two-worker run is in `test_multi_worker.py`.
"""

import keras
import numpy as np
import pytest

from keras_cost.distribute import MultiWorkerModelCheckpoint


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _fit(model, callback, epochs=2):
    x = np.arange(16, dtype="float32").reshape(8, 2) / 16.0
    y = x.sum(axis=1, keepdims=True)
    return model.fit(
        x,
        y,
        batch_size=4,
        epochs=epochs,
        validation_data=(x, y),
        verbose=0,
        callbacks=[callback],
    )


def test_checkpoint_config_round_trip(tmp_path):
    checkpoint = MultiWorkerModelCheckpoint(
        str(tmp_path / "best.weights.h5"),
        monitor="loss",
        verbose=1,
        save_best_only=True,
        save_weights_only=True,
        mode="min",
        save_freq=2,
        initial_value_threshold=0.5,
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(checkpoint)
    )
    assert restored.get_config() == checkpoint.get_config()


def test_checkpoint_config_values(tmp_path):
    config = MultiWorkerModelCheckpoint(
        str(tmp_path / "m.keras"), monitor="loss", mode="min"
    ).get_config()
    assert config == {
        "filepath": str(tmp_path / "m.keras"),
        "monitor": "loss",
        "verbose": 0,
        "save_best_only": False,
        "save_weights_only": False,
        "mode": "min",
        "save_freq": "epoch",
        "initial_value_threshold": None,
    }


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("m.keras", {"mode": "lowest"}, "mode='lowest'"),
        ("m.txt", {}, "filepath=.*m.txt"),
        ("m.keras", {"save_weights_only": True}, "must end in `.weights.h5`"),
        ("m.keras", {"save_freq": "batch"}, "save_freq"),
    ],
)
def test_checkpoint_bad_arguments(tmp_path, name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiWorkerModelCheckpoint(str(tmp_path / name), **kwargs)


def test_checkpoint_saves_each_epoch(tmp_path):
    _fit(_model(), MultiWorkerModelCheckpoint(str(tmp_path / "e{epoch}.keras")))
    saved = sorted(path.name for path in tmp_path.iterdir())
    assert saved == ["e1.keras", "e2.keras"]


def test_checkpoint_best_only(tmp_path):
    model = _model()
    target = tmp_path / "best.keras"
    checkpoint = MultiWorkerModelCheckpoint(
        str(target), monitor="val_loss", save_best_only=True
    )
    history = _fit(model, checkpoint, epochs=3)

    losses = history.history["val_loss"]
    assert target.exists()
    # The SGD run improves every epoch, so the last epoch is the best.
    assert losses[-1] == min(losses)
    loaded = keras.models.load_model(target)
    for weight, expected in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(weight, expected)
