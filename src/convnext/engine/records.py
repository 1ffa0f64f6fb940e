"""What a run leaves to read, written by the main process: ``config.json``, ``metrics.jsonl`` (one row per
epoch), ``summary.json``, ``curves.png`` and, on request, TensorBoard scalars. Every file goes through the one
atomic writer, so a reader never sees half a file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_text

PRIVATE_KEYS = ("bad_images",)  # kept in checkpoints for the count of skipped images, not in metrics.jsonl


class RunLog:
    """The run's files for people and tools; on processes other than the main one every call does nothing."""

    def __init__(self, folder: Path, *, main: bool, tensorboard: bool):
        self.folder, self.main = folder, main
        self.writer = None
        if tensorboard and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(folder / "tensorboard"))

    def config(self, values: dict) -> None:
        if self.main:
            atomic_write_text(self.folder / "config.json", json.dumps(values, indent=2) + "\n")

    def epoch(self, history: list[dict]) -> None:
        """Rewrite ``metrics.jsonl`` with every epoch so far, and send the last one to TensorBoard."""
        if not self.main:
            return
        rows = [{k: v for k, v in row.items() if k not in PRIVATE_KEYS} for row in history]
        atomic_write_text(self.folder / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        if self.writer is not None:
            for key, value in rows[-1].items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, rows[-1]["epoch"])
            self.writer.flush()

    def finish(self, summary: dict, history: list[dict], plot: Callable[[list[dict], Path], None]) -> None:
        """``summary.json``, and ``curves.png`` drawn by the task's ``plot``."""
        if not self.main:
            return
        atomic_write_text(self.folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        if history:
            plot(history, self.folder / "curves.png")  # written atomically by the plot itself

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
