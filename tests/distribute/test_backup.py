"""`MultiWorkerBackupAndRestore` in one process, where the process is the chief.

The two-worker crash and resume is in `test_multi_worker.py`.
"""

import json

import keras
import numpy as np
import pytest

from keras_cost.distribute import MultiWorkerBackupAndRestore


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _data():
    x = np.arange(16, dtype="float32").reshape(8, 2) / 16.0
    return x, x.sum(axis=1, keepdims=True)


class _StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_config_round_trip(tmp_path):
    backup = MultiWorkerBackupAndRestore(
        str(tmp_path), save_freq=3, double_checkpoint=True, delete_checkpoint=False
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(backup)
    )
    assert restored.get_config() == backup.get_config()


def test_backup_config_values(tmp_path):
    config = MultiWorkerBackupAndRestore(
        str(tmp_path), save_freq=3, double_checkpoint=True, delete_checkpoint=False
    ).get_config()
    assert config == {
        "backup_dir": str(tmp_path),
        "save_freq": 3,
        "double_checkpoint": True,
        "delete_checkpoint": False,
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backup_dir": ""}, "backup_dir=''"),
        ({"save_freq": 0}, "save_freq=0"),
        ({"save_freq": "batch"}, "save_freq='batch'"),
        ({"save_freq": True}, "save_freq=True"),
        ({"double_checkpoint": 1}, "double_checkpoint=1"),
        ({"delete_checkpoint": "yes"}, "delete_checkpoint='yes'"),
    ],
)
def test_backup_bad_arguments(tmp_path, kwargs, message):
    kwargs = {"backup_dir": str(tmp_path), **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiWorkerBackupAndRestore(**kwargs)


def test_backup_resumes_step(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = _data()
    model = _model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            y,
            batch_size=4,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[MultiWorkerBackupAndRestore(backup_dir), _StopAfterEpoch(2)],
        )
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2

    resumed = _model()
    history = resumed.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[MultiWorkerBackupAndRestore(backup_dir)],
    )
    assert history.epoch == [2]
    assert int(resumed.optimizer.iterations) == 6


def test_backup_deleted_at_end(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = _data()
    _model().fit(
        x, y, epochs=1, verbose=0, callbacks=[MultiWorkerBackupAndRestore(backup_dir)]
    )
    assert not backup_dir.exists()


def test_backup_kept_when_asked(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = _data()
    backup = MultiWorkerBackupAndRestore(backup_dir, delete_checkpoint=False)
    _model().fit(x, y, epochs=1, verbose=0, callbacks=[backup])
    assert (backup_dir / "latest.weights.h5").exists()


def test_backup_batch_frequency(tmp_path):
    backup_dir = tmp_path / "backup"
    x, y = _data()
    backup = MultiWorkerBackupAndRestore(backup_dir, save_freq=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        _model().fit(
            x,
            y,
            batch_size=4,
            epochs=2,
            verbose=0,
            callbacks=[backup, _StopAfterEpoch(1)],
        )
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    # The last backup was taken after batch 1 (the second) of epoch 0.
    assert metadata == {"epoch": 0, "batch": 1}
