"""Training a detector with the run machinery of classification (``convnext.engine``): the locked run folder,
atomic resumable checkpoints (``last.pt``, ``best.pt`` at the best box AP), exact resume (the RNG states and
the position in the epoch come back), ``metrics.jsonl``, ``summary.json``, ``curves.png``, a progress bar, and
DDP under torchrun. The step itself is torchvision's: the detector returns its losses, we add them up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...data.images import EpochSampler
from ...engine.checkpoints import CheckpointManager, check_resumable
from ...engine.optim import build_optimizer
from ...engine.records import RunLog
from ...engine.run import open_run, restore_or_start_over, seed_process
from ...engine.runtime import Runtime, autocast_dtype
from ...engine.state import RunState
from ...errors import UserError
from ...models.convnext import build_model
from .config import DetectConfig, config_dict, fit_to_run, lr_factor
from .data import CocoData, DetectionItems, collate
from .evaluate import evaluate_detector


def build_run_detector(config: DetectConfig, num_classes: int) -> nn.Module:
    """The run's detector: its model, architecture options, stochastic depth and input sizes."""
    return build_model(config.model, num_classes=num_classes, drop_path_rate=config.drop_path,
                       min_size=tuple(config.min_sizes), max_size=config.max_size, test_size=config.test_size,
                       **config.model_args)


def load_datasets(config: DetectConfig, say: Callable[[str], None]) -> tuple[CocoData, CocoData | None]:
    """The training and validation sets (the built-in demo set without ``data``), their cleaning reported."""
    if config.data is None:
        from .demo import demo_data

        train_path, val_path = demo_data(Path(config.output) / "data", say)
    else:
        train_path, val_path = config.data, config.val_data
    train = CocoData(train_path, train=True)
    val = CocoData(val_path, train=False) if val_path is not None else None
    if val is not None and val.cat_ids != train.cat_ids:
        raise UserError(f"{val.json_path} lists other categories than {train.json_path}: "
                        f"{val.cat_ids[:8]} vs {train.cat_ids[:8]}")
    for source in (train, val):
        for line in source.notes() if source is not None else []:
            say(f"data: {line}")
    return train, val


@dataclass
class DetectRun:
    config: DetectConfig
    rt: Runtime
    folder: CheckpointManager
    log: RunLog
    state: RunState
    net: nn.Module
    train: CocoData
    val: CocoData | None
    steps_per_epoch: int
    say: Callable[[str], None]
    started: float = 0.0

    def checkpoint(self) -> dict:
        snapshot = self.state.checkpoint(self.rt, config=config_dict(self.config), classes=self.train.classes,
                                         elapsed=self.state.elapsed + time.perf_counter() - self.started)
        snapshot["category_ids"] = self.train.cat_ids
        return snapshot

    def diverged(self, what: str) -> UserError:
        return UserError(f"{what} at epoch {self.state.epoch + 1}, step {self.state.step + 1}: training stopped; "
                         f"{self.folder.where_to_resume()}. Start over (--restart) with a lower lr "
                         "(--set lr=...) or gradient clipping (--set clip_grad=1.0).")


def _step(run: DetectRun, batch, amp_dtype, parts: dict[str, float]) -> float:
    """One optimizer step on one batch: the sum of torchvision's losses, backward, clip, AdamW, schedule."""
    state, device = run.state, run.rt.device
    images, targets, bad = batch
    state.bad_images.update(b for b in bad if b >= 0)
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        losses = run.net(images, targets)
    loss = sum(losses.values())
    if not run.rt.all_agree(bool(torch.isfinite(loss.detach()))):
        raise run.diverged(f"the loss became {loss.item()}")
    state.scaler.scale(loss).backward()
    if run.config.clip_grad:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), run.config.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.schedule.step()
    for key, value in losses.items():
        parts[key] = parts.get(key, 0.0) + value.item() * len(images)
    parts["images"] = parts.get("images", 0.0) + len(images)
    return loss.item()


