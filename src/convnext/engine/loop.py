"""One period (an epoch, or an interval of iterations) of training, for every task: the task's forward and
losses, backward with gradient accumulation, the shared divergence check, clipping, the optimizer and
schedule steps, the EMA update, and the checkpoints due inside the period."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from ..progress import progress
from .runtime import Runtime
from .state import RunState
from .task import Task


@dataclass
class Trainer:
    """The fixed parts of a training step."""

    task: Task
    net: nn.Module  # the model, DDP-wrapped under torchrun
    rt: Runtime
    accum_steps: int
    clip_grad: float | None
    amp_dtype: torch.dtype | None
    save_every_steps: int
    diverged: Callable[[str, int], UserError]  # (what, step in the period) -> the error that stops the run


def _autocast(trainer: Trainer, enabled: bool = True) -> torch.autocast:
    return torch.autocast(trainer.rt.device.type, dtype=trainer.amp_dtype,
                          enabled=enabled and trainer.amp_dtype is not None)


def _micro_step(trainer: Trainer, state: RunState, batch, sync: bool, step: int) -> tuple[dict, int]:
    """Forward and backward of one micro-batch, inside the optimizer step's autocast region (see `train_period`);
    returns its detached losses and image count."""
    rt = trainer.rt
    with nullcontext() if sync else trainer.net.no_sync():
        out = trainer.task.step(trainer.net, batch, rt.device)
        state.bad_images.update(int(i) for i in out.bad if i >= 0)
        loss = out.losses["loss"]
        finite = torch.isfinite(loss.detach()).float()
        if rt.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            raise trainer.diverged(f"the loss became {loss.item()}", step)
        with _autocast(trainer, enabled=False):  # the backward follows the forward's dtypes by itself
            state.scaler.scale(loss / trainer.accum_steps).backward()
    return {k: v.detach() for k, v in out.losses.items()}, out.images


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


def train_period(trainer: Trainer, state: RunState, batches: Iterator, steps: int, *, desc: str,
                 show: bool, save_step: Callable[[], None]) -> tuple[float, dict[str, float]]:
    """Train from ``state.step`` to the end of the period under way (``steps`` optimizer steps); returns the
    seconds it took and the loss parts other than ``loss``, per image of this session's steps.

    ``state.epoch_loss`` / ``state.epoch_images`` sum the period's loss and images (on this rank), and
    ``save_step`` is called every ``save_every_steps`` steps, except at the period's end (its own checkpoint
    follows)."""
    rt = trainer.rt
    bar = progress(total=steps, initial=state.step, desc=desc, unit="step", show=show)
    interactive = show and isinstance(bar, tqdm)  # a live bar: worth its per-step loss readout
    loss_sum = torch.tensor(state.epoch_loss, dtype=torch.float64, device=rt.device)
    parts: dict[str, torch.Tensor] = {}
    seen = initial = state.epoch_images
    start = time.perf_counter()
    try:
        for step in range(state.step, steps):
            # One autocast region per optimizer step: autocast keeps each weight's low-precision copy until the
            # region ends, so the weights are cast once per step, not once per micro-batch.
            with _autocast(trainer):
                for micro in range(trainer.accum_steps):
                    sync = micro == trainer.accum_steps - 1 or rt.world_size == 1
                    with _autocast(trainer, enabled=False):  # loading (workers=0: in this process) as ever
                        batch = next(batches)
                    losses, count = _micro_step(trainer, state, batch, sync, step)
                    loss_sum += losses.pop("loss").double() * count
                    for key, value in losses.items():
                        parts[key] = parts.get(key, 0.0) + value.double() * count
                    seen += count
            _optimizer_step(trainer, state)
            if interactive:
                rate = seen * rt.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum.item() / max(seen, 1):.4f}",
                                lr=f"{max(state.schedule.get_last_lr()):.3g}", img_s=f"{rate:.0f}")
            bar.update()
            state.step = step + 1
            every = trainer.save_every_steps
            if every and state.step % every == 0 and state.step < steps:
                state.epoch_loss, state.epoch_images = loss_sum.item(), seen
                save_step()
    finally:
        bar.close()
    state.epoch_loss, state.epoch_images = loss_sum.item(), seen
    session = max(seen - initial, 1)
    return time.perf_counter() - start, {k: float(v) / session for k, v in parts.items()}
