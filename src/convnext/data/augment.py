"""The paper's training augmentation, taken from timm as the official code takes it.

Per image, in DataLoader workers: random-resized crop, flip, RandAugment (``rand-m9-mstd0.5-inc1``: two
operations and a magnitude drawn for every image), normalisation and random erasing filled with per-pixel
normal noise. Per batch, in the training loop: Mixup or CutMix, which turn labels into soft targets with label
smoothing folded in (the loss is cross-entropy against those targets).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.mixup import Mixup, mixup_target
from torch.utils.data import get_worker_info


def randaugment_spec(n: int, m: int, mstd: float) -> str | None:
    """timm's RandAugment config string (``rand-m9-n2-mstd0.5-inc1``), or None when it is off."""
    if n <= 0 or m <= 0:
        return None
    return f"rand-m{m}-n{n}-mstd{mstd:g}-inc1"


def train_transform(
    res: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    interpolation: str = "bicubic",
    randaug_n: int = 2,
    randaug_m: int = 9,
    randaug_mstd: float = 0.5,
    color_jitter: float = 0.4,
    reprob: float = 0.25,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised float CHW tensor, drawn afresh on every call.

    Colour jitter applies only where RandAugment is off (timm's rule, which the official recipe inherits).
    """
    return create_transform(
        res, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
        color_jitter=color_jitter or None, auto_augment=randaugment_spec(randaug_n, randaug_m, randaug_mstd),
        interpolation=interpolation, mean=tuple(mean), std=tuple(std), re_prob=reprob, re_mode="pixel",
        re_count=1)


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets, smoothed: ``1 - s + s / K`` on the label and ``s / K`` elsewhere (s = smoothing)."""
    return mixup_target(labels.long(), num_classes, smoothing=smoothing)


class BatchMix:
    """Mixup or CutMix on a normalised batch, returning ``(images, soft targets)``.

    timm's ``Mixup`` in batch mode, as the official recipe uses it: one lambda per batch, each image paired
    with its mirror in the batch (so the batch size must be even), CutMix on a ``switch_prob`` share of
    mixed batches. With both off, only label smoothing remains.
    """

    def __init__(self, num_classes: int, *, mixup: float = 0.8, cutmix: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1):
        self.num_classes, self.smoothing = num_classes, smoothing
        self.mix = None
        if (mixup > 0 or cutmix > 0) and prob > 0:
            self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob,
                             mode="batch", label_smoothing=smoothing, num_classes=num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is None:
            return images, soft_targets(labels, self.num_classes, self.smoothing)
        return self.mix(images, labels)


@contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Run a block with Python's, NumPy's and torch's CPU generators seeded from ``key``.

    timm's transforms draw from all three global generators; seeding them per image from ``(seed, epoch,
    index)`` makes an image's augmentation independent of which worker or rank makes it. In the main process
    (``workers=0``) the generators are put back afterwards, so the run's own draws (Mixup, drop path) do not
    depend on how many workers load the data; a worker process draws from them for nothing else.
    """
    digest = hashlib.blake2b(",".join(map(str, key)).encode(), digest_size=4).digest()
    seed = int.from_bytes(digest, "little")
    cpu = torch.default_generator  # not torch.manual_seed, which also queues seeds for every accelerator
    main = get_worker_info() is None
    if main:
        saved = random.getstate(), np.random.get_state(), cpu.get_state()
    random.seed(seed)
    np.random.seed(seed)
    cpu.manual_seed(seed)
    try:
        yield
    finally:
        if main:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            cpu.set_state(saved[2])
