"""COCO-format data: a folder with ``images/`` and one ``instances_*.json``, read through pycocotools.

What COCO's own tools do, this reader does: crowd regions (``iscrowd=1``) are no training targets (COCOeval
treats them as regions where detections are neither right nor wrong), and images without annotations are
left out of training but kept for evaluation. What would crash a run later is settled up front instead, each
kind in one line of the report: boxes reaching outside their image are clipped to it, boxes of no area
(after clipping) are dropped, annotations of categories or images the json does not list are dropped, and
images whose files are missing are left out. A json that cannot be read, or lacks the COCO structure, is one
`UserError` line.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ...data.images import first_readable, load_image, to_tensor
from ...errors import UserError
from .config import MULTI_SCALE

IMAGE_DIR = "images"


@dataclass
class Cleaning:
    """What reading a json changed, kind by kind, for the run's report."""

    clipped: int = 0
    zero_area: int = 0
    unknown_category: dict[int, int] = field(default_factory=dict)  # category id -> annotations dropped
    unknown_image: int = 0
    missing_files: list[str] = field(default_factory=list)
    no_segmentation: int = 0
    bad_mask: int = 0
    bad_area: int = 0

    def lines(self) -> list[str]:
        out = []
        if self.clipped:
            out.append(f"{self.clipped} boxes reached outside their image: clipped to it")
        if self.zero_area:
            out.append(f"{self.zero_area} boxes of no area (or no box, or not finite numbers): dropped")
        if self.unknown_category:
            ids = ", ".join(f"{k} ({v}x)" for k, v in sorted(self.unknown_category.items())[:6])
            out.append(f"{sum(self.unknown_category.values())} annotations of categories the json does not "
                       f"list: dropped (ids {ids})")
        if self.unknown_image:
            out.append(f"{self.unknown_image} annotations of images the json does not list: dropped")
        if self.missing_files:
            shown = ", ".join(self.missing_files[:3]) + (", ..." if len(self.missing_files) > 3 else "")
            out.append(f"{len(self.missing_files)} image files missing: left out ({shown})")
        if self.bad_mask:
            out.append(f"{self.bad_mask} annotations whose mask is neither polygons (3+ points) nor an RLE of "
                       "their image's size, or whose iscrowd is not 0/1: dropped")
        if self.no_segmentation:
            out.append(f"{self.no_segmentation} annotations without a segmentation: their box is their mask")
        if self.bad_area:
            out.append(f"{self.bad_area} annotations whose area is no finite number >= 0: their box's area used "
                       "(COCOeval sorts objects into small/medium/large by it)")
        return out


def find_coco(path: str | os.PathLike) -> tuple[Path, Path]:
    """The json and the image folder of a COCO-format data set: ``DIR`` (with ``DIR/images`` and one
    ``DIR/instances_*.json`` or ``DIR/annotations/instances_*.json``), or the json itself (its images in
    ``images/`` beside it)."""
    path = Path(path)
    if path.is_file():
        images = path.parent / IMAGE_DIR
        return path, images if images.is_dir() else path.parent
    if not path.is_dir():
        raise UserError(f"no such data set: {path}")
    found = sorted(path.glob("instances_*.json")) or sorted(path.glob("annotations/instances_*.json"))
    if len(found) != 1:
        what = "no instances_*.json" if not found else f"{len(found)} json files ({', '.join(f.name for f in found)})"
        raise UserError(f"{path} holds {what}: expected one, or name the json file itself")
    images = path / IMAGE_DIR
    if not images.is_dir():
        raise UserError(f"{path} has no {IMAGE_DIR}/ folder beside {found[0].name}")
    return found[0], images


