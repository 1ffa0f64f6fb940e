"""A small folder of real photo crops, for trying ``convnext train --data`` on photographs.

Six photographs that scikit-image ships (astronaut, cat, coffee, rocket, motorcycle, Hubble deep field; their
sources and licences are in scikit-image's ``skimage/data/README.txt``) become six classes. Each photo is cut
into a 3 x 3 grid of tiles; three tiles, drawn per photo, give the validation crops and the other six the
training crops, so the validation set shows parts of the scenes the model never saw. Crops vary in size and
aspect, and are stored as JPEG files in the ``DIR/train/<class>`` and ``DIR/val/<class>`` layout that
``convnext train`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

PHOTOS = {
    "astronaut": "astronaut",
    "cat": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "galaxies": "hubble_deep_field",
}
GRID = 3
VAL_TILES = 3


def _photo(loader: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, loader)()
    if isinstance(array, tuple):  # the stereo pair: its left view
        array = array[0]
    return Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")


def _crops(tiles: list[Image.Image], count: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` boxes of 40-100% of a random tile's shorter side, aspect 3:4 to 4:3, anywhere in the tile."""
    out = []
    for _ in range(count):
        tile = tiles[int(rng.integers(len(tiles)))]
        width, height = tile.size
        side = rng.uniform(0.4, 1.0) * min(width, height)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = min(width, round(side * aspect)), min(height, round(side / aspect))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        out.append(tile.crop((left, top, left + w, top + h)))
    return out


def _tiles(photo: Image.Image) -> list[Image.Image]:
    xs = np.linspace(0, photo.width, GRID + 1).round().astype(int)
    ys = np.linspace(0, photo.height, GRID + 1).round().astype(int)
    return [photo.crop((xs[i], ys[j], xs[i + 1], ys[j + 1])) for j in range(GRID) for i in range(GRID)]


def make_photo_crops(out_dir: str | os.PathLike, *, train_per_class: int = 40, val_per_class: int = 15,
                     seed: int = 0) -> Path:
    """Write the crops under ``out_dir`` (``train/`` and ``val/``); returns ``out_dir``."""
    if train_per_class < 1 or val_per_class < 1:
        raise UserError("train_per_class and val_per_class must be at least 1")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for name, loader in PHOTOS.items():
        tiles = _tiles(_photo(loader))
        held_out = set(rng.choice(len(tiles), VAL_TILES, replace=False).tolist())
        regions = {"train": [t for i, t in enumerate(tiles) if i not in held_out],
                   "val": [t for i, t in enumerate(tiles) if i in held_out]}
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(_crops(regions[split], count, rng)):
                crop.save(folder / f"{name}_{i:03d}.jpg", quality=90)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m convnext.data.photos", description="Write six classes of crops of "
                                     "scikit-image's bundled photographs as DIR/train and DIR/val (3 of each "
                                     "photo's 9 tiles held out for validation).")
    parser.add_argument("dir", nargs="?", default="photos", help="output folder, new or empty (default photos)")
    args = parser.parse_args(argv)
    out = Path(args.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"python -m convnext.data.photos: error: {out} exists and is not an empty folder; name a new one",
              file=sys.stderr)
        return 2
    print(f"{make_photo_crops(out)}: train/ and val/, {len(PHOTOS)} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
