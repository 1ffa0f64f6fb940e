"""A segmentation run's model and its loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ...models import build_model
from ...weights import download_weights, get_pretrained
from .config import SegConfig
from .data import IGNORE


def segmentation_loss(outputs, targets: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Pixel cross-entropy over labelled pixels (255 ignored), plus ``aux_weight`` times the auxiliary head's;
    a batch with no labelled pixel gives 0, not NaN."""
    logits, aux = outputs
    labelled = (targets != IGNORE).sum().clamp(min=1)
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum") / labelled
    if aux is not None:
        loss = loss + aux_weight * F.cross_entropy(aux.float(), targets, ignore_index=IGNORE,
                                                   reduction="sum") / labelled
    return loss


def build_segmentation_model(config: SegConfig, say: Callable[[str], None] = lambda _: None) -> torch.nn.Module:
    """The run's UperNet, its backbone started from ImageNet weights when ``pretrained`` names them (a tag of
    the backbone's released weights, e.g. ``in1k``, or a checkpoint file)."""
    model = build_model(config.model, num_classes=config.num_classes, drop_path_rate=config.drop_path,
                        **config.model_args)
    if config.pretrained:
        source = Path(config.pretrained)
        if not source.exists():
            source = download_weights(get_pretrained(config.model.replace("upernet_", ""), config.pretrained))
        model.load_weights(source)
        say(f"backbone initialised from {config.pretrained}")
    elif config.recipe != "demo":
        say("note: the backbone starts from random weights (no --pretrained); the paper's recipe fine-tunes "
            "ImageNet weights, e.g. --pretrained in1k_noema")
    return model
