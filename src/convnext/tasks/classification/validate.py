"""Validation after each epoch: the model and, when kept, its EMA, scored on the whole validation set."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from .evaluate import evaluate


def validate(model: nn.Module, ema_model: nn.Module | None, loader: DataLoader | None, num_classes: int, *,
             device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool) -> dict:
    """The validation entries of an epoch's row: top-1, top-5 and loss of the model, top-1 of the EMA, and how
    many validation images could not be read (all None without a validation set)."""
    row = dict(val_top1=None, val_top5=None, val_loss=None, ema_top1=None, val_skipped=None)
    if loader is None:
        return row
    metrics = evaluate(model, loader, num_classes, device=device, autocast_dtype=amp_dtype,
                       channels_last=channels_last)
    row.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"],
               val_skipped=metrics["skipped"])
    if ema_model is not None:
        row["ema_top1"] = evaluate(ema_model, loader, num_classes, device=device, autocast_dtype=amp_dtype,
                                   channels_last=channels_last)["top1"]
    return row
