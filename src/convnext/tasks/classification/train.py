"""Training and fine-tuning: the paper's recipe on one CPU, one GPU, or many GPUs under torchrun.

``train(config)`` runs everything: data, model, AdamW with per-parameter-group weight decay and layer-wise lr
decay, per-iteration warm-up + cosine schedule, AMP, EMA of weights, per-epoch evaluation, and atomic
checkpoints from which a rerun of the same command resumes exactly. Under ``torchrun`` it runs DDP, one
process per device, with rank 0 writing the files. The parts shared by every task live in ``convnext.engine``;
this module reads top to bottom as one run: the folder, the data, the plan, the model, the epochs, the summary.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset

from ...data.augment import BatchMix, seeded, train_transform
from ...data.images import Digits, EpochSampler, EvalImages, TrainImages, image_folders
from ...engine.checkpoints import CheckpointManager, check_resumable
from ...engine.loop import Trainer, train_one_epoch
from ...engine.optim import build_optimizer, layer_ids, lr_at, param_groups
from ...engine.records import RunLog
from ...engine.run import open_run, restore_or_start_over, seed_process
from ...engine.runtime import Runtime, autocast_dtype, setup_runtime, usable_workers
from ...engine.state import RunState
from ...errors import UserError
from ...files import atomic_write
from ...plots import plot_augmented
from ...weights import load_checkpoint
from ..loading import build_run_model, eval_config
from .config import TrainConfig, config_dict, ema_warning, fit_to_run, scaled_lr
from .validate import validate

__all__ = ["Runtime", "layer_ids", "lr_at", "param_groups", "setup_runtime", "train", "usable_workers"]


# --- the data ----------------------------------------------------------------------------------------------


def _datasets(config: TrainConfig):
    if config.data is None:
        if config.val_data is not None:
            raise UserError("--val-data needs --data")
        return Digits("train"), Digits("val")
    train_src, val_src = image_folders(config.data, config.val_data)
    if len(train_src.classes) < 2:
        raise UserError(f"{config.data} holds one class ({train_src.classes[0]}): a classifier needs at least "
                        "two class folders")
    return train_src, val_src


_SAMPLE_EPOCH = 2**31  # the seed key of augment.png: an epoch no run reaches


def save_augmented_sample(train_set: TrainImages, mix: BatchMix, classes: list[str], config: TrainConfig,
                          path: Path, count: int = 16) -> None:
    """``augment.png``: images spread over the training set, augmented as epoch 1 shows them, then mixed.

    Drawn under its own seed, so writing it changes nothing in the run."""
    count = min(count, len(train_set)) // 2 * 2
    picks = np.linspace(0, len(train_set) - 1, count).round().astype(int).tolist()
    with seeded(config.seed, _SAMPLE_EPOCH):
        images, labels, _ = zip(*(train_set[(i, 0)] for i in picks), strict=True)
        x, targets = mix(torch.stack(images), torch.tensor(labels))
    atomic_write(path, lambda tmp: plot_augmented(x, targets, classes, config.mean, config.std, tmp))


# --- the plan: batch, steps and learning rate --------------------------------------------------------------


@dataclass
class Plan:
    eff_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float  # the peak lr at the effective batch


def plan_run(config: TrainConfig, train_images: int, rt: Runtime, say: Callable[[str], None]) -> Plan:
    """Fit the recipe to this run (``fit_to_run``), cap the workers, and say what the run will do."""
    eff_batch = config.batch_size * config.accum_steps * rt.world_size
    steps_per_epoch = train_images // eff_batch
    if steps_per_epoch == 0:
        raise UserError(f"the training set has {train_images} images, fewer than one effective batch "
                        f"({eff_batch}); lower --batch-size")
    for note in fit_to_run(config, train_images, rt.world_size):
        say(f"fitted to this run: {note}")
    workers = usable_workers(config.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if workers < config.workers:
        say(f"DataLoader workers {config.workers} -> {workers}: no more than this process's CPU cores")
        config.workers = workers
    total_steps = steps_per_epoch * config.epochs
    plan = Plan(eff_batch, steps_per_epoch, total_steps, round(config.warmup_epochs * steps_per_epoch),
                scaled_lr(config, eff_batch))
    say(f"effective batch {eff_batch} = {config.batch_size} per device x {config.accum_steps} accumulation "
        f"x {rt.world_size} processes; " + (f"lr {plan.lr:.4g}, used as is" if config.lr_scaling == "none" else
                                             f"lr {config.lr:g} given for batch {config.lr_batch}, "
                                             f"scaled ({config.lr_scaling}): {plan.lr:.4g}"))
    why_not_ema = ema_warning(config, total_steps)
    if why_not_ema:
        say(f"warning: {why_not_ema} (--set ema_decay=... or ema=false)")
    return plan


# --- the model and its optimizer ---------------------------------------------------------------------------


def build_state(config: TrainConfig, num_classes: int, rt: Runtime, plan: Plan, *, finetune: bool,
                say: Callable[[str], None]) -> tuple[RunState, torch.nn.Module]:
    """The model (with ``finetune`` weights when asked), its EMA, AdamW, schedule and loss scaler; and the
    network the steps run (DDP-wrapped under torchrun)."""
    torch.manual_seed(config.seed)
    model = build_run_model(config, num_classes)
    if finetune and config.finetune:
        load_checkpoint(model, config.finetune, key=config.finetune_key)
        say(f"fine-tuning from {config.finetune}")
    model.to(rt.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
           if config.ema else None)
    optimizer, schedule = build_optimizer(
        model, lr=plan.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay, betas=config.betas,
        eps=config.eps, res=config.res, lr_factor=lambda step: lr_at(
            step, plan.lr, config.min_lr, plan.total_steps, plan.warmup_steps) / plan.lr if plan.lr else 0.0)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=autocast_dtype(config.amp, rt.device) is torch.float16)
    net = model
    if rt.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return RunState(model, ema, optimizer, schedule, scaler), net


def _loaders(config: TrainConfig, rt: Runtime, train_set: TrainImages, val_src
             ) -> tuple[EpochSampler, DataLoader, DataLoader | None]:
    sampler = EpochSampler(train_set, world_size=rt.world_size, rank=rt.rank, seed=config.seed)
    pin = rt.device.type == "cuda"
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.workers, pin_memory=pin, persistent_workers=config.workers > 0,
                        generator=torch.Generator().manual_seed(config.seed))
    if val_src is None:
        return sampler, loader, None
    val_set = EvalImages(val_src, eval_config(config))
    val_loader = DataLoader(Subset(val_set, range(rt.rank, len(val_set), rt.world_size)),
                            batch_size=max(1, config.batch_size * 3 // 2), num_workers=config.workers,
                            pin_memory=pin)
    return sampler, loader, val_loader


# --- one run -----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run under way: its configuration, its folder, its state, and what ends each epoch."""

    config: TrainConfig
    rt: Runtime
    folder: CheckpointManager
    log: RunLog
    state: RunState
    classes: list[str]
    say: Callable[[str], None]
    started: float = 0.0  # perf_counter at the start of this session

    def elapsed(self) -> float:
        return self.state.elapsed + time.perf_counter() - self.started

    def diverged(self, what: str, epoch: int, step: int | None) -> UserError:
        where = f"epoch {epoch + 1}, step {step + 1}" if step is not None else f"the end of epoch {epoch + 1}"
        return UserError(f"{what} at {where}: training stopped; "
                         f"{self.folder.where_to_resume()}. Start over (--restart, or a new --output) with a "
                         "lower --lr, a longer warm-up, or gradient clipping (--set clip_grad=1.0).")

    def save(self, *, improved: bool = False, ema_improved: bool = False, epoch_end: bool = False) -> None:
        """Checkpoint the state (a collective under DDP); the main process checks it and writes it."""
        snapshot = self.state.checkpoint(self.rt, config=config_dict(self.config), classes=self.classes,
                                         elapsed=self.elapsed())
        if not self.rt.main:
            return
        if not self.state.finite():
            epoch, step = self.state.epoch, self.state.step
            raise self.diverged("the weights became non-finite", epoch - 1 if epoch_end else epoch,
                                None if epoch_end else step - 1)
        if not epoch_end:
            self.folder.save_step(snapshot)
            return
        every = self.config.save_every
        ema_record = None
        if ema_improved:
            ema_record = dict(model=snapshot["model_ema"], epoch=self.state.epoch,
                              top1=self.state.best_ema["top1"], classes=self.classes, config=snapshot["config"])
        self.folder.save_epoch(snapshot, improved=improved, ema_record=ema_record,
                               periodic=bool(every) and self.state.epoch % every == 0)

    def end_epoch(self, seconds: float, val_loader: DataLoader | None, amp_dtype: torch.dtype | None) -> dict:
        """Validate, record the epoch's row, keep the best, checkpoint, and say how it went."""
        state, rt = self.state, self.rt
        totals = torch.tensor([state.epoch_loss, float(state.epoch_images)], dtype=torch.float64, device=rt.device)
        if rt.world_size > 1:
            torch.distributed.all_reduce(totals)
        row = dict(epoch=state.epoch + 1, train_loss=(totals[0] / totals[1]).item() if totals[1] else None,
                   lr=max(state.schedule.get_last_lr()), images_per_s=totals[1].item() / seconds,
                   epoch_time_s=seconds)
        row.update(validate(state.model, state.ema.module if state.ema else None, val_loader, len(self.classes),
                            device=rt.device, amp_dtype=amp_dtype, channels_last=self.config.channels_last))
        row["bad_images"] = sorted(state.bad_images)
        state.history.append(row)
        improved = row["val_top1"] is not None and row["val_top1"] > state.best["top1"]
        if improved:
            state.best = dict(top1=row["val_top1"], epoch=row["epoch"])
        ema_improved = row["ema_top1"] is not None and row["ema_top1"] > state.best_ema["top1"]
        if ema_improved:
            state.best_ema = dict(top1=row["ema_top1"], epoch=row["epoch"])
        state.epoch, state.step, state.epoch_loss, state.epoch_images = state.epoch + 1, 0, 0.0, 0
        self.save(improved=improved, ema_improved=ema_improved, epoch_end=True)
        self.log.epoch(state.history)
        self.say(_epoch_line(row, self.config.epochs))
        return row

    def summary(self, describe: Callable[[int], str]) -> dict:
        state, config = self.state, self.config
        best, best_ema = state.best, state.best_ema
        return dict(model=config.model, recipe=config.recipe, classes=self.classes, epochs=config.epochs,
                    best_top1=best["top1"] if best["epoch"] else None, best_epoch=best["epoch"],
                    best_ema_top1=best_ema["top1"] if best_ema["epoch"] else None,
                    best_ema_epoch=best_ema["epoch"], final=state.history[-1] if state.history else None,
                    time_s=self.elapsed(), skipped_images=[describe(i) for i in sorted(state.bad_images)])


