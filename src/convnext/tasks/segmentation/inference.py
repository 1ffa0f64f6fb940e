"""Inference as the paper evaluates: the image resized so it fits 2048x512 (aspect kept), logits from
overlapping windows (crop 512, stride 341) averaged where they overlap, brought back to the image's own size;
multi-scale adds the ratios 0.5-1.75 and horizontal flips, summing the softmax of every view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import rescaled_size

MIN_SIDE = 32
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def slide_logits(model: nn.Module, image: torch.Tensor, crop: int, stride: int, num_classes: int) -> torch.Tensor:
    """Logits ``(1, K, H, W)`` of one normalised ``(1, 3, H, W)`` image from windows of ``crop`` every
    ``stride`` pixels (the last window of a row or column flush with the edge)."""
    _, _, height, width = image.shape
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    total = image.new_zeros(1, num_classes, height, width)
    count = image.new_zeros(1, 1, height, width)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            total[:, :, y1:y2, x1:x2] += model(image[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def _view_logits(model: nn.Module, image: torch.Tensor, size: tuple[int, int], flip: bool, mode: str,
                 crop: int, stride: int, num_classes: int) -> torch.Tensor:
    size = (max(size[0], MIN_SIDE), max(size[1], MIN_SIDE))  # a view the backbone's 32x downsampling can take
    x = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    if flip:
        x = x.flip(-1)
    logits = slide_logits(model, x, crop, stride, num_classes) if mode == "slide" else model(x).float()
    return logits.flip(-1) if flip else logits


@torch.no_grad()
def segment(model: nn.Module, image: torch.Tensor, *, num_classes: int, scale: tuple[int, int] = (2048, 512),
            crop: int = 512, stride: int = 341, ratios: Sequence[float] = (1.0,), flip: bool = False,
            mode: str = "slide") -> torch.Tensor:
    """Class probabilities ``(K, H, W)`` of one normalised ``(3, H, W)`` image at its own size.

    Each ratio r resizes the image to fit ``scale`` times r; ``flip`` adds the mirrored view of each. ``mode``
    is ``"slide"`` (windows of ``crop``) or ``"whole"`` (the resized image in one pass)."""
    image = image[None]
    height, width = image.shape[2:]
    probs = image.new_zeros(1, num_classes, height, width)
    for ratio in ratios:
        size = rescaled_size(height, width, scale, ratio)
        for flipped in ((False, True) if flip else (False,)):
            logits = _view_logits(model, image, size, flipped, mode, crop, stride, num_classes)
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs += logits.softmax(1)
    return probs[0] / (len(ratios) * (2 if flip else 1))
