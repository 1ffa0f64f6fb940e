"""ImageNet-C corruptions made on the fly from any clean image, reproducibly.

The corruption functions are those of ImageNet-C (Hendrycks & Dietterich, ICLR 2019) as packaged by
``imagecorruptions`` (the maintained ``imagecorruptions-imaug`` build runs all 19 with NumPy 2). They draw from
NumPy's global random state; we seed it from (seed, corruption, severity, image key) around each call, so the
same image with the same seed always gives the same pixels, whichever worker or run makes it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ...data.images import eval_transform
from ...errors import UserError

# The 15 corruptions of ImageNet-C's benchmark (mCE averages these), by category, in the paper's order.
CATEGORIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
COMMON = tuple(name for names in CATEGORIES.values() for name in names)
# ImageNet-C's four held-out ("validation") corruptions: available, not part of mCE.
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 32  # the corruption functions need images of at least 32 x 32


def check_corruptions(names: list[str] | tuple[str, ...]) -> list[str]:
    """The names as given, or one readable error naming those we do not know."""
    unknown = [name for name in names if name not in COMMON + EXTRA]
    if unknown:
        raise UserError(f"unknown corruption {', '.join(unknown)}; choose from {', '.join(COMMON + EXTRA)}")
    return list(names)


def corruption_seed(seed: int, corruption: str, severity: int, key: str) -> int:
    """A 32-bit seed that depends on every input and on nothing else (not on worker, order or time)."""
    index = (COMMON + EXTRA).index(corruption)
    sequence = np.random.SeedSequence([seed, index, severity, zlib.crc32(key.encode("utf-8"))])
    return int(sequence.generate_state(1)[0])


def corrupt_image(img: Image.Image, corruption: str, severity: int, *, seed: int = 0, key: str = "") -> Image.Image:
    """``img`` with ``corruption`` at ``severity`` (1-5); ``key`` names the image (e.g. its relative path) so
    that each image gets its own noise, the same on every run."""
    from imagecorruptions import corrupt  # imported here: numba and OpenCV load slowly

    check_corruptions([corruption])
    if severity not in SEVERITIES:
        raise UserError(f"severity must be 1 to 5, got {severity}")
    if min(img.size) < MIN_SIZE:
        raise UserError(f"corruptions need images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {img.size}")
    value = corruption_seed(seed, corruption, severity, key)
    kwargs = {"seed": value} if corruption in ("glass_blur", "impulse_noise") else {}
    saved = np.random.get_state()
    np.random.seed(value)
    try:
        pixels = corrupt(np.asarray(img.convert("RGB")), severity, corruption, **kwargs)
    finally:
        np.random.set_state(saved)  # callers' own use of NumPy's global generator is left undisturbed
    return Image.fromarray(pixels)


def geometry(config: dict) -> Callable[[Image.Image], torch.Tensor]:
    """The resize and crop of a model's evaluation preprocessing, as pixels in [0, 1] (the corruptions act on
    them before normalisation): ours (`eval_transform`), or timm's own eval transform for a timm model
    (``pipeline: timm``), so its crop mode and rounding are exactly what timm evaluates with."""
    identity = dict(config, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if config.get("pipeline") != "timm":
        return eval_transform(identity)
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return create_transform(**{key: identity[key] for key in keys if key in identity}, is_training=False)


class CorruptedImages(Dataset):
    """A clean image set seen through a model's evaluation preprocessing, with one corruption applied after
    the resize and crop (as ImageNet-C was made from 224-pixel centre crops), then normalised.

    ``source`` is any set with ``load(i) -> (PIL image, label)`` and ``describe(i)``, e.g. ``ImageFolder`` or
    ``Digits``. ``corruption=None`` gives the clean images through the same path. An unreadable image comes
    back with label -1 (left out of every metric), as in ``EvalImages``.
    """

    def __init__(self, source, config: dict, corruption: str | None = None, severity: int = 1, seed: int = 0):
        self.source, self.corruption, self.severity, self.seed = source, corruption, severity, seed
        self.size = tuple(config["input_size"])
        self.geometry = geometry(config)
        self.mean = torch.tensor(config["mean"]).view(3, 1, 1)
        self.std = torch.tensor(config["std"]).view(3, 1, 1)
        if corruption is not None:
            check_corruptions([corruption])
            if min(self.size[1:]) < MIN_SIZE:
                raise UserError(f"corruptions need an input size of at least {MIN_SIZE}, the model takes "
                                f"{self.size[-1]}")

    def __len__(self) -> int:
        return len(self.source)

    def key(self, index: int) -> str:
        """The image's name relative to its data folder: the same wherever the folder is moved."""
        name = self.source.describe(index)
        root = getattr(self.source, "root", None)
        if root is not None:
            name = Path(name).relative_to(root).as_posix()
        return name

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        try:
            img, label = self.source.load(index)
        except UserError:
            return torch.zeros(self.size), -1, index
        pixels = self.geometry(img)
        if self.corruption is not None:
            img = Image.fromarray(np.rint(pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            img = corrupt_image(img, self.corruption, self.severity, seed=self.seed, key=self.key(index))
            pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (pixels - self.mean) / self.std, label, -1
