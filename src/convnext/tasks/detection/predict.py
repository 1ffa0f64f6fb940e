"""Detections on image files: drawn (boxes, labels, scores, masks) and as COCO result records."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ...data.images import load_image, to_tensor
from ...errors import UserError
from ...files import atomic_write, check_distinct_outputs
from ...models import MODEL_ARCHS, build_model
from ...models.cascade import SIZES as CASCADE_SIZES
from ...weights import read_checkpoint_file, require_finite
from ...weights.detection import is_mmdet_detector
from .config import DetectConfig
from .evaluate import to_results


def build_run_detector(config: DetectConfig, num_classes: int) -> nn.Module:
    """The run's detector: its model, architecture options, stochastic depth and input sizes."""
    return build_model(config.model, num_classes=num_classes, drop_path_rate=config.drop_path,
                       min_size=tuple(config.min_sizes), max_size=config.max_size, test_size=config.test_size,
                       **config.model_args)


def load_detector(checkpoint: str | Path) -> tuple[nn.Module, list[str], list[int]]:
    """A detector a `convnext detect train` run saved, or an official released Cascade Mask R-CNN file, in eval
    mode, with its category names and json ids."""
    raw = read_checkpoint_file(Path(checkpoint))
    if isinstance(raw.get("state_dict"), dict) and is_mmdet_detector(raw["state_dict"]):
        return _released_cascade(raw, checkpoint)
    if not isinstance(raw.get("config"), dict) or "category_ids" not in raw:
        raise UserError(f"{checkpoint} is not a checkpoint of `convnext detect train` (no config and categories)")
    model = build_run_detector(DetectConfig.from_dict(raw["config"]), len(raw["classes"]) + 1)
    require_finite(raw["model"], checkpoint)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as err:
        raise UserError(f"{checkpoint} does not fit the detector its config describes: "
                        f"{str(err).strip().splitlines()[0]}") from None
    return model.eval(), list(raw["classes"]), list(raw["category_ids"])


