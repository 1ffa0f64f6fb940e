"""Scoring a segmentation model on a labelled folder: single-scale sliding window or multi-scale + flip, the
official ADE20K evaluation, with mIoU, mAcc, aAcc and per-class IoU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ...progress import progress as progress_display
from ...weights import IMAGENET_MEAN, IMAGENET_STD
from .data import SegmentationSource, Unreadable, read_pair
from .inference import MS_RATIOS, segment
from .metrics import ConfusionMatrix


@dataclass
class EvalSettings:
    """How images are shown to the model: the official test pipeline, scaled for small data by the caller."""

    scale: tuple[int, int] = (2048, 512)
    crop: int = 512
    stride: int = 341
    mode: str = "slide"  # or "whole"
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD


def to_input(image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A PIL image as the normalised float tensor the models take."""
    return TF.normalize(TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True), list(mean), list(std))


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, source: SegmentationSource, num_classes: int, *,
                          settings: EvalSettings | None = None, multi_scale: bool = False,
                          device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                          progress: bool | None = None) -> dict:
    """mIoU, mAcc, aAcc (percent), per-class IoU and accuracy, and the files skipped as unreadable.

    ``multi_scale`` evaluates at ratios 0.5-1.75 with flips (the paper's "MS" column). Under torchrun each
    process scores every ``world_size``-th image and the confusion matrices are summed. A mask of another
    size than its image, or with labels outside the classes, stops with one line naming the file."""
    settings = settings or EvalSettings()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    matrix, skipped = ConfusionMatrix(num_classes), []
    indices = range(rank, len(source), world_size)
    show = True if progress is None else progress
    try:
        for index in progress_display(indices, desc="evaluate", unit="img", show=bool(show) and rank == 0):
            try:
                image, labels = read_pair(source, index, num_classes)
            except Unreadable as err:
                skipped.append(str(err))
                continue
            probs = segment(model, to_input(image, settings.mean, settings.std).to(device),
                            num_classes=num_classes, scale=settings.scale, crop=settings.crop,
                            stride=settings.stride, ratios=MS_RATIOS if multi_scale else (1.0,), flip=multi_scale,
                            mode=settings.mode)
            matrix.update(probs.argmax(0), torch.from_numpy(labels))
    finally:
        model.train(was_training)
    if world_size > 1:
        total = matrix.matrix.to(device)
        dist.all_reduce(total)
        matrix.matrix = total.cpu()
    return dict(matrix.scores(), skipped=skipped, images=len(source), multi_scale=multi_scale)
