"""A classification run's data: its image sources, and the figure of what its augmentation does to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data.augment import BatchMix, seeded
from ...data.images import Digits, TrainImages, image_folders
from ...errors import UserError
from ...files import atomic_write
from ...plots import plot_augmented
from .config import TrainConfig


def train_sources(config: TrainConfig):
    """The training and validation sources: the built-in digits, or the user's image folders."""
    if config.data is None:
        if config.val_data is not None:
            raise UserError("--val-data needs --data")
        return Digits("train"), Digits("val")
    train_src, val_src = image_folders(config.data, config.val_data)
    if len(train_src.classes) < 2:
        raise UserError(f"{config.data} holds one class ({train_src.classes[0]}): a classifier needs at least "
                        "two class folders")
    return train_src, val_src


_SAMPLE_EPOCH = 2**31  # the seed key of augment.png: an epoch no run reaches


def save_augmented_sample(train_set: TrainImages, mix: BatchMix, classes: list[str], config: TrainConfig,
                          path: Path, count: int = 16) -> None:
    """``augment.png``: images spread over the training set, augmented as epoch 1 shows them, then mixed.

    Drawn under its own seed, so writing it changes nothing in the run."""
    count = min(count, len(train_set)) // 2 * 2
    picks = np.linspace(0, len(train_set) - 1, count).round().astype(int).tolist()
    with seeded(config.seed, _SAMPLE_EPOCH):
        images, labels, _ = zip(*(train_set[(i, 0)] for i in picks), strict=True)
        x, targets = mix(torch.stack(images), torch.tensor(labels))
    atomic_write(path, lambda tmp: plot_augmented(x, targets, classes, config.mean, config.std, tmp))
