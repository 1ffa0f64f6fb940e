import errno
import os

import pytest

from convnext.engine import checkpoints
from convnext.errors import UserError


def test_a_full_disk_when_the_lock_is_written_is_one_line_and_frees_the_lock(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(UserError, match="the disk holding .* is full"):
        checkpoints.RunLock(tmp_path).acquire()
    monkeypatch.undo()
    lock = checkpoints.RunLock(tmp_path).acquire()  # the failed attempt holds nothing
    assert (tmp_path / checkpoints.LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    from convnext.tasks.classification.config import resolve_config
    from convnext.tasks.classification.train import train

    config = resolve_config("demo", data=str(tmp_path / "nowhere"), output=str(tmp_path / "run"))
    with pytest.raises(UserError):
        train(config)
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, empty or not
    lock = checkpoints.RunLock(tmp_path / "kept").acquire()
    lock.release()
    assert (tmp_path / "kept").is_dir()
