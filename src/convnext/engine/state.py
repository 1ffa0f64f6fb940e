"""Everything a run carries from one step to the next, and how it becomes a checkpoint and back.

A checkpoint holds the weights, the EMA, the optimizer, schedule and loss-scaler states, every process's
random number generators and the position inside the epoch, so that a rerun continues with exactly the
numbers an uninterrupted run would have produced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .runtime import Runtime


def host_rng_state() -> dict:
    """Python's and NumPy's global generator states as checkpoint-safe values (Mixup draws from NumPy)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(python=random.getstate(), numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)),
                                                      pos=int(pos), has_gauss=int(has_gauss), gauss=float(gauss)))


def set_host_rng_state(state: dict) -> None:
    numpy = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state(), **host_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    set_host_rng_state(state)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class RunState:
    """The model and its training state, and where the run stands."""

    model: nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps done in the epoch under way
    epoch_loss: float = 0.0  # the epoch's summed loss and images so far (carried over a resume inside an epoch)
    epoch_images: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: dict(top1=-1.0, epoch=None))
    best_ema: dict = field(default_factory=lambda: dict(top1=-1.0, epoch=None))
    elapsed: float = 0.0  # training seconds of earlier sessions of this run
    bad_images: set[int] = field(default_factory=set)

    def checkpoint(self, rt: Runtime, *, config: dict, classes: list[str], elapsed: float) -> dict:
        """The state as a checkpoint. A collective under DDP (every rank's generators are gathered): all
        processes call it."""
        rng = [rng_state(rt.device)]
        if rt.world_size > 1:
            gathered = [None] * rt.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        ema = self.ema
        return dict(model=self.model.state_dict(), model_ema=ema.module.state_dict() if ema else None,
                    ema_n_averaged=ema.n_averaged.clone() if ema else None,
                    optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
                    scaler=self.scaler.state_dict(), rng=rng, epoch=self.epoch, step_in_epoch=self.step,
                    epoch_loss=self.epoch_loss, epoch_images=self.epoch_images, config=config, classes=classes,
                    history=self.history, best=self.best, best_ema=self.best_ema, elapsed=elapsed)

    def restore(self, saved: dict, rt: Runtime) -> None:
        """Continue from ``saved`` (what ``checkpoint`` wrote), this rank's generators included."""
        self.model.load_state_dict(saved["model"])
        if self.ema is not None and saved.get("model_ema") is not None:
            self.ema.module.load_state_dict(saved["model_ema"])
            self.ema.n_averaged.copy_(saved["ema_n_averaged"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"][min(rt.rank, len(saved["rng"]) - 1)], rt.device)
        self.epoch, self.step = saved["epoch"], saved["step_in_epoch"]
        self.epoch_loss, self.epoch_images = saved["epoch_loss"], saved["epoch_images"]
        self.history, self.best, self.best_ema = saved["history"], saved["best"], saved["best_ema"]
        self.elapsed = saved["elapsed"]
        for row in self.history:
            self.bad_images.update(row.get("bad_images", []))

    def finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
