"""A run folder and what protects it: one run at a time (an OS lock), files written whole or not at all
(``convnext.files.atomic_write``), and a resume that continues the run the folder holds, never another one.

Files of a run folder: ``last.pt`` (everything needed to resume, refreshed every epoch and optionally every
few steps), ``best.pt`` (the state at the best validation top-1), ``best_ema.pt`` (the EMA weights at their
best), ``checkpoint-<epoch>.pt`` (every ``save_every`` epochs), and the lock file ``.lock``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write, remove_stale_temps, write_problem
from ..weights import read_checkpoint_file
from .config import RunConfig, config_changes, task_of_model

LOCK_NAME = ".lock"
# What a resumable checkpoint holds besides the weights; a file without them was not written by a run.
RESUME_KEYS = ("model", "optimizer", "schedule", "scaler", "rng", "epoch", "step_in_epoch", "config", "classes",
               "history", "best", "best_ema", "elapsed")
# The files one run leaves; --restart removes them, so nothing of the previous run passes for the new one.
RUN_FILES = ("last.pt", "best.pt", "best_ema.pt", "metrics.jsonl", "summary.json", "curves.png", "augment.png",
             "config.json")


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` for the life of a run.

    The kernel releases it when the holder exits in any way, ``kill -9`` included, so a lock is never
    stale; the file keeps the holder's process id only to name it to whoever is refused.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.fd: int | None = None
        self.created = False  # whether acquire made the folder (release removes it if nothing was written)

    def acquire(self) -> RunLock:
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileExistsError:  # a file where the run's folder would be
            raise UserError(f"cannot use {self.folder} as the run's folder: a file of that name is in the way; "
                            "give another --output") from None
        except OSError as err:
            raise write_problem(self.path, err) or UserError(f"cannot use {self.folder}: {err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"cannot lock {self.folder}: {err}") from None
            raise UserError(f"{self.folder} is in use by another run (process {holder}); wait for it to end, "
                            "or give this run another --output") from None
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:  # a full disk before the run begins: nothing written yet, one line
            self.release()
            raise write_problem(self.path, err) or UserError(f"cannot use {self.folder}: {err}") from None
        return self

    def release(self) -> None:
        """Drop the lock; a folder this run created and left empty (it failed before writing anything, e.g. on
        a wrong --data) goes too, so a typo leaves no run folder behind."""
        if self.fd is None:
            return
        if self.created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            with contextlib.suppress(OSError):
                self.path.unlink()
                self.folder.rmdir()
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None


def save_state(state: dict, path: Path) -> None:
    """``torch.save`` through the one atomic writer."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_training_state(path: str | os.PathLike) -> dict:
    """The resumable state in ``path``: a checkpoint a run wrote, or one line saying why it is not one."""
    path = Path(path)
    restart = "--restart starts the run over (it replaces the folder's run), a new --output keeps it"
    try:
        state = read_checkpoint_file(path)
    except UserError as err:
        raise UserError(f"{err}; it may be damaged: {restart}") from None
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise UserError(f"{path} is not a checkpoint a training run wrote (no {', '.join(missing[:3])}): "
                        f"nothing to resume; {restart}")
    return state


def check_same_task(state: dict, path: Path, config: RunConfig) -> None:
    """A folder holding another task's run is named as such before anything is fitted to it (its settings
    would otherwise be read as this task's)."""
    model = str(state["config"].get("model", ""))
    theirs, ours = task_of_model(model), task_of_model(config.model)
    if theirs != ours:
        raise UserError(f"{path.parent} holds a {theirs} run ({model}), not a {ours} one: name another --output, "
                        "or --restart to replace it")


def check_resumable(state: dict, path: Path, config: RunConfig, classes: list[str]) -> None:
    """Refuse to resume a run with settings or classes other than those it started with: the result would
    be neither the old run nor a new one, and a changed value could not be applied to the restored state."""
    how = ("rerun with the settings it was started with, or start over: --restart (replaces it) or a new "
           "--output")
    if state["classes"] != classes:
        raise UserError(f"{path} holds a run on other classes ({len(state['classes'])}: "
                        f"{', '.join(map(str, state['classes'][:4]))}, ...) than the data's {len(classes)}; {how}")
    changes = config_changes(state["config"], config)
    if changes:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise UserError(f"{path} holds a run with other settings ({shown}); {how}")


class CheckpointManager:
    """The run folder of the main process: its lock, and every checkpoint file written into it."""

    def __init__(self, folder: Path, *, main: bool = True):
        self.folder, self.main = folder, main
        self.lock = RunLock(folder)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def open(self) -> None:
        """Take the lock (main process only) and clear what killed writers left."""
        if self.main:
            self.lock.acquire()
            remove_stale_temps(self.folder)

    def start_over(self) -> None:
        """Remove the previous run's files (``--restart``), so that none of them passes for the new run's."""
        for name in RUN_FILES:
            (self.folder / name).unlink(missing_ok=True)
        for old in self.folder.glob("checkpoint-*.pt"):
            old.unlink(missing_ok=True)

    def close(self) -> None:
        self.lock.release()

    def resume_state(self) -> dict | None:
        """What ``last.pt`` holds, or None when the folder has no run to resume."""
        return read_training_state(self.last) if self.last.exists() else None

    def where_to_resume(self) -> str:
        """For an error that stops the run: what a rerun will resume from, if anything."""
        if self.last.exists():
            return f"the last good checkpoint ({self.last}) is intact and a rerun resumes from it"
        return f"no checkpoint was written yet, so a rerun starts from the beginning ({self.folder})"

    def save_step(self, state: dict) -> None:
        save_state(state, self.last)

    def save_epoch(self, state: dict, *, improved: bool, ema_record: dict | None, periodic: bool) -> None:
        """``best.pt`` / ``best_ema.pt`` / ``checkpoint-<epoch>.pt`` when they are due, then ``last.pt``: the last
        is the commit point, so when a write fails (a full disk) the rerun redoes the period from the previous
        ``last.pt`` and writes them all, and no summary names a file that was never written."""
        if improved:
            save_state(state, self.folder / "best.pt")
        if ema_record is not None:
            save_state(ema_record, self.folder / "best_ema.pt")
        if periodic:
            save_state(state, self.folder / f"checkpoint-{state['epoch']}.pt")
        save_state(state, self.last)
