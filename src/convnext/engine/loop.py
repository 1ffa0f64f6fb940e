"""One epoch of training: forward, loss, backward with gradient accumulation, clipping, the optimizer and
schedule steps, the EMA update, and the checkpoints due inside the epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from .runtime import Runtime
from .state import RunState


@dataclass
class Trainer:
    """The fixed parts of a training step."""

    net: nn.Module  # the model, DDP-wrapped under torchrun
    forward: Callable  # ``net``, compiled with ``compile``
    mix: Callable  # Mixup/CutMix and label smoothing: (images, labels) -> (images, soft targets)
    rt: Runtime
    steps_per_epoch: int
    accum_steps: int
    clip_grad: float | None
    amp_dtype: torch.dtype | None
    channels_last: bool
    save_every_steps: int
    diverged: Callable[[str, int, int | None], UserError]  # (what, epoch, step) -> the error that stops the run
    loss: Callable | None = None  # (outputs, targets) -> loss; None: cross-entropy on soft or hard targets


def _micro_step(trainer: Trainer, state: RunState, batch, sync: bool, epoch: int, step: int
                ) -> tuple[torch.Tensor, int]:
    """Forward and backward of one micro-batch; returns its loss and size."""
    rt = trainer.rt
    images, labels, bad = batch
    state.bad_images.update(int(i) for i in bad[bad >= 0])
    images = images.to(rt.device, non_blocking=True)
    labels = labels.to(rt.device, non_blocking=True)
    x, targets = trainer.mix(images, labels)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with nullcontext() if sync else trainer.net.no_sync():
        with torch.autocast(rt.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            logits = trainer.forward(x)
        loss = trainer.loss(logits, targets) if trainer.loss else F.cross_entropy(logits.float(), targets)
        finite = torch.isfinite(loss.detach()).float()
        if rt.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            raise trainer.diverged(f"the loss became {loss.item()}", epoch, step)
        state.scaler.scale(loss / trainer.accum_steps).backward()
    return loss.detach(), len(images)


def _optimizer_step(trainer: Trainer, state: RunState) -> None:
    if trainer.clip_grad:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), float(trainer.clip_grad))
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.schedule.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)


def train_one_epoch(trainer: Trainer, state: RunState, batches, *, desc: str, interactive: bool,
                    save_step: Callable[[], None]) -> float:
    """Train from ``state.step`` to the end of epoch ``state.epoch``; returns the seconds it took.

    ``state.epoch_loss`` / ``state.epoch_images`` sum the epoch's loss and images (on this rank), and
    ``save_step`` is called every ``save_every_steps`` steps, except at the epoch's end (the epoch's own
    checkpoint follows)."""
    rt, epoch = trainer.rt, state.epoch
    bar = tqdm(total=trainer.steps_per_epoch, initial=state.step, desc=desc, unit="step", disable=not interactive,
               leave=False, dynamic_ncols=True)
    loss_sum = torch.tensor(state.epoch_loss, dtype=torch.float64, device=rt.device)
    seen, start = state.epoch_images, time.perf_counter()
    try:
        for step in range(state.step, trainer.steps_per_epoch):
            for micro in range(trainer.accum_steps):
                sync = micro == trainer.accum_steps - 1 or rt.world_size == 1
                loss, count = _micro_step(trainer, state, next(batches), sync, epoch, step)
                loss_sum += loss.double() * count
                seen += count
            _optimizer_step(trainer, state)
            if interactive:
                rate = seen * rt.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{max(state.schedule.get_last_lr()):.3g}",
                                img_s=f"{rate:.0f}")
                bar.update()
            state.step = step + 1
            every = trainer.save_every_steps
            if every and state.step % every == 0 and state.step < trainer.steps_per_epoch:
                state.epoch_loss, state.epoch_images = loss_sum.item(), seen
                save_step()
    finally:
        bar.close()
    state.epoch_loss, state.epoch_images = loss_sum.item(), seen
    return time.perf_counter() - start
