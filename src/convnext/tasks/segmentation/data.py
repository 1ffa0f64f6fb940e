"""Segmentation data: image + label-map pairs from an ADE20K tree or a plain folder, and the paper's transforms.

Two layouts are read. ADE20K (``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/
*.png``), whose label maps use 0 for "other" and 1..150 for the classes: with ``reduce_zero_label`` (on for
ADE20K, as in the official configs) 0 becomes the ignore value 255 and k becomes k - 1. And a plain folder
(``images/`` and ``masks/`` side by side, optionally under ``train/`` and ``val/``), whose masks hold class
indices 0..K-1 and 255 for pixels to ignore. Images and masks pair by file stem.

A sample that cannot be used (a file that does not decode, an image and mask of different sizes, label
values outside 0..K-1 other than 255) never stops a run half-way: the dataset returns it fully ignored and
flags it, and the caller reports it (training skips it; evaluation stops with one line naming it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...data.augment import seeded
from ...data.images import UNREADABLE
from ...errors import UserError

if TYPE_CHECKING:
    from .config import SegConfig

IGNORE = 255
MASK_MODES = ("L", "P", "I;16", "I")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class SegmentationSource:
    """Pairs of (image, mask) files and how to read their labels."""

    root: Path
    pairs: list[tuple[Path, Path]]
    reduce_zero_label: bool
    layout: str  # "ade20k" or "folder"
    unmatched_masks: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        image, _ = self.pairs[index]
        return os.path.relpath(image, self.root)


class Unreadable(UserError):
    """A file that does not decode: skipped and reported, where a mismatch or a bad label stops evaluation."""


def _files(folder: Path) -> dict[str, Path]:
    """Image (or mask) files by name without suffix, which is how images meet their masks."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in files:
                raise UserError(f"{files[path.stem].name} and {path.name} share the name {path.stem} in {folder}: "
                                "a mask pairs with its image by name, so keep one of them")
            files[path.stem] = path
    return files


