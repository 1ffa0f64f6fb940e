"""Mask R-CNN and Faster R-CNN with a ConvNeXt backbone, assembled from torchvision's detection engine.

The network follows the official ``mask_rcnn_convnext_fpn`` config: our `ConvNeXtFeatures` (the per-stage
LayerNorms ``norm0..norm3`` on its four outputs), an FPN of 256 channels with a fifth level max-pooled from the
last (strides 4 to 64), anchors 32 to 512 at ratios 0.5/1/2, a two-layer 1024-wide box head, and a four-conv
mask head predicting 28 x 28 masks. The detector itself (RPN, RoI heads, losses, post-processing) is
torchvision's; nothing here re-implements it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import UserError
from ..weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    first_line,
    load_checkpoint,
    read_checkpoint_file,
    require_finite,
)
from ..weights.detection import convert_mmdet_cascade, is_mmdet_detector
from .convnext import MODEL_ARCHS, ConvNeXtFeatures
from .layer_decay import hierarchical_ids

FPN_CHANNELS = 256
BOX_HEAD_WIDTH = 1024
# mmdet's Mask R-CNN keeps 1000 proposals per image in training (torchvision's default is 2000)
RPN_TRAIN_PROPOSALS = 1000
ROIS_PER_IMAGE = 512  # RoIs sampled per training image for the RoI heads (a quarter of them positive at most)
SIZES = ("tiny", "small", "base")
KINDS = {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN}
# The COCO protocol's test scale (shorter side 800, longer at most 1333): where `convnext info` counts FLOPs.
TEST_MIN_SIZE, TEST_MAX_SIZE = 800, 1333
BODY = "backbone.body."  # the ConvNeXt trunk's parameters in a detector


class ConvNeXtFPN(nn.Module):
    """ConvNeXt features at strides 4/8/16/32 through an FPN, plus a max-pooled level at stride 64: the
    ``OrderedDict`` of maps torchvision's RPN and RoI heads take, all ``out_channels`` wide."""

    def __init__(self, body: ConvNeXtFeatures, out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.feature_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x.contiguous(memory_format=torch.channels_last))
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class _DetectorMixin:
    """What our detectors add to torchvision's: the layer-decay map and the backbone's official keys."""

    in_chans = 3
    stride = 32

    def train(self, mode: bool = True):
        """Also switch the input size: one of the training sizes per image, or the test size."""
        super().train(mode)
        self.transform.min_size = self.train_sizes if mode else (self.test_size,)
        return self

    def layer_decay_ids(self, num_layers: int | None = None) -> tuple[dict[str, int], int]:
        """The official layer-wise map (mmdet's ``decay_type='layer_wise'``): the classifier's
        (`convnext.models.layer_decay.hierarchical_ids`) over ``backbone.body`` (stage 3 and its downsampling
        ``N``: 6 for tiny, 12 for small and base), and ``N + 1``, the full lr, for everything else (the
        per-stage norms, FPN, RPN, heads); ``num_layers`` is ignored (the configs' value is that ``N``)."""
        names = [name for name, _ in self.named_parameters()]
        inner = [name.removeprefix(BODY) for name in names if name.startswith(BODY)]
        body, top = hierarchical_ids(inner, self.backbone.body.depths)
        return {name: body[name.removeprefix(BODY)] if name.startswith(BODY) else top for name in names}, top

    def load_weights(self, checkpoint: str | os.PathLike, key: str | None = None) -> str:
        """Weights from ``checkpoint``: a whole detector (a `convnext detect train` checkpoint, or a released
        mmdetection file of the official code, `convnext.weights.detection`) loads strictly;
        anything else is taken for a classifier and initialises the backbone (`init_backbone`). Returns, and
        keeps in ``init_note``, a line saying which."""
        state = read_checkpoint_file(Path(checkpoint))
        weights = state.get("model", state.get("state_dict", state))  # ours, or mmdet's ("state_dict")
        mmdet = isinstance(weights, Mapping) and is_mmdet_detector(weights)
        if mmdet:
            weights = convert_mmdet_cascade(weights)
        if mmdet or isinstance(weights, Mapping) and any(str(k).startswith("roi_heads.") for k in weights):
            require_finite(weights, checkpoint)
            try:
                missing, unexpected = self.load_state_dict(weights, strict=False)
            except RuntimeError as err:  # a tensor of another shape
                raise UserError(f"{checkpoint} holds another detector: {first_line(err)}") from None
            if missing or unexpected:
                raise UserError(f"{checkpoint} holds another detector: missing {sorted(missing)[:4]}, "
                                f"unexpected {sorted(unexpected)[:4]}")
            self.init_note = f"detector weights from {checkpoint}"
        else:
            self.init_note = init_backbone(self, checkpoint, key)
        return self.init_note

    def complexity(self) -> dict:
        """What `convnext info` prints for a detector: parameters, and GMACs at the paper's 1280 x 800 (see
        `detector_macs`); a model built on the meta device is rebuilt on the CPU for the count."""
        model = self.build_again() if next(self.parameters()).is_meta else self
        return dict(params=sum(p.numel() for p in self.parameters()), gmacs=detector_macs(model) / 1e9,
                    res="1280x800")

    def build_again(self) -> nn.Module:
        """The same architecture, with fresh weights on the CPU."""
        return build_detector(*self.build_args[:2], **self.build_args[2])

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone under the official detection code's names (``backbone.downsample_layers...``,
        ``backbone.norm0``...): what mmdet / detectron2 ports of the official ConvNeXt backbone load."""
        return {f"backbone.{k}": v for k, v in self.backbone.body.state_dict().items()}


class ConvNeXtMaskRCNN(_DetectorMixin, MaskRCNN):
    """torchvision's Mask R-CNN on a ConvNeXt + FPN backbone."""


