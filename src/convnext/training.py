"""Training and fine-tuning: the paper's recipe on one CPU, one GPU, or many GPUs under torchrun.

One function, ``train(config)``, runs everything: data, model, AdamW with per-parameter-group weight decay
and layer-wise lr decay, per-iteration warm-up + cosine schedule, AMP, EMA of weights, per-epoch
evaluation, and atomic checkpoints from which a rerun of the same command resumes exactly. Under
``torchrun`` it runs DDP, one process per device, with rank 0 writing the files.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .augment import BatchMix, host_rng_state, seeded, set_host_rng_state, train_transform
from .data import Digits, EpochSampler, EvalImages, TrainImages, image_folders
from .errors import UserError
from .evaluation import evaluate
from .loading import build_run_model, eval_config
from .models import ConvNeXt, ConvNeXtIsotropic
from .recipes import TrainConfig, config_dict, ema_warning, fit_to_run, scaled_lr
from .runlog import plot_augmented, plot_curves
from .weights import load_checkpoint

# --- schedule and parameter groups -------------------------------------------------------------------------


def lr_at(step: int, base_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up reaching ``base_lr`` at step ``warmup_steps - 1``, then a cosine from ``base_lr`` (step
    ``warmup_steps``) down to ``min_lr`` (step ``total_steps``). Steps are optimizer steps from 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def _unit(name: str) -> str:
    """The block a parameter belongs to: its name up to the last numeric part (``layers.3.conv.weight`` ->
    ``layers.3``), else its top-level module (``head.weight`` -> ``head``)."""
    parts = name.split(".")[:-1]
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[: numeric[-1] + 1]) if numeric else (parts[0] if parts else name)


def _forward_order(model: nn.Module, res: int) -> list[str]:
    """Parameter-owning modules in the order one forward pass calls them (registration order as fallback)."""
    owners = [(name, m) for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    called: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda *_, name=name: called.append(name)) for name, m in owners]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            in_chans = getattr(model, "in_chans", 3)
            model(torch.zeros(1, in_chans, res, res, device=param.device, dtype=param.dtype))
    except Exception as err:  # noqa: BLE001 - any model may fail on a dummy input; the fallback still works
        warnings.warn(f"layer decay: forward pass failed ({err}); using registration order", stacklevel=3)
        called = [name for name, _ in owners]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return list(dict.fromkeys(called + [name for name, _ in owners]))


def layer_ids(model: nn.Module, res: int = 224) -> tuple[dict[str, int], int]:
    """Depth id of every parameter for layer-wise lr decay, and the id of the classifier (lr scale 1).

    Hierarchical ConvNeXt: the official map, generalised to any depths: stem 0, stage 0 is 1, stage 1 and its
    downsampling 2, stage 2 in groups of three blocks from 3, stage 3 and its downsampling next, norm and head
    last (12 + 1 for [3, 3, 27, 3], exactly the official ids; 6 + 1 for tiny's [3, 3, 9, 3]). Isotropic
    ConvNeXt: stem 0, block i is i + 1. Any other model: blocks in the order a forward pass reaches them.
    """
    names = [name for name, _ in model.named_parameters()]
    if isinstance(model, ConvNeXt) and len(model.depths) == 4 and not model.features_only:
        top = 3 + math.ceil(model.depths[2] / 3) + 1
        fixed = {"downsample_layers.0": 0, "stages.0": 1, "downsample_layers.1": 2, "stages.1": 2,
                 "downsample_layers.2": 3, "downsample_layers.3": top - 1, "stages.3": top - 1}
        ids = {}
        for name in names:
            stage2 = re.match(r"stages\.2\.(\d+)\.", name)
            prefix = ".".join(name.split(".")[:2])
            ids[name] = 3 + int(stage2.group(1)) // 3 if stage2 else fixed.get(prefix, top)
        return ids, top
    if isinstance(model, ConvNeXtIsotropic):
        top = model.depth + 1
        ids = {}
        for name in names:
            block = re.match(r"blocks\.(\d+)\.", name)
            ids[name] = 0 if name.startswith("stem.") else int(block.group(1)) + 1 if block else top
        return ids, top
    units = dict.fromkeys(_unit(module + ".weight") for module in _forward_order(model, res))
    order = {unit: i for i, unit in enumerate(units)}
    ids = {name: order.get(_unit(name), len(order) - 1) for name in names}
    return ids, max(ids.values(), default=0)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 res: int = 224) -> list[dict]:
    """AdamW groups: no weight decay on biases and 1-D parameters (norms, layer scales); with
    ``layer_decay < 1`` each depth id also gets ``lr_scale = layer_decay ** (top - id)``."""
    ids, top = layer_ids(model, res) if layer_decay < 1 else ({}, 0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        layer = ids.get(name, top)
        group = groups.setdefault((layer, no_decay), dict(
            params=[], weight_decay=0.0 if no_decay else weight_decay, lr_scale=layer_decay ** (top - layer),
            name=f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"))
        group["params"].append(param)
    return list(groups.values())


# --- run environment ---------------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where this process runs: its device, its rank among ``world_size`` processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group, so it ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str = "auto") -> Runtime:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK), NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"bad device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no CUDA device is available")
        torch.cuda.set_device(dev)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(dev, rank, dist.get_world_size() if dist.is_initialized() else 1, local_rank, owns_group)


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


# --- checkpoints -------------------------------------------------------------------------------------------


def _save(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then an atomic rename: a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_training_state(path: str | os.PathLike) -> dict:
    """A checkpoint this module wrote (tensors and plain values only, read with ``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state(), **host_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    set_host_rng_state(state)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --- outputs -----------------------------------------------------------------------------------------------


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _write_metrics(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    os.replace(tmp, path)


# --- the run -----------------------------------------------------------------------------------------------


def _datasets(config: TrainConfig):
    if config.data is None:
        if config.val_data is not None:
            raise UserError("--val-data needs --data")
        return Digits("train"), Digits("val")
    return image_folders(config.data, config.val_data)


def usable_workers(requested: int, processes_per_machine: int = 1) -> int:
    """DataLoader workers capped at this process's share of the CPU cores it may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(requested, max(1, cores // processes_per_machine))


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
    plot_augmented(x, targets, classes, config.mean, config.std, path)


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(config: TrainConfig, *, resume: bool = True,
          log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the training ``config`` describes; returns the summary also saved as summary.json.

    With ``resume`` (the default) an existing ``last.pt`` in the output folder is picked up and the run
    continues from exactly where it was saved; without it the run starts over.
    """
    rt = setup_runtime(config.device)
    log = log or (lambda text: print(text, flush=True))
    say = log if rt.main else (lambda text: None)
    out = Path(config.output)
    train_src, val_src = _datasets(config)
    classes = list(train_src.classes)
    writer = None
    if config.tensorboard and rt.main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
        writer = SummaryWriter(str(out / "tensorboard"))

    eff_batch = config.batch_size * config.accum_steps * rt.world_size
    steps_per_epoch = len(train_src) // eff_batch
    if steps_per_epoch == 0:
        raise UserError(f"the training set has {len(train_src)} images, fewer than one effective batch "
                        f"({eff_batch}); lower --batch-size")
    for note in fit_to_run(config, len(train_src), rt.world_size):
        say(f"fitted to this run: {note}")
    workers = usable_workers(config.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if workers < config.workers:
        say(f"DataLoader workers {config.workers} -> {workers}: no more than this process's CPU cores")
        config.workers = workers
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    lr = scaled_lr(config, eff_batch)
    say(f"effective batch {eff_batch} = {config.batch_size} per device x {config.accum_steps} accumulation "
        f"x {rt.world_size} processes; lr {config.lr:g} given for batch {config.lr_batch}, "
        f"scaled ({config.lr_scaling}): {lr:.4g}")
    if ema_warning(config, total_steps):
        say(f"warning: {ema_warning(config, total_steps)} (--set ema_decay=... or ema=false)")
    say(f"{len(train_src)} training images in {len(classes)} classes"
        + (f", {len(val_src)} validation images" if val_src is not None else ", no validation set"))

    torch.manual_seed(config.seed)
    model = build_run_model(config, len(classes))
    saved = None
    if resume and (out / "last.pt").exists():
        saved = read_training_state(out / "last.pt")
        free = ("epochs", "workers", "device", "output")
        changed = sorted(k for k, v in config_dict(config).items()
                         if k not in free and saved["config"].get(k) != v)
        if changed:
            warnings.warn(f"resuming {out} with changed settings {changed}: the result will not match "
                          "an uninterrupted run", stacklevel=2)
    elif config.finetune:
        load_checkpoint(model, config.finetune, key=config.finetune_key)
        say(f"fine-tuning from {config.finetune}")
    model.to(rt.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
           if config.ema else None)
    groups = param_groups(model, config.weight_decay, config.layer_decay, config.res)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(config.betas), eps=config.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, lr, config.min_lr, total_steps, warmup_steps) / lr if lr else 0.0)
    amp_dtype = _autocast_dtype(config, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=amp_dtype is torch.float16)
    net = model
    if rt.world_size > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    forward = torch.compile(net) if config.compile else net

    start_epoch, start_step, history = 0, 0, []
    best = dict(top1=-1.0, epoch=None)
    best_ema = dict(top1=-1.0, epoch=None)
    elapsed = 0.0
    torch.manual_seed(config.seed + rt.rank)
    random.seed(config.seed + rt.rank)
    np.random.seed(config.seed + rt.rank)
    if saved is not None:
        model.load_state_dict(saved["model"])
        if ema is not None and saved["model_ema"] is not None:
            ema.module.load_state_dict(saved["model_ema"])
            ema.n_averaged.copy_(saved["ema_n_averaged"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"][min(rt.rank, len(saved["rng"]) - 1)], rt.device)
        start_epoch, start_step = saved["epoch"], saved["step_in_epoch"]
        history, best, best_ema = saved["history"], saved["best"], saved["best_ema"]
        elapsed = saved["elapsed"]
        say(f"resuming {out / 'last.pt'} at epoch {start_epoch + 1}, step {start_step}")

    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", config_dict(config))
    mix = BatchMix(len(classes), mixup=config.mixup, cutmix=config.cutmix, prob=config.mixup_prob,
                   switch_prob=config.mixup_switch_prob, smoothing=config.smoothing)
    transform = train_transform(config.res, config.mean, config.std, scale=config.crop_scale,
                                ratio=config.crop_ratio, hflip=config.hflip, interpolation=config.interpolation,
                                randaug_n=config.randaug_n, randaug_m=config.randaug_m,
                                randaug_mstd=config.randaug_mstd, color_jitter=config.color_jitter,
                                reprob=config.reprob)
    train_set = TrainImages(train_src, transform, seed=config.seed)
    if rt.main and not (out / "augment.png").exists():
        save_augmented_sample(train_set, mix, classes, config, out / "augment.png")
    sampler = EpochSampler(train_set, world_size=rt.world_size, rank=rt.rank, seed=config.seed)
    pin = rt.device.type == "cuda"
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.workers, pin_memory=pin, persistent_workers=config.workers > 0,
                        generator=torch.Generator().manual_seed(config.seed))
    val_loader = None
    if val_src is not None:
        val_set = EvalImages(val_src, eval_config(config))
        val_loader = DataLoader(Subset(val_set, range(rt.rank, len(val_set), rt.world_size)),
                                batch_size=max(1, config.batch_size * 3 // 2), num_workers=config.workers,
                                pin_memory=pin)
    bad_images: set[int] = set()
    for row in history:
        bad_images.update(row.get("bad_images", []))

    def checkpoint(epoch: int, step_in_epoch: int, epoch_loss: float = 0.0, epoch_images: int = 0) -> dict:
        rng = [_rng_state(rt.device)]
        if rt.world_size > 1:
            gathered = [None] * rt.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        return dict(model=model.state_dict(), model_ema=ema.module.state_dict() if ema else None,
                    ema_n_averaged=ema.n_averaged.clone() if ema else None, optimizer=optimizer.state_dict(),
                    schedule=schedule.state_dict(), scaler=scaler.state_dict(), rng=rng, epoch=epoch,
                    step_in_epoch=step_in_epoch, epoch_loss=epoch_loss, epoch_images=epoch_images,
                    config=config_dict(config), classes=classes,
                    history=history, best=best, best_ema=best_ema,
                    elapsed=elapsed + time.perf_counter() - t_run)

    def diverged(what: str) -> UserError:
        return UserError(f"{what} at epoch {epoch + 1}, step {step + 1}: training stopped; the last good "
                         f"checkpoint ({out / 'last.pt'}) is intact. Try a lower --lr, a longer warm-up, "
                         "or gradient clipping (--set clip_grad=1.0).")

    if start_epoch >= config.epochs:
        say(f"{out} already holds a finished {config.epochs}-epoch run (--restart to train again)")
    t_run = time.perf_counter()
    interactive = rt.main and sys.stderr.isatty()
    for epoch in range(start_epoch, config.epochs):
        first = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, start=first * config.accum_steps * config.batch_size)
        model.train()
        batches = iter(loader)
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", disable=not interactive, leave=False, dynamic_ncols=True)
        # a resume inside an epoch carries on the epoch's running loss
        carried = saved is not None and first > 0
        loss_sum = torch.tensor(saved["epoch_loss"] if carried else 0.0, dtype=torch.float64, device=rt.device)
        seen, t_epoch = saved["epoch_images"] if carried else 0, time.perf_counter()
        for step in range(first, steps_per_epoch):
            for micro in range(config.accum_steps):
                images, labels, bad = next(batches)
                bad_images.update(int(i) for i in bad[bad >= 0])
                images = images.to(rt.device, non_blocking=True)
                labels = labels.to(rt.device, non_blocking=True)
                x, targets = mix(images, labels)
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                sync = micro == config.accum_steps - 1 or rt.world_size == 1
                with nullcontext() if sync else net.no_sync():
                    with torch.autocast(rt.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = forward(x)
                    loss = F.cross_entropy(logits.float(), targets)
                    finite = torch.isfinite(loss.detach()).float()
                    if rt.world_size > 1:
                        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                    if not finite.item():
                        bar.close()
                        raise diverged(f"the loss became {loss.item()}")
                    scaler.scale(loss / config.accum_steps).backward()
                loss_sum += loss.detach().double() * len(images)
                seen += len(images)
            if config.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), float(config.clip_grad))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            if interactive:
                rate = seen * rt.world_size / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{max(schedule.get_last_lr()):.3g}",
                                img_s=f"{rate:.0f}")
                bar.update()
            every = config.save_every_steps
            if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                state = checkpoint(epoch, step + 1, loss_sum.item(), seen)
                if rt.main:
                    if not _finite(model):
                        raise diverged("the weights became non-finite")
                    _save(state, out / "last.pt")
        bar.close()
        epoch_time = time.perf_counter() - t_epoch
        totals = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=rt.device)])
        if rt.world_size > 1:
            dist.all_reduce(totals)
        row = dict(epoch=epoch + 1, train_loss=(totals[0] / totals[1]).item() if totals[1] else None,
                   lr=max(schedule.get_last_lr()), images_per_s=totals[1].item() / epoch_time,
                   epoch_time_s=epoch_time, val_top1=None, val_top5=None, val_loss=None, ema_top1=None)
        if val_loader is not None:
            metrics = evaluate(model, val_loader, len(classes), device=rt.device, autocast_dtype=amp_dtype,
                               channels_last=config.channels_last)
            row.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"])
            if ema is not None:
                ema_metrics = evaluate(ema.module, val_loader, len(classes), device=rt.device,
                                       autocast_dtype=amp_dtype, channels_last=config.channels_last)
                row["ema_top1"] = ema_metrics["top1"]
        row["bad_images"] = sorted(bad_images)
        history.append(row)
        improved = row["val_top1"] is not None and row["val_top1"] > best["top1"]
        if improved:
            best = dict(top1=row["val_top1"], epoch=epoch + 1)
        ema_improved = row["ema_top1"] is not None and row["ema_top1"] > best_ema["top1"]
        if ema_improved:
            best_ema = dict(top1=row["ema_top1"], epoch=epoch + 1)
        state = checkpoint(epoch + 1, 0)
        if rt.main:
            if not _finite(model):
                raise diverged("the weights became non-finite")
            _save(state, out / "last.pt")
            if improved:
                _save(state, out / "best.pt")
            if ema_improved:
                _save(dict(model=state["model_ema"], epoch=epoch + 1, top1=row["ema_top1"], classes=classes,
                           config=state["config"]), out / "best_ema.pt")
            if config.save_every and (epoch + 1) % config.save_every == 0:
                _save(state, out / f"checkpoint-{epoch + 1}.pt")
            _write_metrics(out / "metrics.jsonl", [{k: v for k, v in r.items() if k != "bad_images"}
                                                   for r in history])
            if writer is not None:
                for key, value in row.items():
                    if isinstance(value, float):
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
        val = f"  val top-1 {row['val_top1']:.2f}%" if row["val_top1"] is not None else ""
        ema_text = f"  EMA top-1 {row['ema_top1']:.2f}%" if row["ema_top1"] is not None else ""
        say(f"epoch {epoch + 1}/{config.epochs}  train loss {row['train_loss']:.4f}{val}{ema_text}  "
            f"lr {row['lr']:.3g}  {row['images_per_s']:.0f} img/s  {epoch_time:.1f}s")
        if bad_images and len(bad_images) > len(history[-2]["bad_images"] if len(history) > 1 else []):
            names = ", ".join(train_src.describe(i) for i in sorted(bad_images)[:5])
            say(f"skipped {len(bad_images)} unreadable training images so far (e.g. {names})")

    elapsed += time.perf_counter() - t_run
    summary = dict(model=config.model, recipe=config.recipe, classes=classes, epochs=config.epochs,
                   best_top1=best["top1"] if best["epoch"] else None, best_epoch=best["epoch"],
                   best_ema_top1=best_ema["top1"] if best_ema["epoch"] else None,
                   best_ema_epoch=best_ema["epoch"],
                   final=history[-1] if history else None, time_s=elapsed,
                   skipped_images=[train_src.describe(i) for i in sorted(bad_images)])
    if rt.main:
        _write_json(out / "summary.json", summary)
        if history:
            plot_curves(history, out / "curves.png")
    if summary["best_top1"] is not None:
        say(f"best validation top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}); "
            f"run folder {out}")
    if writer is not None:
        writer.close()
    if rt.owns_group:
        dist.destroy_process_group()
    return summary
