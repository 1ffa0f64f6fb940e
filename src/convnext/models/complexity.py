"""Model size and cost: parameters, multiply-accumulates (the paper's "FLOPs") and activations.

MACs come from ``torch.utils.flop_counter`` (which counts 2 FLOPs per multiply-add), so every
architecture, including the roadmap's intermediate networks, is counted by the same rules.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..protocol import ImageModel

_ACTIVATION_OPS = {torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default,
                   torch.ops.aten.bmm.default}


class _ActivationCounter(TorchDispatchMode):
    """Counts output elements of convolutions and matrix products (fvcore's / timm's "activations")."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _ACTIVATION_OPS:
            self.count += out.numel()
        return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs_and_activations(model: nn.Module, res: int | tuple[int, int] = 224, in_chans: int | None = None
                               ) -> tuple[int, int]:
    """Multiply-accumulates and activations of one forward pass of one ``res`` x ``res`` (or ``(H, W)``) image."""
    in_chans = in_chans or (model.in_chans if isinstance(model, ImageModel) else 3)
    height, width = (res, res) if isinstance(res, int) else res
    x = torch.zeros(1, in_chans, height, width, device=next(model.parameters()).device)  # "meta" works too
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as flops, _ActivationCounter() as acts:
            model(x)
    finally:
        model.train(was_training)
    return flops.get_total_flops() // 2, acts.count


def model_info(model: nn.Module, res: int | tuple[int, int] = 224) -> dict:
    """Parameters, GMACs and activations (millions) at ``res`` (a side, or ``(H, W)``): what `convnext info`
    prints."""
    macs, acts = count_macs_and_activations(model, res)
    return dict(params=count_params(model), gmacs=macs / 1e9, activations_m=acts / 1e6, res=res)