def coco_categories() -> tuple[list[str], list[int]]:
    """COCO's 80 category names and json ids, from torchvision's package data (its detection weights' meta
    lists the names by category id, with "N/A" at the unused ids)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    ids = [i for i, name in enumerate(names) if i and name != "N/A"]
    return [names[i] for i in ids], ids


def _released_cascade(raw: dict, checkpoint: str | Path) -> tuple[nn.Module, list[str], list[int]]:
    """An official Cascade Mask R-CNN file (mmdet's names): its size read from the backbone's shapes, its
    classes from the file's meta (COCO's json ids when they are COCO's 80)."""
    state = raw["state_dict"]
    size = released_size(state)
    if size not in CASCADE_SIZES or "roi_head.bbox_head.0.fc_cls.weight" not in state:
        raise UserError(f"{checkpoint} holds a mmdetection detector other than the official Cascade Mask R-CNN on "
                        f"ConvNeXt-T/S/B/L/XL")
    num_classes = int(state["roi_head.bbox_head.0.fc_cls.weight"].shape[0])  # the background included
    model = build_model(f"cascade_mask_rcnn_convnext_{size}", num_classes=num_classes)
    model.load_weights(checkpoint)
    coco_names, coco_ids = coco_categories()
    names = [str(n) for n in (raw.get("meta") or {}).get("CLASSES") or coco_names][:num_classes - 1]
    if len(names) != num_classes - 1:
        raise UserError(f"{checkpoint} names {len(names)} classes for a classifier of {num_classes - 1}")
    # the released files are COCO's: their 80 classes in COCO's order, scored under COCO's json ids
    ids = coco_ids if len(names) == len(coco_ids) else list(range(1, len(names) + 1))
    return model.eval(), names, ids


def released_size(state: dict) -> str | None:
    """The ConvNeXt size (tiny, ..., xlarge) of an official detection file, from its backbone's widths and
    depths; None for another backbone."""
    dims = [int(state[key].shape[0]) for i in range(4) if (key := f"backbone.norm{i}.weight") in state]
    depths = [len({k.split(".")[3] for k in state if k.startswith(f"backbone.stages.{i}.")}) for i in range(4)]
    return next((name.removeprefix("convnext_") for name, (_, arch) in MODEL_ARCHS.items()
                 if list(arch.get("dims", ())) == dims and list(arch.get("depths", ())) == depths), None)


def check_proportions(model: nn.Module, image: torch.Tensor, path: Path) -> None:
    """One line for an image the detector cannot take: resized to its test size (shorter side ``test_size``,
    longer at most ``max_size``), a side would fall below one pixel (e.g. a 4000 x 1 strip)."""
    height, width = image.shape[-2:]
    scale = min(model.transform.min_size[-1] / min(height, width), model.transform.max_size / max(height, width))
    if round(min(height, width) * scale) < 1:
        raise UserError(f"cannot detect in {path}: {width}x{height} is too thin for the detector's input size "
                        f"(shorter side {model.transform.min_size[-1]}, longer at most {model.transform.max_size})")


PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990"]


@torch.no_grad()
def detect(model: nn.Module, image: torch.Tensor, score: float = 0.5) -> dict:
    """The detections of one float CHW image with a score of at least ``score``."""
    model.eval()
    output = model([image.to(next(model.parameters()).device)])[0]
    keep = output["scores"] >= score
    return {k: v[keep].cpu() for k, v in output.items()}


def draw(image: torch.Tensor, output: dict, classes: list[str]) -> torch.Tensor:
    """``image`` (float CHW in [0, 1]) with masks filled in, boxes drawn, and "label score" above each box."""
    picture = (image.clamp(0, 1) * 255).to(torch.uint8)
    colours = [PALETTE[(int(label) - 1) % len(PALETTE)] for label in output["labels"]]
    if "masks" in output and len(output["masks"]):
        picture = draw_segmentation_masks(picture, output["masks"][:, 0] > 0.5, alpha=0.45, colors=colours)
    if len(output["boxes"]):
        labels = [f"{classes[int(label) - 1]} {float(s):.2f}" for label, s in zip(output["labels"], output["scores"],
                                                                                   strict=True)]
        width = max(1, round(min(picture.shape[-2:]) / 160))
        picture = draw_bounding_boxes(picture, output["boxes"], labels=labels, colors=colours, width=width)
    return picture


def predict_files(model: nn.Module, files: list[Path], classes: list[str], cat_ids: list[int], *,
                  out_dir: Path | None, score: float = 0.5, image_ids: dict[str, int] | None = None
                  ) -> tuple[list[dict], dict[Path, str]]:
    """Detect on every file; with ``out_dir`` write ``<stem>.pred.png`` there. Returns COCO result records,
    ``image_id`` from ``image_ids`` (file name -> the json's id) or the file's position from 1, and the files that
    could not be read (skipped), each with its one-line reason."""
    from PIL import Image

    if out_dir is not None:
        check_distinct_outputs(files, lambda path: f"{path.stem}.pred.png")
    unlisted = [path.name for path in files if image_ids is not None and path.name not in image_ids]
    if unlisted:  # its position would pass for the id of another image of the json
        raise UserError(f"{len(unlisted)} image(s) not in --annotations, e.g. {unlisted[0]}: results name images by "
                        "the json's ids; predict only the images it lists, or leave out --annotations")
    records, skipped = [], {}
    for position, path in enumerate(files, start=1):
        try:
            image = to_tensor(load_image(path))
            check_proportions(model, image, path)
        except UserError as err:
            skipped[path] = str(err)
            continue
        output = detect(model, image, score)
        image_id = (image_ids or {}).get(path.name, position)
        records += to_results(output, image_id, cat_ids)
        if out_dir is not None:
            picture = draw(image, output, classes).permute(1, 2, 0).numpy()
            atomic_write(out_dir / f"{path.stem}.pred.png", lambda tmp, p=picture: Image.fromarray(p).save(tmp,
                                                                                                       format="PNG"))
    return records, skipped