def read_json(path: Path) -> dict:
    """The json as a COCO dict with its three lists, or one line saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid json: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not a COCO annotation file: no 'images' list")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise UserError(f"{path} lists no 'categories'")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise UserError(f"{path}: 'annotations' is not a list")
    for kind, fields in FIELDS.items():
        _check_fields(path, kind, data[kind], fields)
    outside = [img["file_name"] for img in data["images"]
               if Path(img["file_name"]).is_absolute() or ".." in Path(img["file_name"]).parts]
    if outside:  # the data set is the folder: a json must not send the reader elsewhere on the machine
        raise UserError(f"{path}: {len(outside)} image file_name(s) point outside its images folder, e.g. "
                        f"{outside[0]!r}; give names relative to it")
    for kind in ("images", "categories", "annotations"):  # a repeated id would mix two items' data
        ids = [item["id"] for item in data[kind]]
        repeated = [i for i, n in collections.Counter(ids).items() if n > 1]
        if repeated:
            raise UserError(f"{path}: {len(repeated)} {kind} id(s) listed more than once, e.g. id {repeated[0]}; "
                            "each must be unique")
    return data


# The fields read from each list of a COCO json, and what each must be.
_ID = (int, "an integer")
FIELDS = {
    "images": {"id": _ID, "file_name": (str, "a file name"), "width": (int, "a whole number of pixels"),
               "height": (int, "a whole number of pixels")},
    "categories": {"id": _ID, "name": (str, "a name")},
    "annotations": {"id": _ID, "image_id": _ID, "category_id": _ID},
}


def _check_fields(path: Path, kind: str, items: list, fields: dict) -> None:
    """One line for the first item of ``kind`` that lacks a field or holds one of the wrong type, with the
    count of such items."""
    problems = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"{kind}[{i}] is not an object")
            continue
        lacking = [k for k in fields if k not in item]
        wrong = [f"{k} {item[k]!r} is not {what}" for k, (kind_of, what) in fields.items()
                 if k in item and (not isinstance(item[k], kind_of) or isinstance(item[k], bool))]
        if lacking or wrong:
            problems.append(f"{kind}[{i}] " + "; ".join(([f"has no {', '.join(lacking)}"] if lacking else []) + wrong))
    if problems:
        more = f" (and {len(problems) - 1} more {kind} like it)" if len(problems) > 1 else ""
        raise UserError(f"{path}: {problems[0]}{more}")


def _clip_box(ann: dict, width: int, height: int, report: Cleaning) -> list[float] | None:
    """The annotation's ``[x, y, w, h]`` clipped to the image, or None when nothing of it is left."""
    box = ann.get("bbox")
    if not (isinstance(box, list | tuple) and len(box) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in box)):
        return None
    x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    cx0, cy0 = min(max(x0, 0), width), min(max(y0, 0), height)
    cx1, cy1 = min(max(x1, 0), width), min(max(y1, 0), height)
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1) and cx1 > cx0 and cy1 > cy0:
        report.clipped += 1
    if cx1 - cx0 < 1e-3 or cy1 - cy0 < 1e-3:
        return None
    return [cx0, cy0, cx1 - cx0, cy1 - cy0]


