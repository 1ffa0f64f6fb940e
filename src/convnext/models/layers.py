"""The layers a ConvNeXt block is made of, each an ordinary ``nn`` module with the official parameter names.

The network keeps its activations in channels_last memory, where an (N, C, H, W) tensor and its
(N, H, W, C) permutation are the same bytes. The block therefore works on (N, H, W, C) like the paper's
code, and its pointwise layers are `Pointwise` Linears that read those bytes in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import DepthwiseConv2dFunction


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW tensor (the paper's "channels_first" LN).

    On channels_last memory both permutes are free views, so this is one native layer_norm call. With
    ``over_channels`` set (by `convnext.deploy.export` for OpenVINO-bound graphs) the same normalisation is
    written as reductions over axis 1 instead: a graph runtime with its own blocked layouts then has no
    transposes to make around every LayerNorm.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.over_channels = False

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("over_channels", False)  # modules pickled before the flag existed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.over_channels:
            centred = x - x.mean(1, keepdim=True)  # the pattern OpenVINO fuses into one MVN across channels
            y = centred / torch.sqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
            if self.weight is not None and self.bias is not None:
                y = y * self.weight[:, None, None] + self.bias[:, None, None]
            return y
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Pointwise(nn.Linear):
    """The block's 1x1 layers: an ``nn.Linear`` over the last axis of an (N, H, W, C) tensor.

    On channels_last activations that tensor is contiguous, so ``F.linear`` reads it in place and its
    backward is two plain matrix products, which train faster on CPUs than a 1x1 convolution's backward (the
    layer ran as one until 2026-12). Its own type names the block's layers for what it is (and keeps models
    pickled by earlier versions loading); `as_linears` swaps in exact ``nn.Linear`` modules for tools that match
    that very type (``torch.ao.quantization.quantize_dynamic``).
    """


class DepthwiseConv2d(nn.Conv2d):
    """The block's 7x7 depthwise convolution (stride 1, "same" padding); it trains through
    `DepthwiseConv2dFunction`, whose backward suits these filters better than the library's."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.same_padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            # TorchScript cannot call an autograd Function; the compiled graph gets the same convolution
            # with the library's backward (eager, FX, export and torch.compile keep the Function's)
            return F.conv2d(x, self.weight, self.bias, padding=self.same_padding, groups=self.groups)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        return DepthwiseConv2dFunction.apply(x, self.weight, self.bias, self.same_padding)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _swap(model: nn.Module, kind: type[nn.Module], plain: type[nn.Module], *args) -> nn.Module:
    """Replace, in place, every module of exactly type ``kind`` by a ``plain(*its args)`` with its parameters."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                with torch.device("meta"):
                    replacement = plain(*(getattr(child, arg) for arg in args))
                replacement.weight, replacement.bias = child.weight, child.bias
                setattr(parent, name, replacement)
    return model


def as_linears(model: nn.Module) -> nn.Module:
    """``model`` with every `Pointwise` replaced, in place, by an ``nn.Linear`` holding the same parameters:
    the same function through ``F.linear``, for tools that match modules by exact type (quantization)."""
    return _swap(model, Pointwise, nn.Linear, "in_features", "out_features")


def as_plain_convs(model: nn.Module) -> nn.Module:
    """``model`` with every `DepthwiseConv2d` replaced, in place, by an ``nn.Conv2d`` holding the same
    parameters: for ``torch.jit.trace``, which would record the autograd Function as an opaque Python op
    (``torch.jit.script`` takes the plain convolution by itself)."""
    return _swap(model, DepthwiseConv2d, nn.Conv2d, "in_channels", "out_channels", "kernel_size", "stride",
                 "padding", "dilation", "groups")
