import errno
import os
import shutil
from collections import namedtuple

import pytest
import torch

from convnext import files
from convnext.errors import UserError
from convnext.files import atomic_write, atomic_write_text, is_temp, remove_stale_temps, temp_path
from convnext.weights import save_weights


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if is_temp(p))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "last.pt", "old")

    def fill_the_disk(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=f"cannot write {target}: the disk holding {tmp_path} is full"):
        atomic_write(target, fill_the_disk)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_a_short_write_without_errno_on_a_full_disk_is_named(tmp_path, monkeypatch):
    # torch.save reports ENOSPC as "RuntimeError: [enforce fail at inline_container.cc...]"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 100, 0))

    def torch_save_on_a_full_disk(tmp):
        tmp.write_bytes(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(UserError, match="is full"):
        atomic_write(tmp_path / "last.pt", torch_save_on_a_full_disk)
    assert leftovers(tmp_path) == []


def test_other_writer_bugs_are_not_disguised(tmp_path):
    def bug(tmp):
        tmp.write_bytes(b"x")
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "a.pt", bug)
    assert leftovers(tmp_path) == []


def test_a_folder_we_may_not_write_in_is_one_line(tmp_path):
    def refused(tmp):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(UserError, match=f"cannot write in {tmp_path}: permission denied"):
        atomic_write(tmp_path / "a.json", refused)

    def read_only(tmp):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))

    with pytest.raises(UserError, match="read-only"):
        atomic_write(tmp_path / "a.json", read_only)


def test_a_folder_as_target_is_refused_before_writing(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="is a folder; name a file"):
        atomic_write_text(tmp_path / "out", "x")
    assert leftovers(tmp_path) == []


def test_files_follow_the_umask_even_when_the_writer_makes_them_private(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_weights({"w": torch.zeros(2)}, tmp_path / "w.safetensors")  # safetensors writes 0600
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_temporary_files_keep_the_suffix_and_stale_ones_are_removed(tmp_path):
    tmp = temp_path(tmp_path / "model.onnx")
    assert tmp.suffix == ".onnx" and tmp.parent == tmp_path and is_temp(tmp)
    tmp.write_bytes(b"left by a kill -9")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert remove_stale_temps(tmp_path) == [tmp]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]
    assert files.write_problem(tmp_path / "x", RuntimeError("other")) is None