def clean(data: dict, images_dir: Path) -> tuple[dict, Cleaning]:
    """The json with every annotation usable and every listed image present (see the module's doc)."""
    report = Cleaning()
    images = []
    for img in data["images"]:
        if (images_dir / img["file_name"]).is_file():
            images.append(img)
        else:
            report.missing_files.append(str(img["file_name"]))
    sizes = {img["id"]: (img["width"], img["height"]) for img in images}
    listed = {img["id"] for img in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    annotations = [usable for ann in data["annotations"]
                   if (usable := _usable(ann, sizes, listed, categories, report)) is not None]
    if not images:
        raise UserError(f"none of the {len(data['images'])} images the json lists is in {images_dir}")
    return {**data, "images": images, "annotations": annotations}, report


def _usable(ann: dict, sizes: dict, listed: set, categories: set, report: Cleaning) -> dict | None:
    """The annotation ready to train on (box clipped, crowd flag and area filled in), or None, counted in
    ``report`` by why it was dropped."""
    if ann["category_id"] not in categories:
        report.unknown_category[ann["category_id"]] = report.unknown_category.get(ann["category_id"], 0) + 1
        return None
    if ann["image_id"] not in listed:
        report.unknown_image += 1
        return None
    if ann["image_id"] not in sizes:  # its image file is missing: reported with the image
        return None
    width, height = sizes[ann["image_id"]]
    box = _clip_box(ann, width, height, report)
    if box is None:
        report.zero_area += 1
        return None
    if not _usable_mask(ann.get("segmentation"), width, height) or ann.get("iscrowd", 0) not in (0, 1):
        report.bad_mask += 1
        return None
    area = ann.get("area")
    if not (isinstance(area, int | float) and not isinstance(area, bool) and math.isfinite(area) and area >= 0):
        report.bad_area += "area" in ann
        area = box[2] * box[3]
    ann = {**ann, "bbox": box, "iscrowd": int(ann.get("iscrowd", 0)), "area": area}
    if not ann.get("segmentation"):
        report.no_segmentation += 1
        x, y, w, h = box
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return ann


def _usable_mask(mask, width: int, height: int) -> bool:
    """None (the box stands in), polygons of at least 3 finite points each, or an RLE of the image's size."""
    if not mask:
        return True
    if isinstance(mask, dict):
        return mask.get("size") == [height, width] and isinstance(mask.get("counts"), str | list)
    return isinstance(mask, list) and all(
        isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
        and all(isinstance(v, int | float) and math.isfinite(v) for v in poly) for poly in mask)


def coco_api(data: dict):
    """A ``pycocotools.coco.COCO`` over an in-memory dict (its index messages kept off the terminal)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoData:
    """A COCO-format data set, cleaned: ``ids`` lists the images used (without the annotation-less ones when
    ``train``), category ids map to labels 1..K (0 is the background)."""

    def __init__(self, path: str | os.PathLike, *, train: bool):
        self.json_path, self.images_dir = find_coco(path)
        data, self.report = clean(read_json(self.json_path), self.images_dir)
        self.coco = coco_api(data)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.cat_ids)}
        self.classes = [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = sorted(self.coco.getImgIds())
        self.empty = 0
        if train:
            usable = [i for i in ids if any(not a["iscrowd"] for a in self.coco.imgToAnns[i])]
            self.empty = len(ids) - len(usable)
            ids = usable
            if not ids:
                why = "; ".join(self.report.lines())  # what was dropped, and why: the one clue to the fix
                raise UserError(f"{self.json_path}: no image has an annotation to train on"
                                + (f" ({why})" if why else ""))
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self, index: int) -> str:
        return str(self.images_dir / self.coco.imgs[self.ids[index]]["file_name"])

    def notes(self) -> list[str]:
        lines = [f"{self.json_path.name}: {line}" for line in self.report.lines()]
        if self.empty:
            lines.append(f"{self.json_path.name}: {self.empty} images without annotations: not trained on "
                         "(kept for evaluation)")
        return lines

    def load(self, index: int) -> tuple[Image.Image, dict]:
        """The image and its targets: ``boxes`` (x0, y0, x1, y1), ``labels``, ``masks`` (N, H, W) uint8,
        crowd regions left out. Raises `UserError` for an unreadable image or one of another size."""
        info = self.coco.imgs[self.ids[index]]
        img = load_image(self.images_dir / info["file_name"])
        if img.size != (info["width"], info["height"]):
            raise UserError(f"{self.describe(index)} is {img.width}x{img.height}, the json says "
                            f"{info['width']}x{info['height']}")
        anns = [a for a in self.coco.imgToAnns[info["id"]] if not a["iscrowd"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        with warnings.catch_warnings():  # pycocotools' decoder warns about NumPy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, img.height, img.width))
        return img, dict(boxes=boxes, labels=torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                          dtype=torch.int64),
                         masks=torch.from_numpy(masks.astype(np.uint8)), image_id=info["id"])


def _joint(op: Callable, image: torch.Tensor, target: dict, **params) -> tuple[torch.Tensor, dict]:
    """``op``, a geometric function of ``torchvision.transforms.v2.functional``, applied to the image, its
    boxes and its masks alike (torchvision moves each kind its own way: pixels, coordinates, nearest-neighbour
    masks); plain tensors in and out, so the detector sees what it always did."""
    boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
    image, boxes, masks = (op(x, **params) for x in (image, boxes, tv_tensors.Mask(target["masks"])))
    return image, {**target, "boxes": boxes.as_subclass(torch.Tensor), "masks": masks.as_subclass(torch.Tensor)}


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its boxes and masks left to right."""
    return _joint(TF.horizontal_flip, image, target)


def resize_keep_ratio(image: torch.Tensor, target: dict, short: int, max_size: int) -> tuple[torch.Tensor, dict]:
    """mmdet's ``Resize(keep_ratio=True)`` to ``(short, max_size)``: one scale for both sides, the largest that
    keeps the shorter side at most ``short`` and the longer at most ``max_size``, sides rounded to the nearest
    pixel; bilinear without antialiasing (cv2's resize, which the official code uses)."""
    height, width = image.shape[-2:]
    scale = min(short / min(height, width), max_size / max(height, width))
    size = [max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)]
    return _joint(TF.resize, image, target, size=size, antialias=False)


def crop_window(image: torch.Tensor, target: dict, top: int, left: int, height: int, width: int
                ) -> tuple[torch.Tensor, dict]:
    """The window ``(top, left, height, width)`` of an image and its targets, as mmdet's ``RandomCrop``:
    boxes moved into the window and clipped to it, those left with no area dropped with their masks and
    labels. An image may be left without any box (``allow_negative_crop``); torchvision's detectors train on
    such an image as background. (torchvision's ``SanitizeBoundingBoxes`` is not used: it also drops boxes
    under one pixel, which the recipe keeps.)"""
    image, target = _joint(TF.crop, image, target, top=top, left=left, height=height, width=width)
    boxes = target["boxes"]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return image, {**target, **{k: target[k][keep] for k in ("boxes", "masks", "labels")}}


