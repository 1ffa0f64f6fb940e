"""The built-in detection demo: real handwritten digits pasted onto real photographs, with exact boxes and masks.

What the data is, plainly: the digits are the built-in 8x8 scans of real handwriting (``convnext.data.images.Digits``,
UCI, CC BY 4.0), enlarged to 24-44 px and painted in a random colour onto 128 x 128 crops of five photographs
scikit-image ships (astronaut, cat, coffee, rocket, motorcycle). Each digit's mask is its stroke (the enlarged
scan above half ink) and its box the mask's tight box, so the annotations are exact by construction. Three
digit classes (0, 1 and 4), up to three per image, some images with none. Training images use the left
two thirds of each photo and the training digits; validation images use the right third and the held-out
digits, so validation shows unseen handwriting on unseen background. It is a synthetic composite of real
images, a smoke test of the whole pipeline, not a benchmark: its AP says nothing about COCO.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ...data.images import Digits
from ...files import atomic_write_text

if TYPE_CHECKING:
    from torch import nn

DIGITS = (0, 1, 4)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
SIZE = 128
TRAIN_SHARE = 2 / 3
COUNTS = {"train": 160, "val": 60}
PRETRAIN_EPOCHS = 4


def _backgrounds(split: str) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        photo = np.asarray(photo[0] if isinstance(photo, tuple) else photo, dtype=np.uint8)
        cut = round(photo.shape[1] * TRAIN_SHARE)
        out.append(photo[:, :cut] if split == "train" else photo[:, cut:])
    return out


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of 40-100% of the photo's shorter side, resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.4, 1.0) * min(h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    tile = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(tile, dtype=np.float32)


def _paste(canvas: np.ndarray, ink: np.ndarray, rng: np.random.Generator, taken: list) -> tuple | None:
    """Paint one enlarged digit (``ink``: the 8x8 scan, 0-255) onto ``canvas`` where it overlaps no earlier
    one; its mask and box."""
    size = canvas.shape[0]
    side = int(rng.integers(24, 45))
    enlarged = Image.fromarray(ink).resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(enlarged, dtype=np.float32) / 255
    for _ in range(20):
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(top >= b + 2 or top + side + 2 <= t or left >= r + 2 or left + side + 2 <= c for t, c, b, r in taken):
            break
    else:
        return None
    colour = rng.choice([rng.uniform(0, 60, 3), rng.uniform(200, 255, 3), rng.uniform(0, 255, 3)])
    region = canvas[top:top + side, left:left + side]
    region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
    mask = np.zeros(canvas.shape[:2], dtype=np.uint8)
    mask[top:top + side, left:left + side] = alpha > 0.5
    ys, xs = np.nonzero(mask)
    taken.append((top, left, top + side, left + side))
    return mask, [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def make_demo_set(out: str | Path, split: str = "train", count: int | None = None, *, size: int = SIZE,
                  seed: int = 0) -> Path:
    """Write ``count`` composite images and their ``instances_<split>.json`` into ``out``; returns ``out``.
    The json is written last, so a folder without it is an unfinished one (made anew)."""
    from pycocotools import mask as mask_utils

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    digits = Digits(split)
    pool = [i for i in range(len(digits)) if digits.labels[i] in DIGITS]
    photos = _backgrounds(split)
    images, annotations = [], []
    for image_id in range(1, (count or COUNTS[split]) + 1):
        canvas = _crop(photos[int(rng.integers(len(photos)))], size, rng)
        taken: list = []
        for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.05, 0.35, 0.35, 0.25]))):
            index = pool[int(rng.integers(len(pool)))]
            pasted = _paste(canvas, digits.images[index], rng, taken)
            if pasted is None:
                continue
            mask, box = pasted
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=int(digits.labels[index]),
                                    bbox=box, area=float(mask.sum()), iscrowd=0,
                                    segmentation=dict(size=[size, size], counts=rle["counts"].decode("ascii"))))
        name = f"{split}_{image_id:04d}.jpg"
        Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8)).save(out / "images" / name, quality=92)
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
    categories = [dict(id=d, name=str(d), supercategory="digit") for d in DIGITS]
    data = dict(info=dict(description="ConvNeXt detection demo: real handwritten digits on real photographs "
                          "(synthetic composites; see convnext.tasks.detection.demo)"),
                images=images, annotations=annotations, categories=categories)
    atomic_write_text(out / f"instances_{split}.json", json.dumps(data) + "\n")
    return out


def demo_data(folder: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
    """The demo's training and validation folders under ``folder``, made once."""
    paths = []
    for split in ("train", "val"):
        path = folder / split
        if not (path / f"instances_{split}.json").is_file():
            say(f"demo data: making {COUNTS[split]} {split} images in {path} (real handwritten digits pasted on "
                "real photos; exact boxes and masks)")
            make_demo_set(path, split)
        paths.append(path)
    return paths[0], paths[1]


