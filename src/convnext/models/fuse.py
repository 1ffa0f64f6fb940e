"""Inference-only ConvNeXt blocks: the same function with the per-channel affine maps folded into weights.

Each block's LayerNorm affine moves into the first pointwise layer and its layer scale into the second, so a
block runs a depthwise conv, a bare LayerNorm and its pointwise MLP with the residual add
(``convnext::pointwise_mlp``: two oneDNN matrix products with GELU and add post-ops on CPUs). The weights can be
cast once to bf16 (``dtype=torch.bfloat16``), which is what deploying on CPUs with AMX or on GPUs wants. The
result keeps the model's API (``forward_features``, ``forward_head``, feature pyramids) and is meant for
inference: its weights no longer have the official names.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .block import Block
from .kernels import pointwise_mlp_reference
from .layers import LayerNorm2d


def _frozen_conv1x1(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out_chans, in_chans = weight.shape[:2]
    with torch.device("meta"):  # no throw-away initialisation
        conv = nn.Conv2d(in_chans, out_chans, 1)
    conv.weight = nn.Parameter(weight.reshape(out_chans, in_chans, 1, 1).contiguous(memory_format=torch.channels_last),
                               requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)
    return conv


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """An ``nn.Conv2d`` sharing nothing with ``conv`` but its values: no training-only backward in inference."""
    with torch.device("meta"):
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups)
    plain.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
    plain.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
    return plain


class FusedBlock(nn.Module):
    """A `Block` for inference: ``W (a * x_hat + c) + b = (W a) x_hat + (W c + b)`` for the LayerNorm affine
    ``a, c`` and ``gamma (W y + b) = (gamma W) y + gamma b`` for the layer scale; no drop path.

    ``portable`` (set by `portable`) runs the MLP as plain ATen ops, for TorchScript files that must load
    where this package is not installed (libtorch, a bare ``torch.jit.load``)."""

    __constants__ = ["portable"]  # TorchScript compiles only the branch the flag takes

    def __init__(self, block: Block):
        super().__init__()
        self.portable = False
        norm, linear = block.norm, block.pwconv1
        self.dwconv = _plain_conv(block.dwconv)
        self.norm = LayerNorm2d(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        projection, gamma = block.pwconv2, block.gamma
        if gamma is None:
            gamma = torch.ones_like(projection.bias)
        with torch.no_grad():
            self.pwconv1 = _frozen_conv1x1(linear.weight * norm.weight,
                                           torch.addmv(linear.bias, linear.weight, norm.bias))
            self.pwconv2 = _frozen_conv1x1(projection.weight * gamma[:, None], projection.bias * gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x))
        weights = (self.pwconv1.weight, self.pwconv1.bias, self.pwconv2.weight, self.pwconv2.bias)
        if self.portable:  # a constant to TorchScript: the other branch is not compiled into the file
            return pointwise_mlp_reference(y, x, *weights)
        return torch.ops.convnext.pointwise_mlp(y, x, *weights)


def portable(model: nn.Module) -> nn.Module:
    """``model`` with every `FusedBlock` set, in place, to plain ATen ops (see `FusedBlock`)."""
    for module in model.modules():
        if isinstance(module, FusedBlock):
            module.portable = True
    return model


def fuse(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen, channels_last copy of ``model`` (in eval mode) whose every `Block` is a `FusedBlock`, its
    floating-point weights cast to ``dtype`` if given (inputs are then expected in that dtype too).

    Logits match the original's to float32 rounding (bf16: to its rounding); ``model`` is left as it was.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"fuse casts to a floating-point dtype, not {dtype}")
    # deepcopy puts each block's FusedBlock where the block's copy would go: blocks are never copied
    fused_blocks = {id(module): FusedBlock(module) for module in model.modules() if isinstance(module, Block)}
    fused = copy.deepcopy(model, memo=fused_blocks)
    fused = fused.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return fused if dtype is None else fused.to(dtype)
