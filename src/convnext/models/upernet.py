"""UperNet on a ConvNeXt backbone: the segmentation model of the paper's ADE20K experiments (Sec. 4, Table 4).

The decode head is UPerNet (Xiao et al. 2018) as the official configuration sets it: a pyramid pooling module
(pool scales 1/2/3/6) on the stride-32 map, a top-down FPN over all four stages, 512 channels, dropout 0.1 and
a 1x1 classifier; an auxiliary FCN head (one 3x3 conv, 256 channels) on stage 3 adds 0.4x its loss during
training and is not run at inference. Module names follow the official (mmsegmentation) checkpoints, so
their ``state_dict`` loads without renaming: ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .convnext import MODEL_ARCHS, ConvNeXtFeatures, register_model
from .layer_decay import stage_wise_ids

PAPER_CHANNELS = 512  # UPerHead width of the official configs
AUX_CHANNELS = 256
AUX_LOSS_WEIGHT = 0.4
POOL_SCALES = (1, 2, 3, 6)


class ConvBNReLU(nn.Module):
    """Conv (no bias: the norm has one), BatchNorm, ReLU; named ``conv``/``bn`` as in the official files."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class _Classifier(nn.Module):
    """Dropout then a 1x1 conv to class scores (``conv_seg``), initialised small as in the official heads."""

    def _init_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(_Classifier):
    """Pyramid pooling on the deepest map, a top-down FPN, and all levels fused at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = PAPER_CHANNELS,
                 pool_scales: Sequence[int] = POOL_SCALES, dropout: float = 0.1):
        super().__init__()
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(top, channels, 1)) for s in pool_scales)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self._init_classifier(channels, num_classes, dropout)

    def pyramid_pool(self, x: torch.Tensor) -> torch.Tensor:
        """PSPNet's context: the map, plus its average over 1x1 .. 6x6 grids brought back to its size."""
        pooled = [_resize(branch(x), x.shape[2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=False)]
        levels.append(self.pyramid_pool(features[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level adds the coarser one above it
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[2:])
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels, strict=False)] + [levels[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(_resize(o, size) for o in outs[1:])], dim=1))
        return self.classify(fused)


class FCNHead(_Classifier):
    """The auxiliary head: one 3x3 conv on stage 3 (stride 16), then the classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = AUX_CHANNELS, dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(in_channels, channels, 3))
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.convs(x))


class UperNet(nn.Module):
    """ConvNeXt backbone + UPerHead (+ auxiliary FCN head for training): images in, per-pixel logits out.

    ``forward(images)`` returns ``(N, num_classes, H, W)`` logits at the input size; ``forward(images,
    with_aux=True)`` also returns the auxiliary head's logits (the training loss weighs them by
    ``aux_loss_weight``). Inputs of any size work; sides that are not multiples of 32 are handled by the
    backbone's flooring and the final resize, as in the official code.
    """

    stride = 32

    def layer_decay_ids(self, num_layers: int | None = None) -> tuple[dict[str, int], int]:
        """The official stage-wise map (`convnext.models.layer_decay.stage_wise_ids`): backbone downsampling 0,
        stage ``i`` is ``i + 1``, the rest ``num_layers + 1`` (the configs' ``num_layers``: 6 for tiny-depth
        backbones, 12 for the deeper ones, unless given)."""
        return stage_wise_ids([name for name, _ in self.named_parameters()], self.depths, num_layers)

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 num_classes: int = 150, in_chans: int = 3, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float | None = 1e-6, channels: int = PAPER_CHANNELS,
                 aux_channels: int | None = AUX_CHANNELS, pool_scales: Sequence[int] = POOL_SCALES,
                 dropout: float = 0.1, aux_loss_weight: float = AUX_LOSS_WEIGHT):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"a segmentation model needs at least 2 classes, got num_classes={num_classes}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.aux_loss_weight = aux_loss_weight
        self.backbone = ConvNeXtFeatures(depths, dims, in_chans, drop_path_rate, layer_scale_init_value)
        self.decode_head = UPerHead(dims, num_classes, channels, pool_scales, dropout)
        self.auxiliary_head = FCNHead(dims[2], num_classes, aux_channels, dropout) if aux_channels else None

    def forward(self, images: torch.Tensor, with_aux: bool = False):
        features = self.backbone(images)
        logits = _resize(self.decode_head(features), images.shape[2:])
        if not with_aux:
            return logits
        if self.auxiliary_head is None:
            return logits, None
        return logits, _resize(self.auxiliary_head(features[2]), images.shape[2:])

    def load_weights(self, source, strict: bool = True):
        """Official, Hugging Face or own segmentation weights, or a classification checkpoint for the backbone
        (`convnext.weights.segmentation.load_segmentation_checkpoint`)."""
        from ..weights.segmentation import load_segmentation_checkpoint

        return load_segmentation_checkpoint(self, source, strict=strict)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's block activations in backward (less memory, more compute)."""
        self.backbone.set_grad_checkpointing(enable)


# Registered names and the backbone each uses; the official drop-path rates are training settings (recipes).
SIZES = ("tiny", "small", "base", "large", "xlarge")


def _builder(size: str):
    arch = MODEL_ARCHS[f"convnext_{size}"][1]

    def build(**overrides) -> UperNet:
        return UperNet(**{"depths": arch["depths"], "dims": arch["dims"], **overrides})

    return build


for _size in SIZES:
    register_model(f"upernet_convnext_{_size}", _builder(_size))
