"""The optimiser of the paper's recipe: AdamW parameter groups (no weight decay on biases and 1-D parameters,
layer-wise lr decay for fine-tuning) and a per-iteration linear warm-up followed by a cosine."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..models.convnext import ConvNeXt, ConvNeXtIsotropic


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
    if hasattr(model, "layer_decay_ids"):  # a model with its own map (the detectors)
        return model.layer_decay_ids()
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



def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float,
                    betas: tuple[float, float], eps: float = 1e-8, lr_factor: Callable[[int], float],
                    num_layers: int | None = None
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``param_groups`` with the schedule ``lr_factor(step)`` (the multiple of the peak ``lr`` at
    optimizer step ``step``); the schedule steps once per optimizer step."""
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
