"""Loading a segmentation model for use, and writing its predictions: raw label maps and colour overlays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ...data.images import UNREADABLE
from ...errors import UserError
from ...files import atomic_write, check_distinct_outputs, make_folder
from ...models.convnext import build_model, create_model
from ...weights import read_checkpoint_file
from ...weights.segmentation import _unwrap, convert_segmentation_state_dict
from .evaluate import EvalSettings, to_input
from .inference import MS_RATIOS, segment
from .plots import palette


def load_segmentation_model(name: str | None = None, *, checkpoint: str | os.PathLike | None = None,
                            pretrained: bool | str = False, num_classes: int | None = None
                            ) -> tuple[nn.Module, EvalSettings]:
    """A segmentation model in eval mode and the evaluation settings that go with its weights.

    A `convnext segment train` checkpoint rebuilds its own model and crop; any other checkpoint (official,
    Hugging Face) needs ``name`` and gives its class count through its classifier."""
    if checkpoint is None and not pretrained:
        raise UserError("give --checkpoint CKPT, or --model with --pretrained [TAG]")
    if checkpoint is None:
        model = create_model(name, pretrained=pretrained)
        crop = model.pretrained_cfg["input_size"][1]
        return model.eval(), EvalSettings(scale=(4 * crop, crop), crop=crop, stride=crop * 2 // 3)
    raw = read_checkpoint_file(Path(checkpoint))
    config = raw.get("config") if isinstance(raw.get("config"), dict) else None
    if config is not None and "crop" not in config and not str(config.get("model", "")).startswith("upernet_"):
        model = str(config.get("model"))
        made_by = ("`convnext detect train` (a detector)" if "category_ids" in raw or "rcnn" in model
                   else "`convnext train` (an image classifier)")
        raise UserError(f"{checkpoint} holds a {model} from {made_by}; `convnext segment` takes segmentation "
                        "checkpoints (`--pretrained` of a backbone for train)")
    if config is not None and "crop" in config:  # one of our runs
        if num_classes is not None and num_classes != config["num_classes"]:
            raise UserError(f"{checkpoint} was trained for {config['num_classes']} classes, not --num-classes "
                            f"{num_classes}")
        model = build_model(config["model"], num_classes=config["num_classes"], **config["model_args"])
        crop = config["crop"]
        settings = EvalSettings(scale=tuple(config["scale"]), crop=crop, stride=config["stride"] or crop * 2 // 3)
    else:
        if name is None:
            raise UserError("this checkpoint does not name its model: give --model (e.g. upernet_convnext_tiny)")
        state_dict = convert_segmentation_state_dict(_unwrap(raw))
        found = state_dict.get("decode_head.conv_seg.weight")
        model = build_model(name, num_classes=num_classes or (found.shape[0] if found is not None else 150))
        settings = EvalSettings()
    model.load_weights(raw)
    return model.eval(), settings


def colour_overlay(image: Image.Image, labels: np.ndarray, num_classes: int, alpha: float = 0.5) -> Image.Image:
    """The image with each pixel tinted by its class colour."""
    colours = palette(num_classes)[labels]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def predict_folder(model: nn.Module, inputs: list[Path], out_dir: str | os.PathLike, settings: EvalSettings, *,
                   num_classes: int, multi_scale: bool = False, device: str | torch.device = "cpu") -> list[dict]:
    """For each image: ``<stem>_labels.png`` (the class index of every pixel) and ``<stem>_overlay.png``.

    Unreadable images are skipped and listed in the result (``error``)."""
    out = Path(out_dir)
    check_distinct_outputs([Path(p) for p in inputs], lambda path: f"{path.stem}_overlay.png")
    make_folder(out)
    results = []
    for path in inputs:
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except UNREADABLE as err:
            results.append(dict(image=str(path), error=f"cannot read ({err})"))
            continue
        probs = segment(model, to_input(image, settings.mean, settings.std).to(device), num_classes=num_classes,
                        scale=settings.scale, crop=settings.crop, stride=settings.stride,
                        ratios=MS_RATIOS if multi_scale else (1.0,), flip=multi_scale, mode=settings.mode)
        labels = probs.argmax(0).cpu().numpy().astype(np.uint8)
        label_path, overlay_path = out / f"{path.stem}_labels.png", out / f"{path.stem}_overlay.png"
        atomic_write(label_path, lambda tmp, labels=labels: Image.fromarray(labels).save(tmp, format="PNG"))
        overlay = colour_overlay(image, labels, num_classes)
        atomic_write(overlay_path, lambda tmp, overlay=overlay: overlay.save(tmp, format="PNG"))
        counts = np.bincount(labels.ravel(), minlength=num_classes)
        results.append(dict(image=str(path), labels=str(label_path), overlay=str(overlay_path),
                            classes={int(k): round(float(counts[k]) / labels.size, 4) for k in np.nonzero(counts)[0]}))
    return results
