"""The built-in segmentation demo: scenes cut from real photographs, with exact masks.

The data is made here, honestly synthetic in layout and real in pixels: each 128 x 128 scene is split into
2-5 regions (a random Voronoi partition), and each region is filled with a patch of one of six photographs that
scikit-image ships (three grey-scale textures, grass, gravel and brick; and three colour photos, a cat (Chelsea),
a cup of coffee and an immunohistochemistry slide; sources and licences in scikit-image's ``skimage/data/
README.txt``). The class of a pixel is the photo it came from, so the masks are exact. Training scenes take
their patches from the left 60% of every photo, validation scenes from the right 40%: the model is scored on
parts of the photos it never saw. It learns texture and colour, not objects; ADE20K is the real test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UserError
from .data import segmentation_folder

CLASSES = ("grass", "gravel", "brick", "cat", "coffee", "tissue")
_LOADERS = ("grass", "gravel", "brick", "chelsea", "coffee", "immunohistochemistry")
TRAIN_SHARE = 0.6
SIZE = 128


def _photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in _LOADERS:
        array = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
        photos.append(np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array[..., :3])
    return photos


def _patch(photo: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
    """A SIZE x SIZE patch from the split's part of the photo: a random square of 40-90% of its height (so the
    zoom varies), resized."""
    width = photo.shape[1]
    cut = int(width * TRAIN_SHARE)
    part = photo[:, :cut] if split == "train" else photo[:, cut:]
    side = int(min(part.shape[:2]) * rng.uniform(0.4, 0.9))
    top = int(rng.integers(0, part.shape[0] - side + 1))
    left = int(rng.integers(0, part.shape[1] - side + 1))
    crop = Image.fromarray(np.ascontiguousarray(part[top:top + side, left:left + side]))
    return np.asarray(crop.resize((SIZE, SIZE), Image.BILINEAR))


def _scene(photos: list[np.ndarray], split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    seeds = rng.uniform(0, SIZE, size=(int(rng.integers(2, 6)), 2))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    nearest = ((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    classes = rng.choice(len(photos), size=len(seeds), replace=len(seeds) > len(photos))
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for region, label in enumerate(classes):
        inside = nearest == region
        image[inside] = _patch(photos[label], split, rng)[inside]
        mask[inside] = label
    return image, mask


def make_demo_scenes(out_dir: str | os.PathLike, *, train: int = 160, val: int = 40, seed: int = 0) -> Path:
    """Write ``train/{images,masks}`` and ``val/{images,masks}`` (PNG) under ``out_dir``; returns it."""
    if train < 1 or val < 1:
        raise UserError("the demo needs at least one training and one validation scene")
    out = Path(out_dir)
    photos = _photos()
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for sub in ("images", "masks"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = _scene(photos, split, rng)
            Image.fromarray(image).save(out / split / "images" / f"scene_{i:04d}.png")
            Image.fromarray(mask).save(out / split / "masks" / f"scene_{i:04d}.png")
    return out


def majority_miou(masks: list[np.ndarray], num_classes: int) -> float:
    """mIoU of always predicting the most frequent class: the floor a model must rise above."""
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=num_classes)[:num_classes]
    present = counts > 0
    iou = np.zeros(num_classes)
    iou[counts.argmax()] = counts.max() / counts.sum()
    return 100 * float(iou[present].mean())


def run_demo(output: str | os.PathLike = "runs/segment-demo", *, restart: bool = False, device: str = "cpu",
             iters: int | None = None) -> int:
    """Make the scenes (once), train the ``demo`` recipe (rerun: resume), evaluate the best checkpoint single-
    and multi-scale against the majority-class floor, and draw ``predictions.png``."""
    from .config import seg_config
    from .evaluate import evaluate_segmentation
    from .predict import load_segmentation_model
    from .train import train_segmentation

    out = Path(output)
    data = out / "data"
    if not (data / "val" / "masks").is_dir():
        make_demo_scenes(data)
    print(f"demo data: {data} - 128x128 scenes cut from six scikit-image photos ({', '.join(CLASSES)}); training "
          "patches from the left 60% of each photo, validation from the right 40%")
    config = seg_config("demo", data=str(data), output=str(out / "run"), device=device, iters=iters)
    train_segmentation(config, resume=not restart)
    model, settings = load_segmentation_model(checkpoint=out / "run" / "best.pt")
    source = segmentation_folder(data, "val")
    floor = majority_miou([np.asarray(Image.open(m)) for _, m in source.pairs], len(CLASSES))
    results = {}
    for multi in (False, True):
        results[multi] = evaluate_segmentation(model, source, len(CLASSES), settings=settings, multi_scale=multi,
                                               device=device, progress=False)
    print(f"validation ({len(source)} scenes): single-scale mIoU {results[False]['miou']:.2f} (mAcc "
          f"{results[False]['macc']:.2f}, aAcc {results[False]['aacc']:.2f}); multi-scale + flip mIoU "
          f"{results[True]['miou']:.2f}; always predicting the most frequent class: mIoU {floor:.2f}")
    print("per-class IoU: " + ", ".join(f"{name} {iou:.1f}" for name, iou in zip(CLASSES, results[False]["iou"],
                                                                                   strict=True) if iou is not None))
    figure = out / "predictions.png"
    plot_demo_predictions(model, source, settings, figure)
    print(f"wrote {figure} and {out / 'run' / 'curves.png'}; the model is {out / 'run' / 'best.pt'}: try "
          f"`convnext segment predict --checkpoint {out / 'run' / 'best.pt'} YOUR_IMAGES --output predictions`")
    return 0


def plot_demo_predictions(model, source, settings, path: Path, count: int = 6) -> None:
    """Validation scenes, their true masks and the model's predictions, side by side."""
    from ...plots import pyplot, save_figure
    from .data import read_pair
    from .evaluate import to_input
    from .inference import segment
    from .plots import palette

    plt = pyplot()
    colours = palette(len(CLASSES))
    fig, axes = plt.subplots(3, count, figsize=(1.9 * count, 6), squeeze=False)
    for column in range(count):
        image, labels = read_pair(source, column, len(CLASSES))
        probs = segment(model, to_input(image, settings.mean, settings.std), num_classes=len(CLASSES),
                        scale=settings.scale, crop=settings.crop, stride=settings.stride)
        for row, picture in enumerate((np.asarray(image), colours[labels], colours[probs.argmax(0).numpy()])):
            axes[row, column].imshow(picture, interpolation="nearest")
            axes[row, column].axis("off")
    for row, title in enumerate(("validation scene", "true classes", "prediction")):
        axes[row, 0].set_title(title, fontsize=9, loc="left")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i] / 255) for i in range(len(CLASSES))]
    fig.legend(handles, CLASSES, loc="lower center", ncol=len(CLASSES), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path, dpi=100)
