"""Detection checkpoints of the official code (mmdetection names) mapped onto our detectors' names.

The released Cascade Mask R-CNN files (``dl.fbaipublicfiles.com/convnext/coco/cascade_mask_rcnn_convnext_*``)
hold mmdet's module names: ``backbone.*`` (the official ConvNeXt, whose names our ``backbone.body`` keeps),
``neck.*`` (FPN), ``rpn_head.*`` and ``roi_head.{bbox_head,mask_head}.{0,1,2}.*``. Ours are torchvision's
(``backbone.fpn``, ``rpn.head``, ``roi_heads.stages.{i}``). Every tensor keeps its shape and values but one: mmdet
puts the background class last in the classifier, torchvision first, so ``fc_cls``'s rows are rotated by one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (mmdet pattern, our replacement), tried in order; the first that matches renames the key
_CASCADE_RULES = [
    (r"^backbone\.", "backbone.body."),
    (r"^neck\.lateral_convs\.(\d)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    # 4 convs (conv + BatchNorm; mmcv names the norm "bn"), then torchvision's Flatten at 4, the fc at 5
    (r"^roi_head\.bbox_head\.(\d)\.shared_convs\.(\d)\.conv\.", r"roi_heads.stages.\1.box_head.\2.0."),
    (r"^roi_head\.bbox_head\.(\d)\.shared_convs\.(\d)\.bn\.", r"roi_heads.stages.\1.box_head.\2.1."),
    (r"^roi_head\.bbox_head\.(\d)\.shared_fcs\.0\.", r"roi_heads.stages.\1.box_head.5."),
    (r"^roi_head\.bbox_head\.(\d)\.fc_cls\.", r"roi_heads.stages.\1.box_predictor.cls_score."),
    (r"^roi_head\.bbox_head\.(\d)\.fc_reg\.", r"roi_heads.stages.\1.box_predictor.bbox_pred."),
    (r"^roi_head\.mask_head\.(\d)\.convs\.(\d)\.conv\.", r"roi_heads.stages.\1.mask_head.\2.0."),
    (r"^roi_head\.mask_head\.(\d)\.upsample\.", r"roi_heads.stages.\1.mask_predictor.conv5_mask."),
    (r"^roi_head\.mask_head\.(\d)\.conv_logits\.", r"roi_heads.stages.\1.mask_predictor.mask_fcn_logits."),
]
_MMDET_PREFIXES = ("neck.", "rpn_head.", "roi_head.")


def is_mmdet_detector(state_dict: Mapping[str, object]) -> bool:
    """Whether a state dict has mmdetection's detector names (a ``neck`` and ``roi_head``)."""
    return any(str(k).startswith(_MMDET_PREFIXES) for k in state_dict)


def _rename(key: str) -> str | None:
    for pattern, replacement in _CASCADE_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def convert_mmdet_cascade(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A mmdet Cascade Mask R-CNN state dict under our names, the classifiers' background row moved first.
    Keys no rule knows are kept as they are, so that a strict load names them."""
    out = {}
    for key, value in state_dict.items():
        ours = _rename(key)
        if ours is None:
            out[key] = value
            continue
        if re.search(r"\.box_predictor\.cls_score\.", ours):
            value = torch.roll(value, shifts=1, dims=0)  # mmdet's [fg..., bg] -> torchvision's [bg, fg...]
        out[ours] = value
    return out
