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
