"""Cascade Mask R-CNN with a ConvNeXt backbone: the system of the paper's main COCO rows (Table 3).

It follows the official ``cascade_mask_rcnn_convnext_*_giou_4conv1f`` configs (mmdet's ``CascadeRoIHead``):
the backbone, FPN and RPN of our Mask R-CNN, then three RoI stages trained at IoU thresholds 0.5, 0.6 and 0.7,
each refining the boxes of the one before. A stage is torchvision's `RoIHeads` (its matcher, sampler and box
coder, with the stage's threshold and regression scale) holding a 4-conv (BatchNorm) + 1-fc box head
(torchvision's ``FastRCNNConvFCHead``), class-specific box regression, and its own mask head. What is ours is
the cascade around them: the GIoU loss on decoded boxes, the stage weights, the refinement between stages, and
at test time the averaging of the three stages' class scores and mask probabilities.

The class-specific outputs follow mmdet's shapes (box deltas and mask logits for the foreground classes only),
so the released checkpoints load tensor for tensor (`convnext.weights.detection`); the classifier keeps
torchvision's order, the background first.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, clip_boxes_to_image, generalized_box_iou_loss

from ..errors import UserError
from ..weights import IMAGENET_MEAN, IMAGENET_STD
from .convnext import MODEL_ARCHS, ConvNeXtFeatures
from .mask_rcnn import (
    BOX_HEAD_WIDTH,
    FPN_CHANNELS,
    ROIS_PER_IMAGE,
    TEST_MAX_SIZE,
    TEST_MIN_SIZE,
    ConvNeXtFPN,
    _DetectorMixin,
)

SIZES = ("tiny", "small", "base", "large", "xlarge")
IOU_THRESHOLDS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
# the stages' box-delta scales (mmdet's target_stds); torchvision's BoxCoder takes their inverses as weights
BOX_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
GIOU_WEIGHT = 10.0
# the cascade configs' RPN keeps 2000 proposals per training image (Mask R-CNN's: 1000), 1000 at test
RPN_TRAIN_PROPOSALS, RPN_TEST_PROPOSALS = 2000, 1000
HEAD_CONVS = 4


class CascadePredictor(nn.Module):
    """Class scores (background first) and class-specific box deltas for the foreground classes only."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, (num_classes - 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def _stage(index: int, num_classes: int, channels: int, head_width: int, rois_per_image: int) -> RoIHeads:
    """One cascade stage as torchvision's RoIHeads: its IoU threshold (positive at or above, negative below,
    as mmdet's ``MaxIoUAssigner`` without low-quality matches), 25% positives among the sampled RoIs, and its
    box coder."""
    threshold = IOU_THRESHOLDS[index]
    box_head = FastRCNNConvFCHead((channels, 7, 7), [channels] * HEAD_CONVS, [head_width], norm_layer=nn.BatchNorm2d)
    return RoIHeads(
        _roi_pool(7), box_head, CascadePredictor(head_width, num_classes),
        fg_iou_thresh=threshold, bg_iou_thresh=threshold, batch_size_per_image=rois_per_image,
        positive_fraction=0.25, bbox_reg_weights=tuple(1 / s for s in BOX_STDS[index]),
        score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
        mask_roi_pool=_roi_pool(14), mask_head=MaskRCNNHeads(channels, (channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes - 1))


def _roi_pool(size: int) -> MultiScaleRoIAlign:
    # sampling_ratio 0: adaptive, as mmcv's RoIAlign in the official configs
    return MultiScaleRoIAlign(["0", "1", "2", "3"], size, sampling_ratio=0)


class CascadeRoIHeads(nn.Module):
    """Three RoI stages, each trained on the boxes the previous one refined (mmdet's ``CascadeRoIHead``).

    Training returns each stage's classification, GIoU and mask losses, scaled by its stage weight; testing
    returns torchvision's detections (boxes, labels, scores, 28 x 28 mask probabilities) from the mean class
    logits of all stages on the boxes of the last, with the mean of all stages' mask probabilities."""

    def __init__(self, stages: list[RoIHeads]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    # the test-time filters are the last stage's (torchvision's names, which `detector_macs` relaxes)
    score_thresh = property(lambda self: self.stages[-1].score_thresh,
                            lambda self, v: setattr(self.stages[-1], "score_thresh", v))
    nms_thresh = property(lambda self: self.stages[-1].nms_thresh,
                          lambda self, v: setattr(self.stages[-1], "nms_thresh", v))
    detections_per_img = property(lambda self: self.stages[-1].detections_per_img,
                                  lambda self, v: setattr(self.stages[-1], "detections_per_img", v))

    def has_mask(self) -> bool:
        """torchvision's question to RoI heads (every stage has a mask head)."""
        return True

    def forward(self, features: OrderedDict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[dict] | None = None
                ) -> tuple[list[dict], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    @staticmethod
    def _predict(stage: RoIHeads, features, rois: list[torch.Tensor], image_shapes) -> tuple[torch.Tensor, ...]:
        return stage.box_predictor(stage.box_head(stage.box_roi_pool(features, rois, image_shapes)))

    @staticmethod
    def _decode(stage: RoIHeads, deltas: torch.Tensor, labels: torch.Tensor, rois: list[torch.Tensor],
                image_shapes) -> list[torch.Tensor]:
        """Each RoI moved by the deltas of its class (``labels`` >= 1), clipped to its image."""
        picked = deltas.view(len(deltas), deltas.shape[1] // 4, 4)[torch.arange(len(deltas), device=deltas.device),
                                                                  labels - 1]
        boxes = stage.box_coder.decode_single(picked, torch.cat(rois)).split([len(r) for r in rois])
        return [clip_boxes_to_image(b, shape) for b, shape in zip(boxes, image_shapes, strict=True)]

    def _losses(self, features, proposals, image_shapes, targets) -> dict[str, torch.Tensor]:
        losses = {}
        for i, (stage, weight) in enumerate(zip(self.stages, STAGE_LOSS_WEIGHTS, strict=True)):
            rois, is_gt, matched, labels = _sample(stage, proposals, targets)
            logits, deltas = self._predict(stage, features, rois, image_shapes)
            flat = torch.cat(labels)
            # positives regress towards their own class; the rest are refined with their best foreground class
            refine_as = torch.where(flat > 0, flat, logits[:, 1:].detach().argmax(1) + 1)
            boxes = self._decode(stage, deltas, refine_as, rois, image_shapes)
            gt = torch.cat([t["boxes"][m] if len(t["boxes"]) else b for t, m, b in zip(targets, matched, boxes,
                                                                                       strict=True)])
            positive = flat > 0
            box_loss = generalized_box_iou_loss(torch.cat(boxes)[positive], gt[positive], reduction="sum")
            mask_rois = [r[lab > 0] for r, lab in zip(rois, labels, strict=True)]
            mask_logits = stage.mask_predictor(stage.mask_head(stage.mask_roi_pool(features, mask_rois,
                                                                                    image_shapes)))
            mask_loss = maskrcnn_loss(mask_logits, mask_rois, [t["masks"] for t in targets],
                                      [t["labels"] - 1 for t in targets],
                                      [m[lab > 0] for m, lab in zip(matched, labels, strict=True)])
            losses[f"loss_classifier_{i + 1}"] = weight * F.cross_entropy(logits, flat)
            losses[f"loss_box_giou_{i + 1}"] = weight * GIOU_WEIGHT * box_loss / max(len(flat), 1)
            losses[f"loss_mask_{i + 1}"] = weight * mask_loss
            # the next stage starts from these boxes, without the ground truth added as proposals
            proposals = [b[~g].detach() for b, g in zip(boxes, is_gt, strict=True)]
        return losses

    def _detect(self, features, proposals, image_shapes) -> list[dict]:
        rois, scores = proposals, []
        for i, stage in enumerate(self.stages):
            logits, deltas = self._predict(stage, features, rois, image_shapes)
            scores.append(logits)
            if i < len(self.stages) - 1:
                rois = self._decode(stage, deltas, logits[:, 1:].argmax(1) + 1, rois, image_shapes)
        last = self.stages[-1]
        # torchvision's post-processing decodes every class's deltas: the background's are zeros
        deltas = torch.cat([deltas.new_zeros(len(deltas), 4), deltas], dim=1)
        boxes, scores, labels = last.postprocess_detections(torch.stack(scores).mean(0), deltas, rois, image_shapes)
        per_stage = [maskrcnn_inference(stage.mask_predictor(stage.mask_head(stage.mask_roi_pool(
            features, boxes, image_shapes))), [lab - 1 for lab in labels]) for stage in self.stages]
        masks = [torch.stack(probs).mean(0) for probs in zip(*per_stage, strict=True)]
        return [dict(boxes=b, labels=lab, scores=s, masks=m)
                for b, lab, s, m in zip(boxes, labels, scores, masks, strict=True)]


def _sample(stage: RoIHeads, proposals: list[torch.Tensor], targets: list[dict]):
    """torchvision's training sample of one stage (ground truth added as proposals, matched at the stage's IoU,
    512 RoIs a quarter positive), also telling which RoIs are ground-truth boxes: the cascade drops those
    before refining (as mmdet does)."""
    gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
    is_gt = [torch.cat([p.new_zeros(len(p), dtype=torch.bool), p.new_ones(len(g), dtype=torch.bool)])
             for p, g in zip(proposals, gt_boxes, strict=True)]
    rois = stage.add_gt_proposals(proposals, gt_boxes)
    matched, labels = stage.assign_targets_to_proposals(rois, gt_boxes, [t["labels"] for t in targets])
    keep = stage.subsample(labels)
    return ([r[k] for r, k in zip(rois, keep, strict=True)], [g[k] for g, k in zip(is_gt, keep, strict=True)],
            [m[k] for m, k in zip(matched, keep, strict=True)], [lab[k] for lab, k in zip(labels, keep, strict=True)])


class ConvNeXtCascadeMaskRCNN(_DetectorMixin, GeneralizedRCNN):
    """Cascade Mask R-CNN on a ConvNeXt + FPN backbone: torchvision's transform and RPN, our cascade heads."""

    def build_again(self) -> nn.Module:
        return build_cascade(self.build_args[1], **self.build_args[2])


def build_cascade(size: str = "tiny", *, num_classes: int = 91, drop_path_rate: float = 0.0,
                  min_size: int | tuple[int, ...] = TEST_MIN_SIZE, max_size: int = TEST_MAX_SIZE,
                  test_size: int = TEST_MIN_SIZE, rois_per_image: int = ROIS_PER_IMAGE,
                  proposals: int = RPN_TRAIN_PROPOSALS, layer_scale_init_value: float | None = 1.0,
                  fpn_channels: int = FPN_CHANNELS, head_width: int = BOX_HEAD_WIDTH,
                  **backbone_args) -> nn.Module:
    """Cascade Mask R-CNN on ConvNeXt-``size`` for ``num_classes`` classes counting the background; the
    arguments are `convnext.models.mask_rcnn.build_detector`'s (the official cascade configs start the layer
    scales at 1.0, which pretrained backbone weights replace)."""
    if num_classes < 2:
        raise UserError(f"num_classes counts the background: at least 2, got {num_classes}")
    arch = {**MODEL_ARCHS[f"convnext_{size}"][1], **backbone_args}
    body = ConvNeXtFeatures(**arch, drop_path_rate=drop_path_rate, layer_scale_init_value=layer_scale_init_value)
    backbone = ConvNeXtFPN(body, fpn_channels)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    rpn = RegionProposalNetwork(
        anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]), fg_iou_thresh=0.7,
        bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n=dict(training=2000, testing=1000),
        post_nms_top_n=dict(training=proposals, testing=RPN_TEST_PROPOSALS), nms_thresh=0.7)
    heads = CascadeRoIHeads([_stage(i, num_classes, fpn_channels, head_width, rois_per_image) for i in range(3)])
    sizes = tuple(min_size) if isinstance(min_size, list | tuple) else (int(min_size),)
    transform = GeneralizedRCNNTransform(sizes, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))
    model = ConvNeXtCascadeMaskRCNN(backbone, rpn, heads, transform)
    model.num_classes, model.train_sizes, model.test_size = num_classes, sizes, test_size
    model.train(model.training)
    model.build_args = ("cascade", size, dict(num_classes=num_classes, min_size=sizes, max_size=max_size,
                                              test_size=test_size, rois_per_image=rois_per_image,
                                              proposals=proposals, fpn_channels=fpn_channels,
                                              head_width=head_width, **backbone_args))
    return model


def _register() -> None:
    from .convnext import register_model

    for size in SIZES:
        def build(*, features_only: bool = False, _size=size, **kwargs) -> nn.Module:
            if features_only:
                raise UserError(f"cascade_mask_rcnn_convnext_{_size} is a detector; features_only needs a "
                                f"classifier name (convnext_{_size})")
            kwargs.pop("head_init_scale", None)
            return build_cascade(_size, **kwargs)

        register_model(f"cascade_mask_rcnn_convnext_{size}", build)


_register()  # importing this module registers the detectors (`convnext.models.convnext` lists them before)
