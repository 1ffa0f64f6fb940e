"""Images in, tensors out: decoding any image file, the paper's evaluation preprocessing, and the training
data (image folders, the built-in digits, per-image augmentation in DataLoader workers)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..errors import UserError, some
from .augment import seeded

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


# What PIL raises for a file it cannot decode (or will not: a decompression bomb), as opposed to our own bugs.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB image from any file PIL reads: EXIF orientation applied; grayscale, palette, RGBA (composited
    on white) and 16-bit images converted."""
    try:
        with Image.open(path) as img:
            img.load()
    except UNREADABLE as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = Image.fromarray(_to_8_bits(np.asarray(img, dtype=np.float64), img.mode, path))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def _to_8_bits(array: np.ndarray, mode: str, path) -> np.ndarray:
    """16- and 32-bit grey pixels as 8-bit ones: whole numbers over 0-255 (16-bit when any exceeds 255); floats
    (mode F) over 0-1 as scientific images store them, or 0-255. Other float ranges have no standard meaning."""
    top = array.max(initial=0.0)
    if mode == "F":
        if not np.isfinite(array).all() or array.min(initial=0.0) < 0 or top > 255:
            raise UserError(f"cannot read image {path}: float pixels outside 0-1 and 0-255 (or not finite) have "
                            "no standard brightness; save it as an 8- or 16-bit image")
        scale = 255.0 if top <= 1 else 1.0
    else:
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
    return (array * scale).round().clip(0, 255).astype(np.uint8)


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


