"""Images in, tensors out: decoding any image file and the paper's evaluation preprocessing."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserError

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB image from any file PIL reads: EXIF orientation applied; grayscale, palette, RGBA (composited
    on white) and 16-bit images converted."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray((array / top * 255).round().clip(0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 HWC RGB -> float CHW in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def eval_transform(config: dict) -> Callable[[Image.Image], torch.Tensor]:
    """The paper's evaluation preprocessing for a model's ``pretrained_cfg``.

    Below 384: resize the shorter side to ``size / crop_pct`` and centre-crop ``size``; at 384 and up
    (crop_pct 1.0): resize straight to ``size`` x ``size`` without cropping. Then normalise.
    """
    size = config["input_size"][-1]
    crop_pct = config.get("crop_pct", 0.875)
    resample = _RESAMPLE[config.get("interpolation", "bicubic")]
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)

    def transform(img: Image.Image) -> torch.Tensor:
        if crop_pct >= 1.0:
            img = img.resize((size, size), resample)
        else:
            short = int(size / crop_pct)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), resample)
            w, h = img.size
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return (to_tensor(img) - mean) / std

    return transform