def _epoch(run: DetectRun, loader: DataLoader, sampler: EpochSampler, interactive: bool) -> dict:
    """Train to the end of the epoch under way; returns its row (losses per image, lr, speed)."""
    config, state = run.config, run.state
    sampler.set_epoch(state.epoch, start=state.step * config.batch_size)
    state.model.train()
    amp_dtype = autocast_dtype(config.amp, run.rt.device)
    parts: dict[str, float] = {}
    batches, start = iter(loader), time.perf_counter()
    bar = tqdm(total=run.steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch + 1}/{config.epochs}",
               unit="step", disable=not interactive, leave=False, dynamic_ncols=True)
    try:
        for step in range(state.step, run.steps_per_epoch):
            loss = _step(run, next(batches), amp_dtype, parts)
            state.epoch_loss += loss * config.batch_size
            state.epoch_images += config.batch_size
            state.step = step + 1
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{max(state.schedule.get_last_lr()):.3g}")
            bar.update()
            every = config.save_every_steps
            if every and state.step % every == 0 and state.step < run.steps_per_epoch:
                snapshot = run.checkpoint()
                if run.rt.main:
                    run.folder.save_step(snapshot)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    session = max(parts.pop("images", 0.0), 1.0)  # the loss parts cover this session's steps of the epoch
    return dict(epoch=state.epoch + 1, train_loss=state.epoch_loss / max(state.epoch_images, 1),
                **{k: v / session for k, v in parts.items()},
                lr=max(state.schedule.get_last_lr()), images_per_s=state.epoch_images * run.rt.world_size / seconds,
                epoch_time_s=seconds)


def _validate(run: DetectRun, row: dict) -> bool:
    """Box (and mask) AP on the validation set, into the row; whether the box AP is the run's best."""
    if run.val is None or not run.rt.main:
        return False
    metrics = evaluate_detector(run.state.model, run.val, device=run.rt.device, batch_size=run.config.batch_size,
                                progress=True)
    row["box_ap"], row["box_ap50"] = metrics["bbox"]["AP"], metrics["bbox"]["AP50"]
    if "segm" in metrics:
        row["mask_ap"], row["mask_ap50"] = metrics["segm"]["AP"], metrics["segm"]["AP50"]
    row["val"] = metrics
    improved = row["box_ap"] > run.state.best.get("box_ap", -1.0)
    if improved:
        run.state.best = dict(box_ap=row["box_ap"], mask_ap=row.get("mask_ap"), epoch=row["epoch"])
    return improved


def _epoch_line(row: dict, epochs: int) -> str:
    val = f"  box AP {row['box_ap']:.1f}" if "box_ap" in row else ""
    val += f"  mask AP {row['mask_ap']:.1f}" if "mask_ap" in row else ""
    return (f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}{val}  lr {row['lr']:.3g}  "
            f"{row['images_per_s']:.1f} img/s  {row['epoch_time_s']:.1f}s")


def _epochs(run: DetectRun) -> None:
    config, state, rt = run.config, run.state, run.rt
    items = DetectionItems(run.train, train=True, flip=config.hflip, seed=config.seed)
    sampler = EpochSampler(items, world_size=rt.world_size, rank=rt.rank, seed=config.seed)
    loader = DataLoader(items, batch_size=config.batch_size, sampler=sampler, drop_last=True, collate_fn=collate,
                        num_workers=config.workers, persistent_workers=config.workers > 0)
    interactive = rt.main and sys.stderr.isatty()
    if state.epoch >= config.epochs:
        run.say(f"{run.folder.folder} already holds a finished {config.epochs}-epoch run (--restart to train again)")
    run.started = time.perf_counter()
    for _ in range(state.epoch, config.epochs):
        row = _epoch(run, loader, sampler, interactive)
        improved = _validate(run, row)
        row["bad_images"] = sorted(state.bad_images)
        state.history.append(row)
        state.epoch, state.step, state.epoch_loss, state.epoch_images = state.epoch + 1, 0, 0.0, 0
        snapshot = run.checkpoint()
        if rt.main:
            if not state.finite():
                raise run.diverged("the weights became non-finite")
            run.folder.save_epoch(snapshot, improved=improved, ema_record=None, periodic=False)
        run.log.epoch(state.history)
        run.say(_epoch_line(row, config.epochs))


def _build_state(config: DetectConfig, train: CocoData, rt: Runtime, steps_per_epoch: int, fresh: bool,
                 say: Callable[[str], None]) -> tuple[RunState, nn.Module]:
    torch.manual_seed(config.seed)
    model = build_run_detector(config, len(train.classes) + 1)
    if fresh and config.backbone:
        say(model.load_weights(config.backbone, config.backbone_key))
    elif fresh:
        say("backbone initialised at random (no --backbone checkpoint): expect far lower AP than from ImageNet "
            "weights")
    model.to(rt.device)
    optimizer, schedule = build_optimizer(
        model, lr=config.lr, weight_decay=config.weight_decay, layer_decay=config.layer_decay, betas=config.betas,
        lr_factor=lambda step: lr_factor(step, steps_per_epoch, config))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=autocast_dtype(config.amp, rt.device) is torch.float16)
    state = RunState(model, None, optimizer, schedule, scaler, best=dict(box_ap=-1.0, epoch=None))
    net = model
    if rt.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                      find_unused_parameters=True)
    return state, net


