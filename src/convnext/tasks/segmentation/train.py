"""Training UperNet with the paper's ADE20K protocol on the shared run machinery of `convnext.engine`.

One run: the folder (lock, atomic checkpoints, exact resume), the data (draw-numbered, so a resumed run sees
the very crops an uninterrupted one would), the model and its stage-wise-decayed AdamW with the poly schedule,
then intervals of ``eval_every`` iterations, each trained by the engine's loop and closed by a sliding-window
validation (mIoU), a metrics.jsonl row and a checkpoint. Under torchrun it runs DDP, with SyncBatchNorm on GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ...engine.checkpoints import CheckpointManager, check_resumable
from ...engine.loop import Trainer, train_one_epoch
from ...engine.optim import build_optimizer
from ...engine.records import RunLog
from ...engine.run import open_run, restore_or_start_over
from ...engine.runtime import Runtime, autocast_dtype, usable_workers
from ...engine.state import RunState
from ...errors import UserError
from ...files import atomic_write, atomic_write_text
from ...models.convnext import build_model
from ...weights import IMAGENET_MEAN, IMAGENET_STD, download_weights, get_pretrained
from .config import SegConfig, config_dict, fit_segmentation_run, poly_factor
from .data import IGNORE, DrawSampler, SegmentationSet, TrainTransform, problem, segmentation_folder
from .evaluate import EvalSettings, evaluate_segmentation
from .plots import plot_segmentation_curves


def segmentation_loss(outputs, targets: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Pixel cross-entropy over labelled pixels (255 ignored), plus ``aux_weight`` times the auxiliary head's;
    a batch with no labelled pixel gives 0, not NaN."""
    logits, aux = outputs
    labelled = (targets != IGNORE).sum().clamp(min=1)
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum") / labelled
    if aux is not None:
        loss = loss + aux_weight * F.cross_entropy(aux.float(), targets, ignore_index=IGNORE,
                                                   reduction="sum") / labelled
    return loss


def build_segmentation_model(config: SegConfig, say: Callable[[str], None] = lambda _: None) -> torch.nn.Module:
    """The run's UperNet, its backbone started from ImageNet weights when ``pretrained`` names them (a tag of
    the backbone's released weights, e.g. ``in1k``, or a checkpoint file)."""
    model = build_model(config.model, num_classes=config.num_classes, drop_path_rate=config.drop_path,
                        **config.model_args)
    if config.pretrained:
        source = Path(config.pretrained)
        if not source.exists():
            source = download_weights(get_pretrained(config.model.replace("upernet_", ""), config.pretrained))
        model.load_weights(source)
        say(f"backbone initialised from {config.pretrained}")
    elif config.recipe != "demo":
        say("note: the backbone starts from random weights (no --pretrained); the paper's recipe fine-tunes "
            "ImageNet weights, e.g. --pretrained in1k_noema")
    return model


def _state(config: SegConfig, rt: Runtime, finetune: bool, say) -> tuple[RunState, torch.nn.Module]:
    torch.manual_seed(config.seed)
    model = build_segmentation_model(config if finetune else dataclasses.replace(config, pretrained=None), say)
    if rt.world_size > 1 and rt.device.type == "cuda":  # the official SyncBN (torch has it on GPUs only)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(rt.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, schedule = build_optimizer(  # mmseg's groups: one per stage even at layer_decay 1
        model, lr=config.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay, betas=config.betas,
        lr_factor=lambda step: poly_factor(step, config, config.iters), num_layers=config.decay_layers,
        group_by_layer=True)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=autocast_dtype(config.amp, rt.device) is torch.float16)
    state = RunState(model, None, optimizer, schedule, scaler)
    state.best = dict(miou=-1.0, epoch=None, iter=None)
    net = model
    if rt.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return state, net


def _sources(config: SegConfig):
    if config.data is None:
        raise UserError("give --data DIR (an ADE20K tree or images/ + masks/ folders), or use --demo")
    train_src = segmentation_folder(config.data, "train", config.reduce_zero_label)
    val_root = config.val_data or config.data
    try:
        val_src = segmentation_folder(val_root, "val", config.reduce_zero_label)
    except UserError:
        if config.val_data:
            raise
        val_src = None
    return train_src, val_src