# --- training data: image folders, the built-in digits, per-image augmentation in DataLoader workers ---

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageFolder:
    """Images in one sub-folder per class; sorted folder names give labels 0..K-1 (the ImageNet layout).

    A missing folder, no class folders, or a class folder without images is one error, raised here,
    before any work starts. ``classes`` pins the label order (a validation set uses the training one).
    """

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder not found: {root}")
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise UserError(f"{root} has no class sub-folders: expected one folder of images per class")
        if classes is not None and found != classes:
            extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
            raise UserError(f"classes of {root} differ from the training classes: "
                            f"extra [{some(extra)}], missing [{some(missing)}]")
        self.root, self.classes = root, found
        self.samples: list[tuple[str, int]] = []
        self.unusable: list[str] = []  # image names that are not readable files (broken links, link loops)
        for label, name in enumerate(found):
            files = image_files(root / name, self.unusable)
            if not files:
                raise UserError(f"class folder {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            self.samples += [(str(f), label) for f in files]
        if self.unusable:
            shown = ", ".join(self.unusable[:3]) + (f" and {len(self.unusable) - 3} more" if len(self.unusable) > 3
                                                    else "")
            warnings.warn(f"left out {len(self.unusable)} image names under {root} that are not readable files "
                          f"(broken links or link loops): {shown}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_image(path), label

    def describe(self, index: int) -> str:
        return self.samples[index][0]


def image_files(folder: Path, unusable: list[str] | None = None) -> list[Path]:
    """The image files under ``folder``, sorted; hidden files and folders are skipped (as ``predict`` does).

    A folder that cannot be listed is an error, not an empty class; names that look like images but are not
    readable files (broken links, link loops) are added to ``unusable``."""
    found: list[Path] = []

    def refused(err: OSError) -> None:
        raise UserError(f"cannot read the folder {err.filename}: {err.strerror}")

    seen = {_identity(folder)}
    for parent, dirs, names in os.walk(folder, onerror=refused, followlinks=True):
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            identity = _identity(Path(parent, d))
            if identity in seen:  # a link back to a folder already walked: a loop (or a duplicate)
                if unusable is not None:
                    unusable.append(str(Path(parent, d)))
                continue
            seen.add(identity)
            keep.append(d)
        dirs[:] = keep
        for name in names:
            path = Path(parent, name)
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.is_file():
                found.append(path)
            elif unusable is not None:
                unusable.append(str(path))
    return sorted(found)


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def image_folders(data: str | os.PathLike, val_data: str | os.PathLike | None = None
                  ) -> tuple[ImageFolder, ImageFolder | None]:
    """The training and validation sets of a data folder: ``DIR/train`` and ``DIR/val`` when present,
    else ``DIR`` itself for training; ``val_data`` names the validation folder explicitly."""
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    split = (root / "train").is_dir()
    train = ImageFolder(root / "train" if split else root)
    if val_data is None and split and (root / "val").is_dir():
        val_data = root / "val"
    val = ImageFolder(val_data, classes=train.classes) if val_data is not None else None
    return train, val


DIGITS_FILE = Path(__file__).parent / "assets" / "digits.npz"


class Digits:
    """The built-in data set: 1,797 real 8x8 handwritten-digit scans (UCI, CC BY 4.0; see DIGITS_SOURCE.md),
    split 80/20 per class with a fixed seed, so every run holds out the same 359 images."""

    classes = [str(d) for d in range(10)]

    def __init__(self, split: str = "train"):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        with np.load(DIGITS_FILE) as arrays:
            images, labels = arrays["images"], arrays["labels"]
        self.indices = digits_split(labels)[0 if split == "train" else 1]
        # 0..16 "on" counts -> 0..255 grey levels
        self.images = (images[self.indices].astype(np.float32) * (255 / 16)).round().astype(np.uint8)
        self.labels = labels[self.indices].astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"digits[{self.indices[index]}]"


def export_digits(folder: str | os.PathLike) -> Path:
    """Write the built-in digits as ``folder/{train,val}/<digit>/<index>.png`` (the same split as `Digits`),
    for tools that take image folders, e.g. `convnext quantize --calibrate folder/train --val folder/val`."""
    root = Path(folder)
    for split in ("train", "val"):
        digits = Digits(split)
        for i in range(len(digits)):
            image, label = digits.load(i)
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            image.save(root / split / str(label) / f"{digits.indices[i]:04d}.png")
    return root


def digits_split(labels: np.ndarray, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: per class, a seeded shuffle, the first 80% for training."""
    rng = np.random.default_rng(0)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = round(len(idx) * train_fraction)
        train.append(idx[:cut])
        val.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def first_readable(source, index: int) -> tuple[tuple, int]:
    """``source.load(index)``, or, when that image cannot be read, the next one that can (wrapping round):
    what a training set serves so a bad file costs one sample, not the run. Returns what was loaded and
    ``index`` when it was replaced (else -1), for the run's report."""
    for step in range(len(source)):
        try:
            return source.load((index + step) % len(source)), -1 if step == 0 else index
        except UserError:
            continue
    raise UserError("no image of the training set could be read")


class TrainImages(Dataset):
    """Decode one image and apply the training transform (``convnext.data.augment.train_transform``) in a
    DataLoader worker; returns a normalised float CHW tensor, the label, and the index of an unreadable image
    that was replaced by the next readable one (else -1).

    Items are ``(index, epoch)`` (from ``EpochSampler``) and each image's randomness is seeded by
    ``(seed, epoch, index)``: the result does not depend on the worker or the rank that makes it, which is
    what lets a resumed or distributed run see exactly the images an uninterrupted single run sees.
    """

    def __init__(self, source, transform: Callable[[Image.Image], torch.Tensor], *, seed: int = 0):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = item
        (img, label), bad = first_readable(self.source, index)
        with seeded(self.seed, epoch, index):
            return self.transform(img), label, bad


class EvalImages(Dataset):
    """The evaluation preprocessing of ``config`` applied in workers; an unreadable image comes back as
    label -1 (left out of every metric) with its index, never as a crash."""

    def __init__(self, source, config: dict):
        self.source, self.config, self.transform = source, config, eval_transform(config)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        try:
            img, label = self.source.load(index)
        except UserError:
            return torch.zeros(self.config["input_size"]), -1, index
        return self.transform(img), label, -1


class EpochSampler(Sampler):
    """``DistributedSampler``'s order (a per-epoch shuffle seeded by ``seed + epoch``, this rank's share)
    yielding ``(index, epoch)``, and resumable from a position inside the epoch."""

    def __init__(self, dataset: Dataset, *, world_size: int = 1, rank: int = 0, seed: int = 0):
        self.order = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for ``epoch`` and skip its first ``start`` samples (already trained on before a resume)."""
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.order) - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.order):
            if position >= self.start:
                yield index, self.epoch
