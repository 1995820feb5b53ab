"""File writing that never leaves a half-written file in place of a good one."""

import os
import tempfile


def _default_file_mode():
    # `mkstemp` creates files readable by the owner only; a model or report
    # must get the mode that a plain `open(path, "w")` would give.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    handle, temp_path = tempfile.mkstemp(
        dir=folder, prefix=".tmp-", suffix=os.path.basename(path)
    )
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_path, _default_file_mode())
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
    handle, temp_path = tempfile.mkstemp(
        dir=folder, prefix=".tmp-", suffix=".keras"
    )
    os.close(handle)
    try:
        model.save(temp_path)
        os.chmod(temp_path, _default_file_mode())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def check_writable_folder(path):
    """Check that `path` is, or can be created as, a folder this process can write.

    Args:
        path: The folder path.

    Raises:
        ValueError: If `path` is an existing file, or if neither it nor its
            nearest existing parent folder accepts a new file.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"The output path {path!r} is an existing file, not a folder. "
            "Pass a folder path, which is created if missing."
        )

    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"The output path {path!r} cannot be created because {existing!r} "
            "is a file. Pass a folder path."
        )

    # Write a probe file, because permission bits alone miss read-only
    # mounts, immutable folders and root's bypass of the bits.
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".tmp-probe-")
    except OSError as error:
        raise ValueError(
            f"The output folder {path!r} is not writable ({error.strerror} in "
            f"{existing!r}). Pass a folder you can write to."
        ) from None
    os.close(handle)
    os.remove(probe)
