import os
import stat

import pytest

from keras_cost._io import atomic_write_bytes
from keras_cost._io import check_writable_folder


def test_atomic_write_uses_umask_mode(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "model.tflite"
        atomic_write_bytes(str(path), b"data")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == b"data"


def test_atomic_write_leaves_no_temp_file(tmp_path):
    atomic_write_bytes(str(tmp_path / "a.bin"), b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(str(path), "not bytes")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_check_folder_rejects_file(tmp_path):
    existing_file = tmp_path / "f"
    existing_file.write_text("")
    with pytest.raises(ValueError, match="is an existing file"):
        check_writable_folder(str(existing_file))


def test_check_folder_rejects_path_under_file(tmp_path):
    existing_file = tmp_path / "f"
    existing_file.write_text("")
    with pytest.raises(ValueError, match="cannot be created"):
        check_writable_folder(str(existing_file / "sub"))


def test_check_folder_accepts_missing_folder(tmp_path):
    check_writable_folder(str(tmp_path / "new" / "deeper"))
    assert not (tmp_path / "new").exists()