def _epoch_line(row: dict, epochs: int) -> str:
    val = f"  val top-1 {row['val_top1']:.2f}%" if row["val_top1"] is not None else ""
    ema = f"  EMA top-1 {row['ema_top1']:.2f}%" if row["ema_top1"] is not None else ""
    unread = f"  ({row['val_skipped']} unreadable validation images left out)" if row["val_skipped"] else ""
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}{val}{ema}  lr {row['lr']:.3g}  "
            f"{row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s{unread}")


def train(config: TrainConfig, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the training ``config`` describes; returns the summary also saved as summary.json.

    With ``resume`` (the default) an existing ``last.pt`` in the output folder is picked up and the run
    continues from exactly where it was saved, provided it is the same run (same settings and classes);
    without it the folder's previous run is replaced. A folder serves one run at a time.
    """
    with open_run(config.output, config.device) as (rt, folder):
        say = (log or (lambda text: print(text, flush=True))) if rt.main else (lambda text: None)
        return _train(config, rt, folder, resume, say)


def _train(config: TrainConfig, rt: Runtime, folder: CheckpointManager, resume: bool,
           say: Callable[[str], None]) -> dict:
    train_src, val_src = _datasets(config)
    classes = list(train_src.classes)
    plan = plan_run(config, len(train_src), rt, say)
    say(f"{len(train_src)} training images in {len(classes)} classes"
        + (f", {len(val_src)} validation images" if val_src is not None else ", no validation set"))
    saved = folder.resume_state() if resume else None
    if saved is not None:
        check_resumable(saved, folder.last, config_dict(config), classes)
    state, net = build_state(config, len(classes), rt, plan, finetune=saved is None, say=say)
    seed_process(config.seed, rt.rank)
    if restore_or_start_over(state, saved, folder, rt, resume=resume):
        say(f"resuming {folder.last} at epoch {state.epoch + 1}, step {state.step}")
    run = Run(config, rt, folder, RunLog(folder.folder, main=rt.main, tensorboard=config.tensorboard), state,
              classes, say)
    run.log.config(config_dict(config))
    try:
        _epochs(run, plan, net, train_src, val_src)
    finally:
        run.log.close()
    summary = run.summary(train_src.describe)
    run.log.finish(summary, state.history)
    if summary["best_top1"] is not None:
        say(f"best validation top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}); "
            f"run folder {folder.folder}")
    return summary


def _epochs(run: Run, plan: Plan, net: torch.nn.Module, train_src, val_src) -> None:
    """The data pipeline, then every epoch still to run."""
    config, rt, state = run.config, run.rt, run.state
    mix = BatchMix(len(run.classes), mixup=config.mixup, cutmix=config.cutmix, prob=config.mixup_prob,
                   switch_prob=config.mixup_switch_prob, smoothing=config.smoothing)
    transform = train_transform(config.res, config.mean, config.std, scale=config.crop_scale,
                                ratio=config.crop_ratio, hflip=config.hflip, interpolation=config.interpolation,
                                randaug_n=config.randaug_n, randaug_m=config.randaug_m,
                                randaug_mstd=config.randaug_mstd, color_jitter=config.color_jitter,
                                reprob=config.reprob)
    train_set = TrainImages(train_src, transform, seed=config.seed)
    augment_png = run.folder.folder / "augment.png"
    if rt.main and not augment_png.exists():
        save_augmented_sample(train_set, mix, run.classes, config, augment_png)
    sampler, loader, val_loader = _loaders(config, rt, train_set, val_src)
    amp_dtype = autocast_dtype(config.amp, rt.device)
    trainer = Trainer(net=net, forward=torch.compile(net) if config.compile else net, mix=mix, rt=rt,
                      steps_per_epoch=plan.steps_per_epoch, accum_steps=config.accum_steps,
                      clip_grad=config.clip_grad, amp_dtype=amp_dtype, channels_last=config.channels_last,
                      save_every_steps=config.save_every_steps, diverged=run.diverged)
    if state.epoch >= config.epochs:
        run.say(f"{run.folder.folder} already holds a finished {config.epochs}-epoch run (--restart to train again)")
    run.started = time.perf_counter()
    interactive = rt.main and sys.stderr.isatty()
    for epoch in range(state.epoch, config.epochs):
        sampler.set_epoch(epoch, start=state.step * config.accum_steps * config.batch_size)
        state.model.train()
        skipped_before = len(state.bad_images)
        seconds = train_one_epoch(trainer, state, iter(loader), desc=f"epoch {epoch + 1}/{config.epochs}",
                                  interactive=interactive, save_step=run.save)
        run.end_epoch(seconds, val_loader, amp_dtype)
        if len(state.bad_images) > skipped_before:
            names = ", ".join(train_src.describe(i) for i in sorted(state.bad_images)[:5])
            run.say(f"skipped {len(state.bad_images)} unreadable training images so far (e.g. {names})")
