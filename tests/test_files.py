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


def test_a_rerun_removes_what_a_killed_writer_of_the_same_file_left(tmp_path, dead_pid):
    target = tmp_path / "model.pt2"
    dead_file, dead_folder = temp_path(target, dead_pid), temp_path(tmp_path / "m.ir", dead_pid)
    live = temp_path(target, os.getppid())  # another writer, still running: left alone
    other = temp_path(tmp_path / "other.pt2", dead_pid)  # another file's temp: not this writer's business
    for path in (dead_file, live, other):
        path.write_bytes(b"partial")
    dead_folder.mkdir()
    (dead_folder / "model.bin").write_bytes(b"13 MB once")
    atomic_write_text(target, "new")
    files.remove_dead_temps(tmp_path / "m.ir")
    assert not dead_file.exists() and not dead_folder.exists()
    assert live.exists() and other.exists() and target.read_text() == "new"


def test_a_long_legal_name_gets_a_legal_temporary_name(tmp_path):
    target = tmp_path / ("é" * 60 + "x" * 120 + ".safetensors")  # 252 bytes: legal, its plain temp name is not
    tmp = temp_path(target)
    assert len(tmp.name.encode()) <= 255 and tmp.suffix == ".safetensors" and is_temp(tmp)
    assert tmp != temp_path(target.with_name("y" + target.name[1:]))  # the hash keeps names apart
    atomic_write_text(target, "ok")
    assert target.read_text() == "ok" and leftovers(tmp_path) == []


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path):
    target = tmp_path / ("x" * 300 + ".png")
    with pytest.raises(UserError, match=r"the name is too long for the file system \(304 bytes; most allow 255\)"):
        atomic_write_text(target, "never")


def test_two_inputs_writing_one_output_are_refused_before_work(tmp_path):
    from convnext.files import check_distinct_outputs

    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "y.png", tmp_path / "b" / "x.jpg"]
    with pytest.raises(UserError, match=r"a/x.png and .*b/x.jpg would both be written as x_overlay.png"):
        check_distinct_outputs(inputs, lambda path: f"{path.stem}_overlay.png")
    check_distinct_outputs(inputs[:2], lambda path: f"{path.stem}_overlay.png")
    check_distinct_outputs([inputs[0], inputs[0]], lambda path: path.name)  # the same file twice: one output
