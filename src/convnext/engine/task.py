"""What a task gives the engine (`convnext.engine.fit`): its model, its data and schedule, one step's losses,
its validation and its key metric. Everything else (the loop, accumulation, mixed precision, clipping, EMA,
the divergence check, DDP, checkpoints, exact resume, the run lock, logs, curves) is the engine's, once.

`Task` is the contract, written as a base class whose defaults fit most tasks; a task overrides what its
training differs in. Classification, segmentation and detection (``convnext.tasks``) are the three today.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.images import EpochSampler
from .config import RunConfig
from .runtime import Runtime

Say = Callable[[str], None]


@dataclass
class Schedule:
    """How a run is cut: ``periods`` epochs (or intervals of iterations), each of ``steps(period)`` optimizer
    steps, closed by validation and a checkpoint."""

    periods: int
    steps_per_period: int
    total_steps: int
    unit: str = "epoch"  # "epoch", or "iteration" for runs counted in iterations (validated every interval)

    def steps(self, period: int) -> int:
        """Optimizer steps in ``period``; the last interval of an iteration-counted run may be short."""
        return min(self.steps_per_period, self.total_steps - period * self.steps_per_period)

    def position(self, period: int, step: int) -> str:
        """Where a run stands, in the words its log uses."""
        if self.unit == "iteration":
            return f"iteration {period * self.steps_per_period + step}"
        return f"epoch {period + 1}, step {step}"

    def length(self) -> str:
        return f"{self.total_steps}-iteration" if self.unit == "iteration" else f"{self.periods}-epoch"


@dataclass
class StepOutput:
    """One micro-batch's losses (``"loss"`` is optimised; other entries are logged per image), its image
    count, and the indices of training samples it had to replace because they could not be read."""

    losses: dict[str, torch.Tensor]
    images: int
    bad: list[int] = field(default_factory=list)


class Task:
    """One kind of training. ``prepare`` runs first (data, fitting the recipe, the schedule); the engine then
    builds the model, restores or starts the run, and calls ``batches``/``step`` for every optimizer step and
    ``validate`` after every period."""

    config: RunConfig
    best_key: str = "top1"  # the key metric, as a run's best is stored: best[best_key]
    metric: str = "val_top1"  # its column in a period's row (metrics.jsonl)
    find_unused_parameters: bool = False  # DDP: parts of the model may get no gradient in a step
    classes: list[str]
    sampler: EpochSampler  # the default `batches` reads these two
    loader: DataLoader

    def prepare(self, rt: Runtime, say: Say) -> Schedule:
        """Open the data, fit the recipe to the run, say what the run will do; returns the schedule."""
        raise NotImplementedError

    def build_model(self, rt: Runtime, fresh: bool, say: Say) -> nn.Module:
        """The model on ``rt.device``; a ``fresh`` run (nothing to resume) starts from the initial weights the
        config names (fine-tuning, a pre-trained backbone)."""
        raise NotImplementedError

    def optimizer_options(self) -> dict:
        """Options of `convnext.engine.optim.build_optimizer` besides the settings every run has (e.g. the
        layer-decay depth ``num_layers``)."""
        return {}

    def peak_lr(self) -> float:
        return self.config.lr

    def lr_factor(self, step: int) -> float:
        """The lr at optimizer step ``step`` as a multiple of ``peak_lr``."""
        raise NotImplementedError

    def batches(self, period: int, start: int, rt: Runtime) -> Iterator:
        """The training batches of ``period`` from its ``start``-th sample on (a resumed run continues with
        the very samples an uninterrupted one would have seen). By default epoch ``period`` of ``self.loader``,
        whose ``self.sampler`` is an `EpochSampler`."""
        self.sampler.set_epoch(period, start=start)
        return iter(self.loader)

    def step(self, net: nn.Module, batch, device: torch.device) -> StepOutput:
        """Forward one micro-batch (moved to ``device``, under the engine's autocast) and return its losses."""
        raise NotImplementedError

    def validate(self, model: nn.Module, rt: Runtime) -> dict:
        """The validation columns of a period's row ({} without a validation set)."""
        return {}

    def best_record(self, row: dict) -> dict:
        """What the run keeps of its best period."""
        return {self.best_key: row[self.metric], "epoch": row["epoch"]}

    def row_text(self, row: dict) -> str:
        """A period's validation results for the log line."""
        return ""

    def describe(self, index: int) -> str:
        """A training sample, for the list of those skipped."""
        return f"sample {index}"

    def train_samples(self) -> int:
        """How many training samples the data has (0: not known), against which unusable ones are counted.
        By default the size of ``self.loader``'s dataset."""
        loader = getattr(self, "loader", None)
        return len(loader.dataset) if loader is not None else 0

    def summary(self, state) -> dict:
        """The task's entries of summary.json."""
        return {}

    def final_line(self, summary: dict, folder: Path) -> str | None:
        """What the run says when it ends."""
        return None

    def checkpoint_extras(self) -> dict:
        """Entries a checkpoint needs besides the run state to be used on its own (e.g. category ids)."""
        return {}

    def plot_curves(self, history: list[dict], path: Path) -> None:
        from ..plots import plot_curves

        plot_curves(history, path, num_classes=len(getattr(self, "classes", ())) or None)

    def start(self, folder: Path, main: bool) -> None:
        """Called once the run's state is ready, before the first step (e.g. to draw a sample figure)."""