def draw_demo(run_dir: Path, model: nn.Module, classes: list[str], count: int = 8, score: float = 0.5) -> Path:
    """``predictions.png`` in ``run_dir``: ``model`` (the run's best, as `load_detector` reads it) on the first
    ``count`` validation images, drawn at twice their size so that labels have room, with the ground-truth
    boxes in white."""
    import torch
    from torchvision.utils import draw_bounding_boxes

    from ...data.images import load_image, to_tensor
    from ...plots import pyplot, save_figure
    from .data import CocoData
    from .predict import detect, draw

    truth = CocoData(run_dir / "data" / "val", train=False)
    boxes_of = {truth.coco.imgs[i]["file_name"]: truth.load(truth.ids.index(i))[1]["boxes"] for i in truth.ids}
    files = sorted((run_dir / "data" / "val" / "images").glob("*.jpg"))[:count]
    plt = pyplot()
    fig, axes = plt.subplots(2, (len(files) + 1) // 2, figsize=(3 * ((len(files) + 1) // 2), 6.4))
    for ax, path in zip(axes.flat, files, strict=False):
        image = to_tensor(load_image(path))
        with torch.no_grad():
            found = detect(model, image, score)
        picture = draw(_twice(image), _twice_output(found), classes)
        ground = boxes_of.get(path.name, torch.zeros(0, 4)) * 2
        picture = draw_bounding_boxes(picture, ground, colors="white", width=1)
        ax.imshow(picture.permute(1, 2, 0).numpy())
        ax.set_title(path.name, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("held-out digits on held-out photo regions: predicted masks, boxes, class and score; "
                 "ground truth in white", fontsize=8)
    fig.tight_layout()
    out = run_dir / "predictions.png"
    save_figure(fig, out, dpi=110)
    return out


def _twice(image):
    import torch.nn.functional as F

    return F.interpolate(image[None], scale_factor=2, mode="nearest")[0]


def _twice_output(output: dict) -> dict:
    """A detector's output for the image drawn at twice its size."""
    scaled = dict(output, boxes=output["boxes"] * 2)
    if "masks" in output and len(output["masks"]):
        scaled["masks"] = _twice(output["masks"].float().flatten(0, 1))[:, None]
    return scaled


def pretrain_backbone(folder: Path, say: Callable[[str], None]) -> Path:
    """The demo detector's backbone weights: the classification demo's slim ConvNeXt (``convnext train``,
    recipe ``demo``) trained for ``PRETRAIN_EPOCHS`` epochs on the training split of the digits, once."""
    from ..classification.config import resolve_config
    from ..classification.train import train

    config = resolve_config("demo", epochs=PRETRAIN_EPOCHS, output=str(folder))
    say(f"demo: pre-training the backbone as a digit classifier ({PRETRAIN_EPOCHS} epochs, kept in {folder})")
    summary = train(config, log=lambda text: say(f"  {text}"))
    say(f"demo: backbone classifier top-1 {summary['best_top1']:.1f}% on the held-out digits")
    return folder / "best.pt"