def _plan(config: DetectConfig, train: CocoData, rt: Runtime, say: Callable[[str], None]) -> int:
    for note in fit_to_run(config, len(train), rt.world_size):
        say(f"fitted to this run: {note}")
    eff_batch = config.batch_size * rt.world_size
    steps = len(train) // eff_batch
    if steps == 0:
        raise UserError(f"the training set has {len(train)} usable images, fewer than one batch ({eff_batch}); "
                        "lower --batch-size")
    say(f"{len(train)} training images, {len(train.classes)} categories; batch {eff_batch} = {config.batch_size} "
        f"x {rt.world_size} processes; AdamW lr {config.lr:g} (given for batch {config.lr_batch}, used as is), "
        f"wd {config.weight_decay:g}, layer decay {config.layer_decay:g}, drop path {config.drop_path:g}; "
        f"{config.epochs} epochs, lr x0.1 after epochs {', '.join(f'{s:g}' for s in config.lr_steps)}; "
        f"training shorter sides {list(config.min_sizes)} (longer <= {config.max_size}), test {config.test_size}")
    return steps


def train_detector(config: DetectConfig, *, resume: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) a detection run; returns the summary also saved as summary.json. As for
    classification, rerunning the same command continues the run exactly where it was saved."""
    with open_run(config.output, config.device) as (rt, folder):
        say = (log or (lambda text: print(text, flush=True))) if rt.main else (lambda text: None)
        return _train(config, rt, folder, resume, say)


def _train(config: DetectConfig, rt: Runtime, folder: CheckpointManager, resume: bool,
           say: Callable[[str], None]) -> dict:
    train, val = load_datasets(config, say)
    steps = _plan(config, train, rt, say)
    saved = folder.resume_state() if resume else None
    if saved is not None:
        check_resumable(saved, folder.last, config_dict(config), train.classes)
    state, net = _build_state(config, train, rt, steps, saved is None, say)
    seed_process(config.seed, rt.rank)
    if restore_or_start_over(state, saved, folder, rt, resume=resume):
        say(f"resuming {folder.last} at epoch {state.epoch + 1}, step {state.step}")
    run = DetectRun(config, rt, folder, RunLog(folder.folder, main=rt.main, tensorboard=False), state, net, train,
                    val, steps, say)
    run.log.config(config_dict(config))
    _epochs(run)
    best = state.best
    summary = dict(model=config.model, recipe=config.recipe, classes=train.classes, epochs=config.epochs,
                   best_box_ap=best["box_ap"] if best["epoch"] else None, best_mask_ap=best.get("mask_ap"),
                   best_epoch=best["epoch"], final=state.history[-1] if state.history else None,
                   time_s=state.elapsed + time.perf_counter() - run.started, data_notes=train.notes(),
                   skipped_images=[train.describe(i) for i in sorted(state.bad_images)])
    run.log.finish(summary, state.history)
    if summary["best_box_ap"] is not None:
        say(f"best box AP {summary['best_box_ap']:.1f} (epoch {summary['best_epoch']}); run folder {folder.folder}")
    return summary


def load_detector(checkpoint: str | Path) -> tuple[nn.Module, list[str], list[int]]:
    """A detector a `convnext detect train` run saved, in eval mode, with its category names and json ids."""
    from ...weights import read_checkpoint_file
    from .config import config_from_dict

    raw = read_checkpoint_file(Path(checkpoint))
    if not isinstance(raw.get("config"), dict) or "category_ids" not in raw:
        raise UserError(f"{checkpoint} is not a checkpoint of `convnext detect train` (no config and categories)")
    config = config_from_dict(raw["config"])
    model = build_run_detector(config, len(raw["classes"]) + 1)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as err:
        raise UserError(f"{checkpoint} does not fit the detector its config describes: "
                        f"{str(err).strip().splitlines()[0]}") from None
    return model.eval(), list(raw["classes"]), list(raw["category_ids"])
