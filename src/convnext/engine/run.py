"""The frame every training task runs in: this process's runtime and its locked run folder."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .checkpoints import CheckpointManager
from .runtime import Runtime, setup_runtime
from .state import RunState


def _lock(folder: CheckpointManager, rt: Runtime) -> None:
    """Lock the run folder on the main process; every process stops when it cannot."""
    problem = None
    try:
        folder.open()
    except UserError as err:
        problem = err
    if not rt.all_agree(problem is None):
        raise problem or UserError(f"the main process could not lock {folder.folder}")


@contextlib.contextmanager
def open_run(output: str | os.PathLike, device: str = "auto") -> Iterator[tuple[Runtime, CheckpointManager]]:
    """The runtime (device, rank, process group) and the run folder, locked for this run alone; both are
    released when the run ends, however it ends."""
    rt = setup_runtime(device)
    folder = CheckpointManager(Path(output), main=rt.main)
    try:
        _lock(folder, rt)
        yield rt, folder
    finally:
        folder.close()
        rt.close()


def seed_process(seed: int, rank: int) -> None:
    """Seed torch, Python and NumPy for this process: ranks differ, reruns repeat."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


def restore_or_start_over(state: RunState, saved: dict | None, folder: CheckpointManager, rt: Runtime, *,
                          resume: bool) -> bool:
    """Load ``saved`` into ``state`` (True), or, for a run told not to resume, clear the folder's old run."""
    if saved is not None:
        state.restore(saved, rt)
        return True
    if not resume and rt.main:
        folder.start_over()
    return False
