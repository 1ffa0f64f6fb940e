"""A baseline with the official repository's block layout, for benchmarking only.

The official code runs each block as: depthwise conv on NCHW, permute to NHWC, LayerNorm over the last axis,
Linear, GELU, Linear, layer-scale multiply, permute back, residual add; the stem and downsampling layers use
a hand-written channels-first LayerNorm (mean and biased variance over the channel axis). Written here from
that description, with the official parameter names, so it loads our state_dict and computes our function.
"""

from __future__ import annotations

import torch
from torch import nn

from convnext.deploy.benchmark import NUM_CLASSES
from convnext.models import LN_EPS, ConvNeXt, build_model


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over axis 1 of an NCHW tensor, computed step by step as the official code does."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + LN_EPS)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PermuteLinearBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class OfficialLayoutConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int = NUM_CLASSES):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4),
                                                              ChannelsFirstLayerNorm(dims[0]))])
        for i in range(1, len(dims)):
            self.downsample_layers.append(nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1]),
                                                        nn.Conv2d(dims[i - 1], dims[i], 2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*(PermuteLinearBlock(dim) for _ in range(depth)))
                                    for dim, depth in zip(dims, depths, strict=True))
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.head(self.norm(x.mean((-2, -1))))


def official_layout(name: str) -> nn.Module | str:
    """The benchmark peer for ``name`` (hierarchical models only), with our random weights."""
    ours = build_model(name, num_classes=NUM_CLASSES)
    if not isinstance(ours, ConvNeXt):
        return f"no official-layout baseline for {name}"
    model = OfficialLayoutConvNeXt(ours.depths, ours.dims)
    model.load_state_dict(ours.state_dict())
    return model


def check_same_function(name: str = "convnext_atto") -> float:
    """Max abs difference of logits between this baseline and our model on the same weights."""
    ours = build_model(name).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1)
        baseline = OfficialLayoutConvNeXt(ours.depths, ours.dims).eval()
        baseline.load_state_dict(ours.state_dict())
        x = torch.randn(2, 3, 64, 64)
        return (ours(x) - baseline(x)).abs().max().item()
