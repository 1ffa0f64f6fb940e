"""Training and fine-tuning a classifier with the paper's recipe, through the one engine (`convnext.engine.fit`).

The task supplies the data (the built-in digits or the user's image folders, augmented per image as the
official recipe does, then Mixup/CutMix per batch), the model (with fine-tuning weights when asked), the
warm-up + cosine schedule with the lr scaled to the effective batch, the cross-entropy step and top-1
validation (of the EMA too); the engine runs everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ...data.augment import BatchMix, train_transform
from ...data.images import EpochSampler, EvalImages, TrainImages
from ...engine.fit import fit
from ...engine.optim import lr_at
from ...engine.runtime import Runtime, autocast_dtype
from ...engine.task import Say, Schedule, StepOutput, Task
from ...errors import UserError
from ...weights import load_checkpoint
from ..loading import build_run_model, eval_config
from .config import TrainConfig, ema_warning, fit_to_run, scaled_lr
from .data import save_augmented_sample, train_sources
from .evaluate import evaluate


def train(config: TrainConfig, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the classification training ``config`` describes (`convnext.engine.fit`); returns the
    summary also saved as summary.json."""
    return fit(ClassificationTask(config), resume=resume, log=log)


class ClassificationTask(Task):
    best_key, metric = "top1", "val_top1"

    def __init__(self, config: TrainConfig):
        self.config = config
        self.compiled = None  # the network under torch.compile (config.compile), made at the first step

    def prepare(self, rt: Runtime, say: Say) -> Schedule:
        """The data and the plan: fit the recipe to this run (``fit_to_run``) and say what the run will do."""
        config = self.config
        self.train_src, self.val_src = train_sources(config)
        self.classes = list(self.train_src.classes)
        eff_batch = config.batch_size * config.accum_steps * rt.world_size
        steps_per_epoch = len(self.train_src) // eff_batch
        if steps_per_epoch == 0:
            raise UserError(f"the training set has {len(self.train_src)} images, fewer than one effective batch "
                            f"({eff_batch}); lower --batch-size")
        for note in fit_to_run(config, len(self.train_src), rt.world_size):
            say(f"fitted to this run: {note}")
        self.schedule = Schedule(config.epochs, steps_per_epoch, steps_per_epoch * config.epochs)
        self.warmup_steps, self.lr = round(config.warmup_epochs * steps_per_epoch), scaled_lr(config, eff_batch)
        say(f"effective batch {eff_batch} = {config.batch_size} per device x {config.accum_steps} accumulation "
            f"x {rt.world_size} processes; " + (f"lr {self.lr:.4g}, used as is" if config.lr_scaling == "none" else
                                                 f"lr {config.lr:g} given for batch {config.lr_batch}, "
                                                 f"scaled ({config.lr_scaling}): {self.lr:.4g}"))
        why_not_ema = ema_warning(config, self.schedule.total_steps)
        if why_not_ema:
            say(f"warning: {why_not_ema} (--set ema_decay=... or ema=false)")
        say(f"{len(self.train_src)} training images in {len(self.classes)} classes"
            + (f", {len(self.val_src)} validation images" if self.val_src is not None else ", no validation set"))
        self._pipeline(rt)
        return self.schedule

    def _pipeline(self, rt: Runtime) -> None:
        config = self.config
        self.mix = BatchMix(len(self.classes), mixup=config.mixup, cutmix=config.cutmix, prob=config.mixup_prob,
                            switch_prob=config.mixup_switch_prob, smoothing=config.smoothing)
        transform = train_transform(config.res, config.mean, config.std, scale=config.crop_scale,
                                    ratio=config.crop_ratio, hflip=config.hflip, interpolation=config.interpolation,
                                    randaug_n=config.randaug_n, randaug_m=config.randaug_m,
                                    randaug_mstd=config.randaug_mstd, color_jitter=config.color_jitter,
                                    reprob=config.reprob)
        self.train_set = TrainImages(self.train_src, transform, seed=config.seed)
        self.sampler = EpochSampler(self.train_set, world_size=rt.world_size, rank=rt.rank, seed=config.seed)
        pin = rt.device.type == "cuda"
        self.loader = DataLoader(self.train_set, batch_size=config.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=config.workers, pin_memory=pin, persistent_workers=config.workers > 0,
                                 generator=torch.Generator().manual_seed(config.seed))
        self.val_loader = None
        if self.val_src is not None:
            val_set = EvalImages(self.val_src, eval_config(config))
            self.val_loader = DataLoader(Subset(val_set, range(rt.rank, len(val_set), rt.world_size)),
                                         batch_size=max(1, config.batch_size * 3 // 2),
                                         num_workers=config.workers, pin_memory=pin)

    def build_model(self, rt: Runtime, fresh: bool, say: Say) -> nn.Module:
        config = self.config
        model = build_run_model(config, len(self.classes))
        if fresh and config.finetune:
            load_checkpoint(model, config.finetune, key=config.finetune_key)
            say(f"fine-tuning from {config.finetune}")
        model.to(rt.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def optimizer_options(self) -> dict:
        return dict(res=self.config.res)  # the input size of a foreign model's layer-order probe

    def peak_lr(self) -> float:
        return self.lr

    def lr_factor(self, step: int) -> float:
        config, total = self.config, self.schedule.total_steps
        return lr_at(step, self.lr, config.min_lr, total, self.warmup_steps) / self.lr if self.lr else 0.0

    def start(self, folder: Path, main: bool) -> None:
        augment_png = folder / "augment.png"
        if main and not augment_png.exists():
            save_augmented_sample(self.train_set, self.mix, self.classes, self.config, augment_png)

    def step(self, net: nn.Module, batch, device: torch.device) -> StepOutput:
        images, labels, bad = batch
        x, targets = self.mix(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.config.compile and self.compiled is None:
            self.compiled = torch.compile(net)
        logits = (self.compiled or net)(x)
        return StepOutput({"loss": F.cross_entropy(logits.float(), targets)}, len(images), bad.tolist())

    def validate(self, model: nn.Module, rt: Runtime) -> dict:
        if self.val_loader is None:
            return dict(val_top1=None, val_top5=None, val_loss=None, val_skipped=None)
        metrics = evaluate(model, self.val_loader, len(self.classes), device=rt.device,
                           autocast_dtype=autocast_dtype(self.config.amp, rt.device),
                           channels_last=self.config.channels_last)
        return dict(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"],
                    val_skipped=metrics["skipped"])

    def row_text(self, row: dict) -> str:
        val = f"  val top-1 {row['val_top1']:.2f}%" if row["val_top1"] is not None else ""
        ema = f"  EMA top-1 {row['ema_top1']:.2f}%" if row.get("ema_top1") is not None else ""
        unread = f"  ({row['val_skipped']} unreadable validation images left out)" if row["val_skipped"] else ""
        return val + ema + unread

    def describe(self, index: int) -> str:
        return self.train_src.describe(index)

    def summary(self, state) -> dict:
        best, best_ema = state.best, state.best_ema
        return dict(classes=self.classes, epochs=self.config.epochs,
                    best_top1=best["top1"] if best["epoch"] else None, best_epoch=best["epoch"],
                    best_ema_top1=best_ema["top1"] if best_ema["epoch"] else None, best_ema_epoch=best_ema["epoch"])

    def final_line(self, summary: dict, folder: Path) -> str | None:
        if summary["best_top1"] is None:
            return (f"done: no validation set, so no best.pt; the trained model is {folder / 'last.pt'} (give "
                    "--data a train/ and val/ split, or --val-data, to score and keep the best epoch)")
        return f"best validation top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}); run folder {folder}"

