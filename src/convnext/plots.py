"""What a run leaves for people to look at: training curves and a grid of what the model is shown."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .files import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` (format from its suffix) atomically, then close it: a full disk or a killed
    process leaves the old picture or none, never half a file or a temporary one."""
    try:
        check_figure_name(path)
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:].lower()))
    finally:
        if hasattr(fig, "number"):  # made by pyplot: pyplot keeps it until closed
            pyplot().close(fig)


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_name(path: str | os.PathLike) -> None:
    """One line for a picture name whose suffix names no format we write (checked before work that ends in it)."""
    if Path(path).suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"cannot draw {path}: name a .png, .pdf or .svg file")


Panel = tuple[str, str, Sequence[tuple[str, str]]]  # title, y label, (history key, legend label) pairs


def plot_panels(history: list[dict], x_key: str, x_label: str, panels: Sequence[Panel], path: Path, *,
                best: str | None = None) -> None:
    """One line per history key that has values, in side-by-side panels, and the learning rate in a last
    panel when the rows carry it, as a PNG: every task's curves. ``best`` (a history key) marks the row where
    it peaked: a dotted line across every panel and a star on its own curve."""
    plt = pyplot()
    xs = [row[x_key] for row in history]
    panels = list(panels)
    if any(row.get("lr") is not None for row in history):
        panels.append(("learning rate (end of each period)", "lr", [("lr", "lr")]))
    scored = [(row[best], row[x_key]) for row in history if best and row.get(best) is not None]
    best_x = max(scored)[1] if scored else None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, y_label, series) in zip(np.atleast_1d(axes), panels, strict=True):
        for key, label in series:
            if any(row.get(key) is not None for row in history):
                ax.plot(xs, [row.get(key) for row in history], marker="o", label=label)
            if key == best and best_x is not None:
                ax.plot([best_x], [max(scored)[0]], marker="*", markersize=14, color="gold", markeredgecolor="k",
                        linestyle="", label=f"best ({x_label} {best_x})")
        if best_x is not None:
            ax.axvline(best_x, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel=x_label, ylabel=y_label, title=title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_curves(history: list[dict], path: Path, num_classes: int | None = None) -> None:
    """Loss (train, validation), accuracy (top-1, top-5 where there are more than 5 classes, EMA top-1) and
    the learning rate per epoch, the best top-1 marked, as a PNG."""
    accuracy = [("val_top1", "top-1")] + ([("val_top5", "top-5")] if num_classes is None or num_classes > 5 else [])
    plot_panels(history, "epoch", "epoch", [
        ("loss", "loss", [("train_loss", "train"), ("val_loss", "validation")]),
        ("validation accuracy", "accuracy (%)", [*accuracy, ("ema_top1", "EMA top-1")])], path, best="val_top1")


def soft_label_text(target: torch.Tensor, classes: Sequence[str], floor: float = 0.05) -> str:
    """``"cat 0.62 + rocket 0.33"``: the classes a soft target gives more than ``floor``, largest first."""
    weights, order = target.float().sort(descending=True)
    parts = [f"{classes[i]} {w:.2f}" for w, i in zip(weights.tolist(), order.tolist(), strict=True) if w > floor]
    return " + ".join(parts[:3])


def plot_augmented(images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], mean: Sequence[float],
                   std: Sequence[float], path: Path, columns: int = 4) -> None:
    """A grid of normalised training images (after every augmentation and mixing) with their soft labels."""
    plt = pyplot()
    pixels = images.float() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    pixels = pixels.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    rows = int(np.ceil(len(pixels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, target in zip(axes.flat, pixels, targets, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(soft_label_text(target, classes), fontsize=7)
    fig.suptitle("what the model is shown: augmented training images and their (soft) labels", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