def train_segmentation(config: SegConfig, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the segmentation training ``config`` describes; returns the summary (summary.json).

    A rerun of the same command continues from ``last.pt`` exactly; ``resume=False`` replaces the folder's run.
    """
    config.output = config.output or f"runs/segment-{config.recipe}"
    with open_run(config.output, config.device) as (rt, folder):
        say = (log or (lambda text: print(text, flush=True))) if rt.main else (lambda text: None)
        return _train(config, rt, folder, resume, say)


def _plan(config: SegConfig, train_images: int, rt: Runtime, say) -> None:
    if config.batch_size < 2 and not (rt.world_size > 1 and rt.device.type == "cuda"):
        raise UserError("batch_size must be at least 2 per process here: the pyramid pooling's 1x1 BatchNorm needs "
                        "two values per channel (batch 1 works under torchrun on GPUs, where BatchNorm is synced)")
    for note in fit_segmentation_run(config):
        say(f"fitted to this run: {note}")
    workers = usable_workers(config.workers)
    if workers < config.workers:
        say(f"DataLoader workers {config.workers} -> {workers}: no more than this process's CPU cores")
        config.workers = workers
    batch = config.batch_size * config.accum_steps * rt.world_size
    arch = f" ({', '.join(f'{k} {v}' for k, v in config.model_args.items())})" if config.model_args else ""
    say(f"recipe {config.recipe}: {config.model}{arch}, {config.iters} iterations at batch {batch} "
        f"({config.batch_size} x {config.accum_steps} accumulation x {rt.world_size} processes; the paper: 160,000 "
        f"at 16), AdamW lr {config.lr:g} wd {config.weight_decay:g}, stage-wise lr decay {config.layer_decay:g}, "
        f"poly after {config.warmup_iters} warm-up iterations, crop {config.crop}, scale {config.scale[0]}x"
        f"{config.scale[1]} x {config.ratio_range[0]:g}-{config.ratio_range[1]:g}, drop path {config.drop_path:g}, "
        f"validation every {config.eval_every} iterations; {train_images} training images")


def _train(config: SegConfig, rt: Runtime, folder: CheckpointManager, resume: bool, say) -> dict:
    train_src, val_src = _sources(config)
    _plan(config, len(train_src), rt, say)
    classes = [str(i) for i in range(config.num_classes)]
    saved = folder.resume_state() if resume else None
    if saved is not None:
        check_resumable(saved, folder.last, config_dict(config), classes)
    state, net = _state(config, rt, saved is None, say)
    if restore_or_start_over(state, saved, folder, rt, resume=resume):
        done = min(state.epoch * config.eval_every + state.step, config.iters)  # the last chunk may be short
        say(f"{folder.last}: the run is complete ({done} iterations)" if done == config.iters
            else f"resuming {folder.last} at iteration {done}")
    log = RunLog(folder.folder, main=rt.main, tensorboard=False)
    log.config(config_dict(config))
    started, elapsed_before = time.perf_counter(), state.elapsed
    run = _Run(config, rt, folder, log, state, classes, say, lambda: elapsed_before + time.perf_counter() - started)
    _intervals(run, net, train_src, val_src)
    summary = run.summary(train_src)
    if rt.main:
        atomic_write_text(folder.folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        if state.history:
            atomic_write(folder.folder / "curves.png", lambda tmp: plot_segmentation_curves(state.history, tmp))
    return summary


@dataclasses.dataclass
class _Run:
    config: SegConfig
    rt: Runtime
    folder: CheckpointManager
    log: RunLog
    state: RunState
    classes: list[str]
    say: Callable[[str], None]
    elapsed: Callable[[], float]

    def diverged(self, what: str, interval: int, step: int | None) -> UserError:
        at = interval * self.config.eval_every + (step or 0) + 1
        return UserError(f"{what} at iteration {at}: training stopped; {self.folder.where_to_resume()}. Start over "
                         "(--restart, or a new --output) with a lower --lr or --set clip_grad=1.0.")

    def save(self, *, improved: bool = False, interval_end: bool = False) -> None:
        snapshot = self.state.checkpoint(self.rt, config=config_dict(self.config), classes=self.classes,
                                         elapsed=self.elapsed())
        if not self.rt.main:
            return
        if not self.state.finite():
            raise self.diverged("the weights became non-finite", self.state.epoch, self.state.step)
        if interval_end:
            self.folder.save_epoch(snapshot, improved=improved, ema_record=None, periodic=False)
        else:
            self.folder.save_step(snapshot)

    def summary(self, train_src) -> dict:
        best, history = self.state.best, self.state.history
        return dict(model=self.config.model, recipe=self.config.recipe, iters=self.config.iters,
                    best_miou=best["miou"] if best["epoch"] else None, best_iter=best.get("iter"),
                    final={k: v for k, v in history[-1].items() if k != "bad_images"} if history else None,
                    time_s=self.elapsed(),
                    skipped=[train_src.describe(i) for i in sorted(self.state.bad_images)])


def _loader(run: _Run, dataset: SegmentationSet, start: int) -> DataLoader:
    sampler = DrawSampler(start, run.rt.rank, run.rt.world_size)
    return DataLoader(dataset, batch_size=run.config.batch_size, sampler=sampler, num_workers=run.config.workers,
                      pin_memory=run.rt.device.type == "cuda")


def _intervals(run: _Run, net: torch.nn.Module, train_src, val_src) -> None:
    """Every interval of ``eval_every`` iterations still to run, each closed by validation and a checkpoint."""
    config, state, rt = run.config, run.state, run.rt
    transform = TrainTransform(config.crop, tuple(config.scale), tuple(config.ratio_range), IMAGENET_MEAN,
                               IMAGENET_STD, config.hflip, config.photometric)
    dataset = SegmentationSet(train_src, config.num_classes, transform, config.seed)
    intervals = math.ceil(config.iters / config.eval_every)
    aux_weight = config.aux_weight
    trainer = Trainer(net=net, forward=lambda x: net(x, with_aux=True), mix=lambda x, y: (x, y), rt=rt,
                      steps_per_epoch=config.eval_every, accum_steps=config.accum_steps, clip_grad=config.clip_grad,
                      amp_dtype=autocast_dtype(config.amp, rt.device), channels_last=config.channels_last,
                      save_every_steps=config.save_every_steps, diverged=run.diverged,
                      loss=lambda out, y: segmentation_loss(out, y, aux_weight))
    interactive = rt.main and sys.stderr.isatty()
    for interval in range(state.epoch, intervals):
        steps = min(config.eval_every, config.iters - interval * config.eval_every)
        done = interval * config.eval_every + state.step
        loader = iter(_loader(run, dataset, done * config.batch_size * config.accum_steps))
        state.model.train()
        seconds = train_one_epoch(dataclasses.replace(trainer, steps_per_epoch=steps), state, loader,
                                  desc=f"iterations {done + 1}-{interval * config.eval_every + steps}",
                                  interactive=interactive, save_step=run.save)
        _end_interval(run, seconds, interval * config.eval_every + steps, val_src, train_src)


def _end_interval(run: _Run, seconds: float, iteration: int, val_src, train_src) -> None:
    config, state, rt = run.config, run.state, run.rt
    totals = torch.tensor([state.epoch_loss, float(state.epoch_images)], dtype=torch.float64, device=rt.device)
    if rt.world_size > 1:
        torch.distributed.all_reduce(totals)
    row = dict(epoch=state.epoch + 1, iter=iteration, train_loss=(totals[0] / totals[1]).item(),
               lr=max(state.schedule.get_last_lr()), images_per_s=totals[1].item() / seconds, time_s=seconds)
    if val_src is not None:
        settings = EvalSettings(scale=tuple(config.scale), crop=config.crop, stride=config.eval_stride)
        scores = evaluate_segmentation(state.model, val_src, config.num_classes, settings=settings,
                                       device=rt.device, rank=rt.rank, world_size=rt.world_size, progress=False)
        row.update(val_miou=scores["miou"], val_macc=scores["macc"], val_aacc=scores["aacc"],
                   val_skipped=len(scores["skipped"]))
    row["bad_images"] = sorted(state.bad_images)
    state.history.append(row)
    improved = row.get("val_miou") is not None and row["val_miou"] > state.best["miou"]
    if improved:
        state.best = dict(miou=row["val_miou"], epoch=row["epoch"], iter=iteration)
    state.epoch, state.step, state.epoch_loss, state.epoch_images = state.epoch + 1, 0, 0.0, 0
    run.save(improved=improved, interval_end=True)
    run.log.epoch(state.history)
    val = f"  val mIoU {row['val_miou']:.2f}  mAcc {row['val_macc']:.2f}  aAcc {row['val_aacc']:.2f}" \
        if "val_miou" in row else ""
    run.say(f"iteration {iteration}/{config.iters}  train loss {row['train_loss']:.4f}{val}  lr {row['lr']:.3g}  "
            f"{row['images_per_s']:.1f} img/s  {seconds:.1f}s")
    if state.bad_images:
        reasons = [problem(train_src, i, config.num_classes) or train_src.describe(i)
                   for i in sorted(state.bad_images)[:3]]
        count = len(state.bad_images)
        run.say(f"skipped {count} unusable training sample{'s' * (count != 1)} so far, e.g. {'; '.join(reasons)}")
