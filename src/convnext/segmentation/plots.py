"""Figures of a segmentation run: its curves, and predictions next to the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import _pyplot


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (``(K, 3)`` uint8), spread over hues so that neighbours differ."""
    rng = np.random.default_rng(3)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3))
    return colours.astype(np.uint8)


def plot_segmentation_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation mIoU / mAcc / aAcc against the iteration, as a PNG."""
    plt = _pyplot()
    iters = [row["iter"] for row in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(iters, [row["train_loss"] for row in history], marker="o", label="train")
    for key, label in (("val_miou", "mIoU"), ("val_macc", "mAcc"), ("val_aacc", "aAcc")):
        if any(row.get(key) is not None for row in history):
            score_ax.plot(iters, [row.get(key) for row in history], marker="o", label=label)
    loss_ax.set(xlabel="iteration", ylabel="loss", title="training loss (main + 0.4 x auxiliary)")
    score_ax.set(xlabel="iteration", ylabel="%", title="validation (sliding window, single scale)")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