class ConvNeXtFasterRCNN(_DetectorMixin, FasterRCNN):
    """torchvision's Faster R-CNN (boxes only) on a ConvNeXt + FPN backbone."""


def build_detector(kind: str, size: str = "tiny", *, num_classes: int = 91, drop_path_rate: float = 0.0,
                   min_size: int | tuple[int, ...] = TEST_MIN_SIZE, max_size: int = TEST_MAX_SIZE,
                   test_size: int = TEST_MIN_SIZE, rois_per_image: int = ROIS_PER_IMAGE,
                   proposals: int = RPN_TRAIN_PROPOSALS,
                   layer_scale_init_value: float | None = 1e-6, fpn_channels: int = FPN_CHANNELS,
                   head_width: int = BOX_HEAD_WIDTH, **backbone_args) -> nn.Module:
    """A ``kind`` ("maskrcnn" or "fasterrcnn") detector on ConvNeXt-``size`` for ``num_classes`` classes
    counting the background (COCO's 80 categories keep their ids up to 90: 91).

    ``min_size`` (the shorter side in training) may be a tuple: training then picks one per image
    (multi-scale); evaluation uses ``test_size``; the longer side stays within ``max_size``.
    ``backbone_args`` (``depths``, ``dims``) change the backbone, and ``fpn_channels`` / ``head_width`` the FPN
    and the box head, e.g. to a small detector for tests and the demo; ``rois_per_image`` (RoIs sampled per
    image for the box and mask heads) and ``proposals`` (kept by the RPN per training image) trade the
    official values for speed.
    """
    if kind not in KINDS:
        raise UserError(f"unknown detector {kind!r}; choose from {', '.join(KINDS)}")
    if num_classes < 2:
        raise UserError(f"num_classes counts the background: at least 2, got {num_classes}")
    arch = {**MODEL_ARCHS[f"convnext_{size}"][1], **backbone_args}
    body = ConvNeXtFeatures(**arch, drop_path_rate=drop_path_rate, layer_scale_init_value=layer_scale_init_value)
    cls = ConvNeXtMaskRCNN if kind == "maskrcnn" else ConvNeXtFasterRCNN
    sizes = tuple(min_size) if isinstance(min_size, list | tuple) else (int(min_size),)
    heads = dict(box_head=TwoMLPHead(fpn_channels * 7 * 7, head_width),
                 box_predictor=FastRCNNPredictor(head_width, num_classes))
    if kind == "maskrcnn":
        heads.update(mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
                     mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes))
    model = cls(ConvNeXtFPN(body, fpn_channels), min_size=sizes, max_size=max_size,
                image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                rpn_post_nms_top_n_train=proposals, box_batch_size_per_image=rois_per_image, **heads)
    model.num_classes, model.train_sizes, model.test_size = num_classes, sizes, test_size
    model.train(model.training)
    model.build_args = (kind, size, dict(num_classes=num_classes, min_size=sizes, max_size=max_size,
                                         test_size=test_size, rois_per_image=rois_per_image, proposals=proposals,
                                         fpn_channels=fpn_channels, head_width=head_width, **backbone_args))
    return model


def init_backbone(model: nn.Module, checkpoint: str | os.PathLike, key: str | None = None) -> str:
    """Load a classification checkpoint of any layout ``load_checkpoint`` reads into the detector's backbone
    (its ``norm``/``head`` are left out; ``norm0..norm3`` start fresh unless the file has them); returns a
    line saying what was loaded. The official detection code starts from the non-EMA ImageNet weights, so
    ``key`` is None (the file's ``model`` entry) unless asked, e.g. ``"model_ema"``."""
    load_checkpoint(model.backbone.body, checkpoint, key=key)
    which = f"its {key!r} entry" if key else "its 'model' weights (non-EMA, as the official detection code)"
    return f"backbone initialised from {checkpoint}: {which}"


def _register() -> None:
    from .convnext import register_model

    for kind in KINDS:
        for size in SIZES:
            def build(*, features_only: bool = False, _kind=kind, _size=size, **kwargs) -> nn.Module:
                if features_only:
                    raise UserError(f"{_kind}_convnext_{_size} is a detector; features_only needs a classifier "
                                    f"name (convnext_{_size})")
                kwargs.pop("head_init_scale", None)
                return build_detector(_kind, _size, **kwargs)

            register_model(f"{kind}_convnext_{size}", build)


_register()  # importing this module registers the detectors (`convnext.models.convnext` lists them before)


@torch.no_grad()
def detector_macs(model: nn.Module, height: int = 800, width: int = 1280) -> int:
    """Multiply-accumulates of one test-time forward pass on a ``width`` x ``height`` image (the paper's
    "FLOPs" at 1280 x 800), counted by ``torch.utils.flop_counter``.

    As mmdet's counter, the box head runs on the RPN's 1000 proposals and the mask head on 100 boxes: the
    score threshold and NMS are relaxed for the count, so random weights count the same as trained ones."""
    from torch.utils.flop_counter import FlopCounterMode

    heads = model.roi_heads
    saved = heads.score_thresh, heads.nms_thresh, heads.detections_per_img
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = -1.0, 1.0, 100
    was_training = model.training
    model.eval()
    try:
        image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as counter:
            model([image.to(next(model.parameters()).device)])
    finally:
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = saved
        model.train(was_training)
    return counter.get_total_flops() // 2
