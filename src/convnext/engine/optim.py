"""The optimiser of every task: AdamW parameter groups (no weight decay on biases and 1-D parameters,
layer-wise lr decay for fine-tuning) with the task's own lr schedule, and the classification recipe's
per-iteration linear warm-up followed by a cosine."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..models.layer_decay import block_of
from ..protocol import ImageModel, LayerDecay


def lr_at(step: int, base_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up reaching ``base_lr`` at step ``warmup_steps - 1``, then a cosine from ``base_lr`` (step
    ``warmup_steps``) down to ``min_lr`` (step ``total_steps``). Steps are optimizer steps from 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


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
            in_chans = model.in_chans if isinstance(model, ImageModel) else 3
            model(torch.zeros(1, in_chans, res, res, device=param.device, dtype=param.dtype))
    except Exception as err:  # noqa: BLE001 - any model may fail on a dummy input; the fallback still works
        warnings.warn(f"layer decay: forward pass failed ({err}); using registration order", stacklevel=3)
        called = [name for name, _ in owners]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return list(dict.fromkeys(called + [name for name, _ in owners]))


def layer_ids(model: nn.Module, num_layers: int | None = None, *, res: int = 224) -> tuple[dict[str, int], int]:
    """Depth id of every parameter for layer-wise lr decay, and the id that trains at the full lr.

    A model of ours, or any that follows `convnext.protocol.LayerDecay`, names them itself
    (``layer_decay_ids(num_layers)``: the official maps). A foreign model gets one id per block (`block_of`)
    in the order a forward pass of a ``res`` x ``res`` image reaches them.
    """
    if isinstance(model, LayerDecay):
        return model.layer_decay_ids(num_layers)
    names = [name for name, _ in model.named_parameters()]
    blocks = dict.fromkeys(block_of(module + ".weight") for module in _forward_order(model, res))
    order = {block: i for i, block in enumerate(blocks)}
    ids = {name: order.get(block_of(name), len(order) - 1) for name in names}
    return ids, max(ids.values(), default=0)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, num_layers: int | None = None,
                 *, res: int = 224, group_by_layer: bool = False) -> list[dict]:
    """AdamW groups: no weight decay on biases and 1-D parameters (norms, layer scales); with
    ``layer_decay < 1`` (or ``group_by_layer``) one pair of groups per layer id (`layer_ids`), with
    ``lr_scale = layer_decay ** (top - id)``. Groups come in the order of their first parameter.

    A checkpoint stores its optimizer's groups by position, so these rules are frozen: at ``layer_decay`` 1
    a classifier or detector has the two groups it always had, while segmentation asks for
    ``group_by_layer`` (mmseg's optimizer constructor splits by layer whatever the decay, and the segmentation
    runs' checkpoints hold those groups). Frozen parameters (``requires_grad=False``) are left out. ``res`` is
    the side of the dummy image a foreign model's forward-order fallback runs on (`layer_ids`).
    """
    split = layer_decay < 1 or group_by_layer
    ids, top = layer_ids(model, num_layers, res=res) if split else ({}, 0)
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
                    betas: tuple[float, float], lr_factor: Callable[[int], float], eps: float = 1e-8,
                    num_layers: int | None = None, res: int = 224, group_by_layer: bool = False
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` (each group at ``lr * lr_scale``) and the task's schedule: ``lr_factor(step)``
    is the multiple of the peak ``lr`` at optimizer step ``step``; the schedule steps once per optimizer step.

    Every task builds its optimizer here, so that groups, scales and weight decay follow one rule; the task
    brings only its schedule (classification: warm-up + cosine, `lr_at`; segmentation: poly; detection: steps).
    """
    groups = param_groups(model, weight_decay, layer_decay, num_layers, res=res, group_by_layer=group_by_layer)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
