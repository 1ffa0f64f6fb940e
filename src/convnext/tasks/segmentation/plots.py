"""Figures of a segmentation run: its curves, and predictions next to the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...plots import plot_panels


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (``(K, 3)`` uint8), spread over hues so that neighbours differ."""
    rng = np.random.default_rng(3)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3))
    return colours.astype(np.uint8)


def plot_segmentation_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation mIoU / mAcc / aAcc against the iteration, as a PNG."""
    plot_panels(history, "iter", "iteration", [
        ("training loss (main + 0.4 x auxiliary)", "loss", [("train_loss", "train")]),
        ("validation (sliding window, single scale)", "%", [("val_miou", "mIoU"), ("val_macc", "mAcc"),
                                                           ("val_aacc", "aAcc")])], path, best="val_miou")
