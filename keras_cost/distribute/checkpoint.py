"""`ModelCheckpoint` for several workers: only the chief's files are kept."""

import os
import shutil
import tempfile

import keras

from keras_cost.distribute.environment import is_chief

_MODES = ("auto", "min", "max")


@keras.saving.register_keras_serializable(package="keras_cost")
class MultiWorkerModelCheckpoint(keras.callbacks.Callback):
    """`keras.callbacks.ModelCheckpoint` that keeps only the chief's files.

    With Keras's `ModelCheckpoint`, every worker writes the same files, so
    they overwrite each other's half-written checkpoints. Here every worker
    runs an ordinary `keras.callbacks.ModelCheckpoint` with the same
    arguments. The chief's checkpoint writes to `filepath`. Each other
    worker's checkpoint writes to a temporary folder that is removed right
    after every save, because all workers must run the save (see
    `keras_cost.distribute.chief_only_path`). With `save_best_only=True`
    all workers make the same choice, because the logged metrics are
    global.

    With one process it behaves like `keras.callbacks.ModelCheckpoint`.

    Args:
        filepath: where the chief saves: a path ending in `.keras`, or in
            `.weights.h5` with `save_weights_only=True`. It may contain
            `{epoch}`, `{batch}` and log names as format fields, as in
            Keras.
        monitor: the log name that `save_best_only` compares. Defaults to
            `"val_loss"`.
        verbose: `0` silent, `1` prints a line per save. Defaults to `0`.
        save_best_only: whether to save only when `monitor` improves.
            Defaults to `False`.
        save_weights_only: whether to save the weights only. Defaults to
            `False`.
        mode: `"auto"`, `"min"` or `"max"`, how `monitor` improves.
            Defaults to `"auto"`.
        save_freq: `"epoch"`, or an integer number of batches between saves.
            Defaults to `"epoch"`.
        initial_value_threshold: the `monitor` value that the first save
            must beat when `save_best_only=True`, or `None`. Defaults to
            `None`.

    Raises:
        ValueError: if `mode` is not one of "auto", "min" and "max", or if
            `keras.callbacks.ModelCheckpoint` rejects an argument (a
            `filepath` with the wrong extension, an invalid `save_freq`).

    Example:

    >>> import keras, numpy as np, os, tempfile
    >>> from keras_cost.distribute import MultiWorkerModelCheckpoint
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> folder = tempfile.mkdtemp()
    >>> checkpoint = MultiWorkerModelCheckpoint(
    ...     os.path.join(folder, "epoch_{epoch}.keras"))
    >>> history = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2,
    ...                     callbacks=[checkpoint], verbose=0)
    >>> sorted(os.listdir(folder))
    ['epoch_1.keras', 'epoch_2.keras']
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
    ):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(
                f"`mode` must be one of {_MODES}. Received: mode={mode!r}"
            )

        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.save_freq = save_freq
        self.initial_value_threshold = initial_value_threshold

        # Built now so that Keras checks the arguments before training. On
        # the chief it is the checkpoint that runs.
        self._chief_checkpoint = self._keras_checkpoint(self.filepath)
        self._checkpoint = None
        self._temporary_dir = None

    def _keras_checkpoint(self, filepath):
        return keras.callbacks.ModelCheckpoint(
            filepath,
            monitor=self.monitor,
            verbose=self.verbose,
            save_best_only=self.save_best_only,
            save_weights_only=self.save_weights_only,
            mode=self.mode,
            save_freq=self.save_freq,
            initial_value_threshold=self.initial_value_threshold,
        )

    def on_train_begin(self, logs=None):
        if is_chief(self.model.distribute_strategy):
            self._checkpoint = self._chief_checkpoint
            self._temporary_dir = None
        else:
            self._temporary_dir = tempfile.mkdtemp(prefix="keras_cost_checkpoint_")
            self._checkpoint = self._keras_checkpoint(
                os.path.join(self._temporary_dir, os.path.basename(self.filepath))
            )
        self._checkpoint.set_model(self.model)
        self._checkpoint.set_params(self.params)
        self._checkpoint.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._checkpoint.on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._checkpoint.on_train_batch_end(batch, logs)
        self._remove_temporary_files()

    def on_epoch_end(self, epoch, logs=None):
        self._checkpoint.on_epoch_end(epoch, logs)
        self._remove_temporary_files()

    def on_train_end(self, logs=None):
        self._checkpoint.on_train_end(logs)
        self._remove_temporary_files()

    def _remove_temporary_files(self):
        # `ModelCheckpoint` creates the folder again before its next save.
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)

    def get_config(self):
        return {
            "filepath": self.filepath,
            "monitor": self.monitor,
            "verbose": self.verbose,
            "save_best_only": self.save_best_only,
            "save_weights_only": self.save_weights_only,
            "mode": self.mode,
            "save_freq": self.save_freq,
            "initial_value_threshold": self.initial_value_threshold,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
