"""Training UperNet with the paper's ADE20K protocol, through the one engine (`convnext.engine.fit`).

The task supplies the data (draw-numbered, so a resumed run sees the very crops an uninterrupted one would),
the model (its backbone from ImageNet weights when named; SyncBatchNorm under torchrun on GPUs), the poly
schedule, the pixel cross-entropy step (plus the auxiliary head's) and the sliding-window mIoU validation;
the run is counted in iterations, validated every ``eval_every`` of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...engine.fit import fit
from ...engine.runtime import Runtime
from ...engine.task import Say, Schedule, StepOutput, Task
from ...errors import UserError
from ...weights import IMAGENET_MEAN, IMAGENET_STD
from .config import SegConfig, fit_segmentation_run, poly_factor
from .data import DrawSampler, SegmentationSet, TrainTransform, problem, train_val_sources
from .evaluate import EvalSettings, evaluate_segmentation
from .metrics import score_text
from .model import build_segmentation_model, segmentation_loss
from .plots import plot_segmentation_curves


def train_segmentation(config: SegConfig, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the segmentation training ``config`` describes (`convnext.engine.fit`); returns the
    summary (summary.json). A rerun of the same command continues from ``last.pt`` exactly; ``resume=False``
    replaces the folder's run."""
    return fit(SegmentationTask(config), resume=resume, log=log)


class SegmentationTask(Task):
    best_key, metric = "miou", "val_miou"

    def __init__(self, config: SegConfig):
        self.config = config
        self.classes = [str(i) for i in range(config.num_classes)]

    def prepare(self, rt: Runtime, say: Say) -> Schedule:
        config = self.config
        self.train_src, self.val_src = train_val_sources(config)
        if config.batch_size < 2 and not (rt.world_size > 1 and rt.device.type == "cuda"):
            raise UserError("batch_size must be at least 2 per process here: the pyramid pooling's 1x1 BatchNorm "
                            "needs two values per channel (batch 1 works under torchrun on GPUs, where BatchNorm "
                            "is synced)")
        for note in fit_segmentation_run(config):
            say(f"fitted to this run: {note}")
        batch = config.batch_size * config.accum_steps * rt.world_size
        arch = f" ({', '.join(f'{k} {v}' for k, v in config.model_args.items())})" if config.model_args else ""
        say(f"recipe {config.recipe}: {config.model}{arch}, {config.iters} iterations at batch {batch} "
            f"({config.batch_size} x {config.accum_steps} accumulation x {rt.world_size} processes; the paper: "
            f"160,000 at 16), AdamW lr {config.lr:g} wd {config.weight_decay:g}, stage-wise lr decay "
            f"{config.layer_decay:g}, poly after {config.warmup_iters} warm-up iterations, crop {config.crop}, "
            f"scale {config.scale[0]}x{config.scale[1]} x {config.ratio_range[0]:g}-{config.ratio_range[1]:g}, "
            f"drop path {config.drop_path:g}, validation every {config.eval_every} iterations; "
            f"{len(self.train_src)} training images, "
            + (f"{len(self.val_src)} validation images" if self.val_src is not None else
               "no validation set (a plain folder is all training data: give DIR/train + DIR/val or --val-data)"))
        transform = TrainTransform(config.crop, tuple(config.scale), tuple(config.ratio_range), IMAGENET_MEAN,
                                   IMAGENET_STD, config.hflip, config.photometric)
        self.dataset = SegmentationSet(self.train_src, config.num_classes, transform, config.seed)
        return Schedule(math.ceil(config.iters / config.eval_every), config.eval_every, config.iters, "iteration")

    def build_model(self, rt: Runtime, fresh: bool, say: Say) -> nn.Module:
        config = self.config
        model = build_segmentation_model(config if fresh else dataclasses.replace(config, pretrained=None), say)
        if rt.world_size > 1 and rt.device.type == "cuda":  # the official SyncBN (torch has it on GPUs only)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(rt.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def optimizer_options(self) -> dict:
        """The configs' layer-decay depth; a group per stage even without decay, as runs always had."""
        return dict(num_layers=self.config.decay_layers, group_by_layer=True)

    def lr_factor(self, step: int) -> float:
        return poly_factor(step, self.config, self.config.iters)

    def batches(self, period: int, start: int, rt: Runtime) -> Iterator:
        """Samples are numbered draws: the loader of a period starts at its draw, so a resume is exact."""
        config = self.config
        first = period * config.eval_every * config.batch_size * config.accum_steps + start
        return iter(DataLoader(self.dataset, batch_size=config.batch_size, num_workers=config.workers,
                               sampler=DrawSampler(first, rt.rank, rt.world_size),
                               pin_memory=rt.device.type == "cuda",
                               generator=torch.Generator().manual_seed(config.seed)))

    def train_samples(self) -> int:
        return len(self.dataset)

    def step(self, net: nn.Module, batch, device: torch.device) -> StepOutput:
        images, masks, bad = batch
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = segmentation_loss(net(images, with_aux=True), masks, self.config.aux_weight)
        return StepOutput({"loss": loss}, len(images), bad.tolist())

    def validate(self, model: nn.Module, rt: Runtime) -> dict:
        if self.val_src is None:
            return {}
        config = self.config
        settings = EvalSettings(scale=tuple(config.scale), crop=config.crop, stride=config.eval_stride)
        scores = evaluate_segmentation(model, self.val_src, config.num_classes, settings=settings, device=rt.device,
                                       rank=rt.rank, world_size=rt.world_size, progress=False)
        return dict(val_miou=scores["miou"], val_macc=scores["macc"], val_aacc=scores["aacc"],
                    val_skipped=len(scores["skipped"]))

    def best_record(self, row: dict) -> dict:
        return dict(miou=row["val_miou"], epoch=row["epoch"], iter=row["iter"])

    def row_text(self, row: dict) -> str:
        if "val_miou" not in row:
            return ""
        return (f"  val mIoU {score_text(row['val_miou'])}  mAcc {score_text(row['val_macc'])}  "
                f"aAcc {score_text(row['val_aacc'])}")

    def describe(self, index: int) -> str:
        return problem(self.train_src, index, self.config.num_classes) or self.train_src.describe(index)

    def summary(self, state) -> dict:
        best = state.best
        return dict(iters=self.config.iters, best_miou=best["miou"] if best["epoch"] else None,
                    best_iter=best.get("iter"))

    def plot_curves(self, history: list[dict], path: Path) -> None:
        plot_segmentation_curves(history, path)
