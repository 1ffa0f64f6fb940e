"""Inference-only ConvNeXt blocks: the same function with the per-channel affine maps folded into weights.

Each block's LayerNorm affine moves into the first pointwise layer and its layer scale into the second, so a
block runs a depthwise conv, a bare LayerNorm, two 1x1 convolutions (the GELU riding inside the first as a
oneDNN post-op on CPUs) and the residual add, in place. On CPUs the 1x1 weights are packed once into oneDNN's
blocked layout instead of on every call. The result keeps the model's API (``forward_features``,
``forward_head``, feature pyramids) and is meant for inference: its weights no longer have the official names.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from .models import Block, LayerNorm2d, conv1x1, onednn_inference

# FusedBlock -> (the plain weights' identity and version, their packed copies). Kept outside the modules:
# packed (opaque) tensors cannot be deep-copied, pickled or put in a state_dict.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _frozen_conv1x1(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out_chans, in_chans = weight.shape[:2]
    with torch.device("meta"):  # no throw-away initialisation
        conv = nn.Conv2d(in_chans, out_chans, 1)
    conv.weight = nn.Parameter(weight.reshape(out_chans, in_chans, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)
    return conv


class FusedBlock(nn.Module):
    """A `Block` for inference: ``W (a * x_hat + c) + b = (W a) x_hat + (W c + b)`` for the LayerNorm affine
    ``a, c`` and ``gamma (W y + b) = (gamma W) y + gamma b`` for the layer scale; no drop path."""

    def __init__(self, block: Block):
        super().__init__()
        norm, linear = block.norm, block.pwconv1
        self.dwconv = copy.deepcopy(block.dwconv)
        self.norm = LayerNorm2d(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        projection, gamma = block.pwconv2, block.gamma
        if gamma is None:
            gamma = torch.ones_like(projection.bias)
        with torch.no_grad():
            self.pwconv1 = _frozen_conv1x1(linear.weight * norm.weight,
                                           torch.addmv(linear.bias, linear.weight, norm.bias))
            self.pwconv2 = _frozen_conv1x1(projection.weight * gamma[:, None], projection.bias * gamma)

    def _packed_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 1x1 weights in oneDNN's blocked layout, packed on first use and again only if they change:
        packing on every call costs as much as the convolution itself at batch 1 in the last stage."""
        weights = (self.pwconv1.weight, self.pwconv2.weight)
        key = tuple((w.data_ptr(), w._version) for w in weights)
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key:
            n, _, h, w = x.shape
            packed = tuple(torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), [0, 0], [1, 1], [1, 1], 1,
                                                                     [n, weight.shape[1], h, w])
                           for weight in weights)
            cached = _PACKED[self] = (key, packed)
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.pwconv1.weight, self.pwconv2.weight
        if not torch.jit.is_scripting():  # TorchScript runs the plain weights
            if onednn_inference(x, w1, w2, self.dwconv.weight):
                w1, w2 = self._packed_weights(x)
        y = conv1x1(self.norm(self.dwconv(x)), w1, self.pwconv1.bias, gelu=True)
        return conv1x1(y, w2, self.pwconv2.bias).add_(x)  # in place: no buffer beyond the conv's output


def fuse(model: nn.Module) -> nn.Module:
    """A frozen, channels_last copy of ``model`` (in eval mode) whose every `Block` is a `FusedBlock`.

    Logits match the original's to float32 rounding; ``model`` itself is left as it was.
    """
    # deepcopy puts each block's FusedBlock where the block's copy would go: blocks are never copied
    fused_blocks = {id(module): FusedBlock(module) for module in model.modules() if isinstance(module, Block)}
    fused = copy.deepcopy(model, memo=fused_blocks)
    return fused.eval().requires_grad_(False).to(memory_format=torch.channels_last)
