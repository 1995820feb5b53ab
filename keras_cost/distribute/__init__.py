"""Train Keras 3 models with `model.fit` on several workers.

Keras 3 `model.fit` fails under TensorFlow's
`tf.distribute.MultiWorkerMirroredStrategy`. This package supplies what a
multi-worker script needs:

- `strategy_from_environment()`: the strategy described by `TF_CONFIG`
  (a `MultiWorkerMirroredStrategy` that `fit` runs under), or the default
  strategy when `TF_CONFIG` is unset.
- `is_chief()`: whether this worker's files are the ones to keep.
- `save_model_on_chief(model, path)` and `chief_only_path(path)`: every
  worker runs the save, and only the chief's file is kept.
- `MultiWorkerBackupAndRestore(backup_dir)`: resume after a worker fails,
  from one backup that only the chief writes.
- `MultiWorkerModelCheckpoint(filepath)`: `ModelCheckpoint` whose files only
  the chief keeps.

A worker script::

    strategy = keras_cost.distribute.strategy_from_environment()
    with strategy.scope():
        model = build_model()
        model.compile(...)
    model.fit(x, y, batch_size=global_batch_size, shuffle=False,
              callbacks=[MultiWorkerBackupAndRestore("/shared/backup"),
                         MultiWorkerModelCheckpoint("/shared/ckpt_{epoch}.keras")])
    keras_cost.distribute.save_model_on_chief(model, "/shared/model.keras")

Start the same script once per worker, each with its own `TF_CONFIG` task.

Note: checked on CPU workers with TensorFlow 2.21 and Keras 3.15.1. No TPU
was available, so `TPUStrategy` is not covered.
"""

from keras_cost.distribute.backup import MultiWorkerBackupAndRestore
from keras_cost.distribute.checkpoint import MultiWorkerModelCheckpoint
from keras_cost.distribute.environment import is_chief
from keras_cost.distribute.environment import read_tf_config
from keras_cost.distribute.environment import strategy_from_environment
from keras_cost.distribute.saving import chief_only_path
from keras_cost.distribute.saving import save_model_on_chief
from keras_cost.distribute.strategy import MultiWorkerMirroredStrategy

__all__ = [
    "MultiWorkerBackupAndRestore",
    "MultiWorkerMirroredStrategy",
    "MultiWorkerModelCheckpoint",
    "chief_only_path",
    "is_chief",
    "read_tf_config",
    "save_model_on_chief",
    "strategy_from_environment",
]
