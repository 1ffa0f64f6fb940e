"""The paper's block, the unit every ConvNeXt stacks (Figure 4): its layers, called in order."""

from __future__ import annotations

import torch
from torch import nn

from .layers import DepthwiseConv2d, DropPath, Pointwise

LN_EPS = 1e-6


class Block(nn.Module):
    """The ConvNeXt block: 7x7 depthwise conv, LN, 1x1 expand 4x, GELU, 1x1 project, layer scale, residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float | None = 1e-6,
                 kernel_size: int = 7, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, kernel_size)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = Pointwise(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = Pointwise(mlp_ratio * dim, dim)
        self.gamma = None
        if layer_scale_init_value and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C): the same memory on channels_last
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)
