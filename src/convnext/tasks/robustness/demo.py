"""The built-in robustness demo: two small models trained on the digits, then ImageNet-C's corruptions
applied to the 359 held-out digits, the paper's ConvNeXt design against the ResNet it started from."""

from __future__ import annotations

import os
from pathlib import Path

from ..classification.config import resolve_config
from ..classification.train import train
from ..loading import load_model
from .runner import Subject, identity_of

# Both at the demo recipe's 32 px and 12 epochs, with about the same width: the slim ConvNeXt of `convnext
# demo`, and the first step of the paper's roadmap (ResNet-50's design: BatchNorm, ReLU, 3x3 bottlenecks).
DEMO_MODELS = {
    "convnext": ("convnext_atto", {"dims": [24, 48, 96, 192], "depths": [1, 1, 3, 1]}),
    "resnet": ("roadmap_resnet50", {"dims": [16, 32, 64, 128], "depths": [1, 1, 3, 1]}),
}


def demo_subjects(output: str | os.PathLike, log=None) -> list[Subject]:
    """Train (or, when already trained in ``output``, reuse) the demo's model and baseline."""
    subjects = []
    for label, (model, model_args) in DEMO_MODELS.items():
        run = Path(output) / label
        config = resolve_config("demo", model=model, output=str(run), settings=[])
        config.model_args = model_args
        checkpoint = run / "last.pt"
        if not (run / "summary.json").is_file():
            train(config, resume=True, **({} if log is None else {"log": log}))
        subjects.append(Subject(label, load_model(model, checkpoint=checkpoint), identity_of(checkpoint, model)))
    return subjects
