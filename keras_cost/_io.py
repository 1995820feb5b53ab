"""File writing that never leaves a half-written file in place of a good one."""

import os
import tempfile


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file in the same folder.

    `os.replace` is atomic on POSIX and Windows when both names are on one
    file system, so a reader sees either the old file or the complete new
    one, even if the process is killed mid-write.

    Args:
        path: Destination file path. Its folder must exist.
        data: The bytes to write.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def atomic_write_text(path, text):
    """Write `text` as UTF-8 to `path` through a temporary file (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_keras(model, path):
    """Save `model` as a `.keras` file at `path` through a temporary file.

    Args:
        model: The Keras model to save.
        path: Destination path ending in `.keras`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    # Keras insists on the `.keras` suffix, so the temporary name keeps it.
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".keras")
    os.close(handle)
    try:
        model.save(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise
