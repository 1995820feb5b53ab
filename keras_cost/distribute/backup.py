"""Fault-tolerant training on several workers with one shared backup."""

import shutil
import tempfile

import keras
import tensorflow as tf

from keras_cost.distribute.environment import is_chief


@keras.saving.register_keras_serializable(package="keras_cost")
class MultiWorkerBackupAndRestore(keras.callbacks.Callback):
    """`keras.callbacks.BackupAndRestore` for several workers sharing a folder.

    Keras 3's `BackupAndRestore` lets every worker write the same files, so
    two workers can overwrite each other's half-written backup, and any
    worker that ends training first deletes the backup the others still use.
    This callback restores every worker from `backup_dir` but lets only the
    chief write and delete it. Each other worker writes its backup into a
    temporary folder that is removed right after, so that all workers run
    the same save code (see `keras_cost.distribute.chief_only_path`).

    After a worker fails, restart all workers with the same `backup_dir` and
    the same `fit` call: each restores the weights, the optimizer state
    (`optimizer.iterations` included) and the epoch of the last backup, and
    `fit` continues from that epoch. `backup_dir` must be reachable from
    every worker, for example on a shared file system.

    Put it first in the callback list, so that callbacks that read the
    optimizer step or the weights in `on_train_begin` see the restored ones.

    With one process it behaves like `keras.callbacks.BackupAndRestore`.

    Args:
        backup_dir: the folder that contains the backup.
        save_freq: `"epoch"` to back up after every epoch, or an integer
            number of batches between backups. Defaults to `"epoch"`.
        double_checkpoint: whether to keep the previous backup too, so that a
            backup corrupted by a crash mid-write falls back to it. Defaults
            to `False`.
        delete_checkpoint: whether the chief deletes `backup_dir` when
            training ends normally. Defaults to `True`.

    Raises:
        ValueError: In the constructor if `backup_dir` is empty,
            `save_freq` is neither `"epoch"` nor a positive integer, or a
            flag is not a bool. In `on_train_begin`, on every worker, if
            the workers restored different optimizer steps, which happens
            when `backup_dir` is not one folder shared by all of them.

    Example:

    >>> import keras, numpy as np, tempfile
    >>> from keras_cost.distribute import MultiWorkerBackupAndRestore
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> backup = MultiWorkerBackupAndRestore(tempfile.mkdtemp())
    >>> history = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2,
    ...                     callbacks=[backup], verbose=0)
    >>> int(model.optimizer.iterations)
    2
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
    ):
        super().__init__()
        if not backup_dir:
            raise ValueError(
                "`backup_dir` is missing: pass the folder for the backup files. "
                f"Received: backup_dir={backup_dir!r}"
            )
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, int)
            or save_freq < 1
        ):
            raise ValueError(
                "`save_freq` must be 'epoch' or a positive integer number of "
                f"batches. Received: save_freq={save_freq!r}"
            )
        for name, flag in (
            ("double_checkpoint", double_checkpoint),
            ("delete_checkpoint", delete_checkpoint),
        ):
            if not isinstance(flag, bool):
                raise ValueError(
                    f"`{name}` must be True or False. Received: {name}={flag!r}"
                )

        self.backup_dir = str(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint

        # Every worker restores through this Keras callback. On the chief it
        # also writes, so Keras's own file handling applies unchanged.
        self._restorer = self._keras_backup(self.backup_dir)
        self._writer = None
        self._temporary_dir = None

    def _keras_backup(self, backup_dir, delete_checkpoint=None):
        if delete_checkpoint is None:
            delete_checkpoint = self.delete_checkpoint
        return keras.callbacks.BackupAndRestore(
            backup_dir,
            save_freq=self.save_freq,
            double_checkpoint=self.double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )

    def set_model(self, model):
        super().set_model(model)
        self._restorer.set_model(model)

    def on_train_begin(self, logs=None):
        self._restorer.on_train_begin(logs)
        self._check_same_step_on_workers()

        if is_chief(self.model.distribute_strategy):
            self._writer = self._restorer
            self._temporary_dir = None
            return
        self._temporary_dir = tempfile.mkdtemp(prefix="keras_cost_backup_")
        self._writer = self._keras_backup(
            self._temporary_dir, delete_checkpoint=True
        )
        self._writer.set_model(self.model)

    def _check_same_step_on_workers(self):
        """Raise unless every worker restored the same optimizer step.

        A worker that cannot read `backup_dir` starts from step 0 while the
        others resume, and training would then hang in a collective or mix
        different models.
        """
        strategy = self.model.distribute_strategy
        step = float(self.model.optimizer.iterations.numpy())
        mean_step = float(self._mean_over_workers(strategy, step))
        step_variance = float(
            self._mean_over_workers(strategy, (step - mean_step) ** 2)
        )
        # Every worker computes the same variance, so all of them raise
        # together instead of one leaving the others blocked in a collective.
        if step_variance > 0.0:
            raise ValueError(
                "The workers restored different training steps from the "
                f"backup (this worker: {int(step)}, mean over all workers: "
                f"{mean_step}). Every worker restores from `backup_dir`, so "
                "it must be one folder that all workers can read, such as a "
                f"shared file system. Received: backup_dir={self.backup_dir!r}"
            )

    @staticmethod
    def _mean_over_workers(strategy, value):
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(value, dtype="float64")
        )
        return strategy.reduce("MEAN", per_replica, axis=None)

    def on_train_batch_end(self, batch, logs=None):
        self._writer.on_train_batch_end(batch, logs)
        self._remove_temporary_backup()

    def on_epoch_end(self, epoch, logs=None):
        self._writer.on_epoch_end(epoch, logs)
        self._remove_temporary_backup()

    def on_train_end(self, logs=None):
        # Only the chief's writer owns `backup_dir`. Another worker's writer
        # deletes its temporary folder.
        self._writer.on_train_end(logs)
        self._remove_temporary_backup()

    def _remove_temporary_backup(self):
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)

    def get_config(self):
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