@dataclass(frozen=True)
class CropPolicy:
    """The crop policy of the official 3x recipe's augmentation (DETR's, through mmdet's ``AutoAugment``):
    after the flip, each image takes one of two policies with equal chance. This one resizes the image so its
    shorter side is one of ``sizes`` (longer at most ``max_size``), then crops a window whose height and width
    are each drawn uniformly from ``crop`` (clipped to the image), anywhere in it (`crop_window`).

    Both policies end alike: a resize to one of the training sizes (the other policy is only that resize).
    That resize is the detector's own training resize (``min_sizes`` / ``max_size``, inside torchvision's
    transform), so it is not done here: the data gives the detector either the image as it was or the crop,
    and every image is resized once at the end, in the one place that always did it."""

    sizes: tuple[int, ...] = (400, 500, 600)
    crop: tuple[int, int] = (384, 600)
    max_size: int = 1333
    chance: float = 0.5  # the share of images taking this policy

    @classmethod
    def for_sizes(cls, min_sizes: tuple[int, ...], max_size: int) -> CropPolicy:
        """The official sizes, fitted to a run's own training sizes: ``sizes`` and ``crop`` scaled by
        ``max(min_sizes) / 800`` (the recipe's largest training size), so that the crop keeps its share of the
        image a run trains on (the official values at the recipe's sizes); the longer side is capped at the
        run's ``max_size``, as every resize of the recipe is."""
        factor = max(min_sizes) / max(MULTI_SCALE)
        sizes = tuple(max(round(s * factor), 1) for s in cls.sizes)
        return cls(sizes, (max(round(cls.crop[0] * factor), 1), max(round(cls.crop[1] * factor), 1)), max_size)

    def describe(self) -> str:
        return (f"DETR crop for {self.chance:.0%} of the images: shorter side {'/'.join(map(str, self.sizes))} "
                f"(longer <= {self.max_size}), then a crop {self.crop[0]}-{self.crop[1]} px high and wide")

    def __call__(self, image: torch.Tensor, target: dict, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        """The policy, or the image left as it is, as ``rng`` draws."""
        if rng.random() >= self.chance:
            return image, target
        image, target = resize_keep_ratio(image, target, int(rng.choice(self.sizes)), self.max_size)
        height, width = image.shape[-2:]
        low, high = self.crop
        crop_h = int(rng.integers(min(height, low), min(height, high) + 1))
        crop_w = int(rng.integers(min(width, low), min(width, high) + 1))
        top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        return crop_window(image, target, top, left, crop_h, crop_w)


class DetectionItems(torch.utils.data.Dataset):
    """Images and targets for a DataLoader: ``train`` items are ``(index, epoch)`` (from ``EpochSampler``),
    flipped with probability ``flip``, then given to ``policy`` (e.g. `CropPolicy`) when there is one, all
    drawn from a generator seeded from ``(seed, epoch, index)``, so a resumed run sees the same flips and
    crops (without a policy, the draws are those of earlier versions). An unreadable image is replaced by the
    next readable one and its index returned for the report (else -1)."""

    def __init__(self, source: CocoData, *, train: bool, flip: float = 0.5, seed: int = 0,
                 policy: Callable[[torch.Tensor, dict, np.random.Generator], tuple[torch.Tensor, dict]] | None = None):
        self.source, self.train, self.flip, self.seed, self.policy = source, train, flip, seed, policy

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item) -> tuple[torch.Tensor, dict, int]:
        index, epoch = item if self.train else (item, 0)
        if not self.train:  # evaluation never swaps images: an unreadable one is left out, and reported
            try:
                img, target = self.source.load(index)
            except UserError:
                return torch.zeros(3, 32, 32), dict(image_id=self.source.ids[index]), index
            return to_tensor(img), target, -1
        (img, target), bad = first_readable(self.source, index)
        image = to_tensor(img)
        rng = np.random.default_rng((self.seed, epoch, index))
        if rng.random() < self.flip:
            image, target = hflip(image, target)
        if self.policy is not None:
            image, target = self.policy(image, target, rng)
        return image, target, bad


def collate(batch: list) -> tuple[list, list, list]:
    """Detection batches stay lists: images differ in size (the model resizes and pads them)."""
    return tuple(list(column) for column in zip(*batch, strict=True))


def load_datasets(train_path: str | os.PathLike, val_path: str | os.PathLike | None, say: Callable[[str], None]
                  ) -> tuple[CocoData, CocoData | None]:
    """The training and validation sets, their cleaning reported; the two must list the same categories."""
    train = CocoData(train_path, train=True)
    val = CocoData(val_path, train=False) if val_path is not None else None
    if val is not None and val.cat_ids != train.cat_ids:
        raise UserError(f"{val.json_path} lists other categories than {train.json_path}: "
                        f"{val.cat_ids[:8]} vs {train.cat_ids[:8]}")
    for source in (train, val):
        for line in source.notes() if source is not None else []:
            say(f"data: {line}")
    return train, val
