"""Classify image files: each model's own evaluation preprocessing, batches over folders, named classes.

An unreadable file never stops a run: it comes back as a ``Prediction`` with an ``error`` and the caller
decides what to do (the CLI reports it and exits non-zero at the end).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ...data.images import IMAGE_EXTENSIONS, eval_transform, load_image
from ...errors import UserError
from ...files import natural_key
from ...weights import LABEL_SETS

_DATA = Path(__file__).resolve().parents[2] / "data" / "assets"
# Names of the label sets of released heads, shipped with the package (see data/IMAGENET_CLASSES_SOURCE.md).
_LABEL_FILES = {"imagenet-1k": "imagenet_classes.txt", "imagenet-22k": "imagenet22k_classes.txt.gz"}


class ClassLabel(NamedTuple):
    name: str
    id: str | None = None  # e.g. the WordNet synset of an ImageNet class


@dataclass
class Prediction:
    """The top classes of one file, best first, as (class index, probability); or why it could not be read."""

    path: Path
    top: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


def read_labels(path: str | os.PathLike) -> list[ClassLabel]:
    """Class names, one per line in class-index order; a line may be ``ID<TAB>name``."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read class names from {path}: {err}") from None
    labels = []
    for line in lines:
        if line.strip():
            ident, tab, name = line.partition("\t")
            labels.append(ClassLabel(name.strip(), ident) if tab else ClassLabel(line.strip()))
    return labels


def class_labels(num_classes: int, classes_file: str | os.PathLike | None = None,
                 label_names: Sequence[str] | None = None, label_set: str | None = None) -> list[ClassLabel]:
    """Names for a head of ``num_classes``: from ``classes_file``, else the ``label_names`` a checkpoint
    carries, else the packaged names of the weights' ``label_set`` (``"imagenet-1k"``, ``"imagenet-22k"``),
    else "class i". A head's size alone never picks names: a 1000-class fine-tune is not ImageNet."""
    if classes_file is not None:
        labels = read_labels(classes_file)
        if len(labels) != num_classes:
            raise UserError(f"{classes_file} names {len(labels)} classes but the model has {num_classes}")
        return labels
    if label_names is not None and len(label_names) == num_classes:
        return [ClassLabel(str(name)) for name in label_names]
    if label_set in _LABEL_FILES and LABEL_SETS[label_set] == num_classes:
        # WordNet lemmas: the first one is the everyday name ("tench, Tinca tinca" -> "tench").
        return [ClassLabel(label.name.split(", ")[0], label.id)
                for label in read_labels(_DATA / _LABEL_FILES[label_set])]
    return [ClassLabel(f"class {i}") for i in range(num_classes)]


def find_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, plus every image file (``IMAGE_EXTENSIONS``; hidden ones skipped) under each folder."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            # a broken link is listed too: it is then reported as unreadable, like training reports it
            found = sorted((p for p in item.rglob("*") if (p.is_file() or p.is_symlink())
                            and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(item).parts)), key=natural_key)
            if not found:
                raise UserError(f"no image files in folder {item}")
            files += found
        else:
            files.append(item)  # a missing file is reported when it is read, like any unreadable one
    return files


@torch.inference_mode()
def predict(model: nn.Module, paths: Sequence[str | os.PathLike], *, topk: int = 5,
            batch_size: int = 32) -> Iterator[Prediction]:
    """Top-``topk`` softmax probabilities for each file, in input order, ``batch_size`` images per forward."""
    if topk < 1 or batch_size < 1:
        raise UserError(f"--topk and --batch-size must be at least 1, got {topk} and {batch_size}")
    model.eval()
    transform = eval_transform(model.pretrained_cfg)
    weight = next(model.parameters(), torch.empty(0))  # an INT8 OpenVINO model has none: CPU, float32 input
    device, dtype = weight.device, weight.dtype
    for start in range(0, len(paths), batch_size):
        batch = [Prediction(Path(p)) for p in paths[start:start + batch_size]]
        images = []
        for item in batch:
            try:
                images.append(transform(load_image(item.path)))
            except UserError as err:
                item.error = str(err)
        if images:
            probs = model(torch.stack(images).to(device, dtype)).float().softmax(-1)
            values, indices = probs.topk(min(topk, probs.shape[-1]))
            readable = (item for item in batch if item.error is None)
            for item, p, i in zip(readable, values.tolist(), indices.tolist(), strict=True):
                item.top = list(zip(i, p, strict=True))
        yield from batch


def prediction_record(pred: Prediction, labels: Sequence[ClassLabel]) -> dict:
    """One file's result as plain JSON data."""
    if pred.error is not None:
        return {"file": str(pred.path), "error": pred.error}
    top = []
    for rank, (index, prob) in enumerate(pred.top, 1):
        entry = {"rank": rank, "index": index, "label": labels[index].name, "probability": round(prob, 6)}
        if labels[index].id is not None:
            entry["id"] = labels[index].id
        top.append(entry)
    return {"file": str(pred.path), "predictions": top}


def format_prediction(pred: Prediction, labels: Sequence[ClassLabel], *, unicode: bool = True) -> str:
    """A file name, then one line per class: name, a probability bar and the percentage."""
    width = max(len(labels[i].name) for i, _ in pred.top)
    lines = [str(pred.path)]
    for index, prob in pred.top:
        lines.append(f"  {labels[index].name:<{width}}  {_bar(prob, 20, unicode)}  {100 * prob:5.1f}%")
    return "\n".join(lines)


def _bar(fraction: float, width: int, unicode: bool) -> str:
    if not unicode:
        return ("#" * round(fraction * width)).ljust(width)
    eighths = round(fraction * width * 8)
    return ("█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]).ljust(width)
