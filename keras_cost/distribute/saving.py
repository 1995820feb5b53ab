"""Save files on the chief only, while every worker runs the same save code."""

import contextlib
import os
import shutil
import tempfile

from keras_cost.distribute.environment import is_chief


@contextlib.contextmanager
def chief_only_path(filepath, strategy=None):
    """Yield the path this worker should write `filepath` to.

    On the chief, that is `filepath`. On any other worker it is a file of
    the same name in a new temporary folder, removed when the `with` block
    ends. Every worker must still run the write: reading a variable that is
    synchronized on read (Keras metric variables are) starts a collective
    that waits for all workers, so a save skipped on one worker can hang the
    others.

    Args:
        filepath: where the chief writes, a path string or `os.PathLike`.
        strategy: the `tf.distribute.Strategy` that decides who the chief is,
            or `None` for the strategy of the current scope. Defaults to
            `None`.

    Yields:
        The path string to write to.

    Example:

    >>> import keras, os, tempfile
    >>> from keras_cost.distribute import chief_only_path
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with chief_only_path(os.path.join(folder, "m.weights.h5")) as path:
    ...         model.save_weights(path)
    ...     os.listdir(folder)  # one process is its own chief
    ['m.weights.h5']
    """
    filepath = os.fspath(filepath)
    if is_chief(strategy):
        yield filepath
        return

    temporary_dir = tempfile.mkdtemp(prefix="keras_cost_worker_")
    try:
        yield os.path.join(temporary_dir, os.path.basename(filepath))
    finally:
        shutil.rmtree(temporary_dir, ignore_errors=True)


def save_model_on_chief(model, filepath, **kwargs):
    """Save `model` with `model.save` so that only the chief's file is kept.

    Call it on every worker at the same point of the program (see
    `chief_only_path` for why). Non-chief workers write to a temporary
    folder that is removed before this function returns.

    Args:
        model: a `keras.Model` built in the strategy's scope.
        filepath: where the chief saves, a path that `model.save` accepts
            (ending in `.keras`, or a folder with `zipped=False`).
        **kwargs: passed on to `model.save`, such as `zipped=False`.

    Returns:
        `True` on the chief, which wrote `filepath`, and `False` elsewhere.

    Raises:
        ValueError: if `model.save` rejects `filepath`, for example a path
            ending in `.keras` with `zipped=False`. Every worker raises the
            same error, because the temporary path keeps the file name.

    Example:

    >>> import keras, os, tempfile
    >>> from keras_cost.distribute import save_model_on_chief
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> save_model_on_chief(model, os.path.join(tempfile.mkdtemp(), "m.keras"))
    True
    """
    strategy = model.distribute_strategy
    with chief_only_path(filepath, strategy) as path:
        model.save(path, **kwargs)
    return is_chief(strategy)