def _pair(root: Path, images: Path, masks: Path, reduce_zero_label: bool, layout: str) -> SegmentationSource:
    for folder in (images, masks):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder: expected {images.name}/ and {masks.name}/ side by side")
    image_files, mask_files = _files(images), _files(masks)
    if not image_files:
        raise UserError(f"{images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    lacking = sorted(set(image_files) - set(mask_files))
    if lacking:
        raise UserError(f"{len(lacking)} of {len(image_files)} images in {images} have no mask in {masks} "
                        f"(same name, .png), e.g. {image_files[lacking[0]].name}")
    pairs = [(image_files[s], mask_files[s]) for s in sorted(image_files)]
    extra = [mask_files[s] for s in sorted(set(mask_files) - set(image_files))]
    return SegmentationSource(root, pairs, reduce_zero_label, layout, extra)


def segmentation_folder(path: str | os.PathLike, split: str, reduce_zero_label: bool | None = None
                        ) -> SegmentationSource:
    """The ``split`` ("train" or "val") of an ADE20K tree or plain folder at ``path``, detected by its layout.

    ``reduce_zero_label`` defaults to on for ADE20K and off for plain folders."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    if (root / "images" / "training").is_dir():
        sub = {"train": "training", "val": "validation"}[split]
        return _pair(root, root / "images" / sub, root / "annotations" / sub,
                     True if reduce_zero_label is None else reduce_zero_label, "ade20k")
    base = root / split if (root / split / "images").is_dir() else root
    return _pair(root, base / "images", base / "masks", bool(reduce_zero_label), "folder")


def read_pair(source: SegmentationSource, index: int, num_classes: int) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and its label map (ignore = 255), or a UserError saying why the pair is unusable."""
    image_path, mask_path = source.pairs[index]
    try:
        with Image.open(image_path) as img:
            image = img.convert("RGB")
        with Image.open(mask_path) as raw:
            mode = raw.mode
            mask = np.array(raw)
    except UNREADABLE as err:
        raise Unreadable(f"{source.describe(index)}: cannot read ({err})") from None
    if mode not in MASK_MODES:
        raise UserError(f"{source.describe(index)}: its mask {mask_path.name} is a {mode} image; masks must be "
                        "single-channel label maps (8- or 16-bit grey or palette PNG), one class index per pixel")
    if mask.shape != (image.height, image.width):
        raise UserError(f"{source.describe(index)}: image is {image.width}x{image.height} but its mask "
                        f"{mask_path.name} is {mask.shape[1]}x{mask.shape[0]}")
    labels = mask.astype(np.int64)
    if source.reduce_zero_label:
        labels = np.where(labels == 0, IGNORE, labels - 1)
        labels[labels == IGNORE - 1] = IGNORE
    bad = (labels >= num_classes) & (labels != IGNORE)
    if bad.any():
        raise UserError(f"{source.describe(index)}: label {int(labels[bad].max())} in {mask_path.name} is outside "
                        f"0..{num_classes - 1} (and is not the ignore value {IGNORE}); check --num-classes"
                        + (" and reduce_zero_label" if source.layout == "ade20k" else ""))
    return image, labels


def problem(source: SegmentationSource, index: int, num_classes: int) -> str | None:
    """Why sample ``index`` cannot be used, or None (re-checked in the main process to report a skip)."""
    try:
        read_pair(source, index, num_classes)
    except UserError as err:
        return str(err)
    return None


class TrainTransform:
    """The official training pipeline in torchvision v2 terms: resize to a random 0.5-2x of ``scale``
    (long x short side, aspect kept), random crop (padding images with 0 and masks with 255), horizontal flip,
    photometric distortion (brightness, contrast, saturation, hue, as ColorJitter), normalise."""

    def __init__(self, crop: int, scale: tuple[int, int], ratio_range: tuple[float, float], mean, std,
                 hflip: float = 0.5, photometric: bool = True):
        self.scale, self.ratio_range = scale, ratio_range
        jitter = [v2.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360)]
        jitter = jitter if photometric else []
        self.pipeline = v2.Compose([
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}),
            v2.RandomHorizontalFlip(hflip), *jitter, v2.ToDtype({tv_tensors.Image: torch.float32,
                                                                  tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(mean, std)])

    def __call__(self, image: Image.Image, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = float(torch.empty(()).uniform_(*self.ratio_range))
        size = rescaled_size(image.height, image.width, self.scale, ratio)
        img = TF.resize(tv_tensors.Image(TF.pil_to_tensor(image)), list(size), antialias=True)
        mask = TF.resize(tv_tensors.Mask(torch.from_numpy(labels.astype(np.uint8))[None]), list(size))
        img, mask = self.pipeline(img, mask)
        return img.as_subclass(torch.Tensor), mask[0].as_subclass(torch.Tensor)


def rescaled_size(height: int, width: int, scale: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    """The official keep-ratio resize: the largest size with long side <= scale[0]*ratio and short side <=
    scale[1]*ratio."""
    long_side, short_side = max(scale) * ratio, min(scale) * ratio
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class SegmentationSet(Dataset):
    """Training samples by draw number: draw k is sample ``order[k mod n]`` of pass ``k div n``, augmented
    under a seed of (seed, k), so every draw is the same whichever worker, rank or resumed session makes it."""

    def __init__(self, source: SegmentationSource, num_classes: int, transform, seed: int = 0):
        self.source, self.num_classes, self.transform, self.seed = source, num_classes, transform, seed
        self._orders: dict[int, list[int]] = {}
        self.crop = transform.pipeline.transforms[0].size

    def __len__(self) -> int:
        return len(self.source)

    def index_of(self, draw: int) -> int:
        rounds, offset = divmod(draw, len(self.source))
        if rounds not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + rounds)
            self._orders = {rounds: torch.randperm(len(self.source), generator=generator).tolist()}
        return self._orders[rounds][offset]

    def __getitem__(self, draw: int):
        index = self.index_of(draw)
        with seeded(self.seed, draw):
            try:
                image, labels = read_pair(self.source, index, self.num_classes)
            except UserError:  # a fully ignored crop: no loss, and the index is reported
                labels = None
            if labels is None or (labels == IGNORE).all():  # nothing to learn from: reported like a bad file
                return torch.zeros(3, *self.crop), torch.full(tuple(self.crop), IGNORE), index
            image, mask = self.transform(image, labels)
        return image, mask, -1


class DrawSampler(Sampler):
    """Draw numbers ``start, start + world, ...`` of this rank, for as long as the run asks."""

    def __init__(self, start: int, rank: int = 0, world_size: int = 1):
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self):
        draw = self.start * self.world_size + self.rank
        while True:
            yield draw
            draw += self.world_size


def train_val_sources(config: SegConfig) -> tuple[SegmentationSource, SegmentationSource | None]:
    """The training folder and the validation one (the data's val split when there is one)."""
    if config.data is None:
        raise UserError("give --data DIR (an ADE20K tree or images/ + masks/ folders), or use --demo")
    train_src = segmentation_folder(config.data, "train", config.reduce_zero_label)
    if config.val_data:
        return train_src, segmentation_folder(config.val_data, "val", config.reduce_zero_label)
    root = Path(config.data)
    if not ((root / "images" / "validation").is_dir() or (root / "val" / "images").is_dir()):
        return train_src, None  # a plain folder is all training data: scoring on it would flatter the model
    # the data's own val split: a problem in it is one line, never a silent run without validation
    return train_src, segmentation_folder(config.data, "val", config.reduce_zero_label)
