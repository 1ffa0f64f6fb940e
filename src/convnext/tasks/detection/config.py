"""Detection training settings: the official COCO recipe (``object_detection/configs/convnext``), and how a
run far shorter or smaller than COCO's is fitted to it.

The official Mask R-CNN ConvNeXt-T config: AdamW lr 1e-4 at 16 images per step (8 GPUs x 2), betas
(0.9, 0.999), weight decay 0.05, layer-wise lr decay 0.95 over the backbone (6 layer ids for tiny, 12 for
small and base), stochastic depth 0.4, mmdet's warm-up (500 iterations rising linearly from 0.001 x lr) and
step schedule (x0.1 at epochs 27 and 33 of 36; the 1x schedule is mmdet's standard 12 epochs, steps at 8 and
11), flips, and multi-scale training (shorter side one of 480, 512, ..., 800; longer side at most 1333),
tested at 800 / 1333. The official 3x config adds DETR's augmentation: after the flip, half the images are
resized to a shorter side of 400, 500 or 600 and cropped to a window 384-600 px high and wide before that
multi-scale resize (``augment="detr"``, `convnext.tasks.detection.data.CropPolicy`). Only ConvNeXt-T has an
official Mask R-CNN config; small and base take stochastic depth from their official Cascade Mask R-CNN
configs (0.6 and 0.7).

The official Cascade Mask R-CNN configs (``cascade_mask_rcnn_convnext_*_giou_4conv1f_adamw_3x``, ImageNet-1K
backbones) change the optimiser only: lr 2e-4, layer decay 0.7 (0.8 for base); stochastic depth 0.4 / 0.6 /
0.7 for tiny / small / base (0.7 and 0.8 for the ImageNet-22K large and xlarge). Settings left unset take the
values of the chosen model's config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from ...engine.config import AT_LEAST_1, NON_NEGATIVE, Fit, Range, RunConfig, apply_fits, resolve
from ...errors import UserError

MULTI_SCALE = tuple(range(480, 801, 32))  # shorter sides of the official multi-scale training
DROP_PATH = {"tiny": 0.4, "small": 0.6, "base": 0.7, "large": 0.7, "xlarge": 0.8}
DETECTORS = ("maskrcnn_convnext_", "fasterrcnn_convnext_", "cascade_mask_rcnn_convnext_")
# The official 3x configs' optimiser where the two systems differ (AdamW, ImageNet-1K backbones): Mask R-CNN lr
# 1e-4 with layer decay 0.95; Cascade Mask R-CNN lr 2e-4 with 0.7 (0.8 for base)
LR = {"maskrcnn": 1e-4, "fasterrcnn": 1e-4, "cascade": 2e-4}
LAYER_DECAY = {"maskrcnn": 0.95, "fasterrcnn": 0.95, "cascade": 0.7, "cascade_base": 0.8}
# "multiscale": flips and the multi-scale resize; "detr": DETR's crop policy too, as the official 3x configs
AUGMENTS = ("multiscale", "detr")


@dataclass
class DetectConfig(RunConfig):
    """Every setting of a detection run (``convnext detect train``)."""

    recipe: str = "coco_3x"
    model: str = "maskrcnn_convnext_tiny"
    backbone: str | None = None  # classification checkpoint for the backbone (any layout load_checkpoint reads)
    backbone_key: str | None = None  # None: the file's 'model' (non-EMA) weights, as the official code
    epochs: int = 36
    lr_steps: tuple[float, ...] = (27, 33)  # epochs after which the lr drops 10x
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    batch_size: int = 2  # per device
    lr: float | None = None  # None: the official config's for the model (LR)
    lr_batch: int = 16  # the batch lr is given for; used as is (AdamW; mmdet does not scale it)
    layer_decay: float | None = None  # None: the official config's for the model (LAYER_DECAY)
    min_sizes: tuple[int, ...] = MULTI_SCALE  # training: one shorter side per image, at random
    max_size: int = 1333
    test_size: int = 800
    # the default is what runs of earlier versions did (a stored run without the key resumes as it started);
    # the coco_3x recipe sets "detr"
    augment: str = "multiscale"

    RANGES: ClassVar[dict[str, Range]] = {
        **RunConfig.RANGES, "epochs": AT_LEAST_1, "warmup_iters": NON_NEGATIVE,
        "warmup_ratio": Range(0, 1, open_low=True), "lr_batch": AT_LEAST_1, "lr_steps": Range(0, open_low=True),
        "min_sizes": Range(32), "max_size": Range(32), "test_size": Range(32),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**RunConfig.CHOICES, "augment": AUGMENTS}
    FREE_ON_RESUME: ClassVar[tuple[str, ...]] = (*RunConfig.FREE_ON_RESUME, "epochs")

    def complete(self) -> None:
        size, family = self.model.rsplit("_", 1)[-1], self.model.split("_", 1)[0]
        if self.drop_path is None:
            self.drop_path = DROP_PATH.get(size, 0.0)
        if self.lr is None:
            self.lr = LR.get(family, LR["maskrcnn"])
        if self.layer_decay is None:
            self.layer_decay = LAYER_DECAY.get(f"{family}_{size}", LAYER_DECAY.get(family, LAYER_DECAY["maskrcnn"]))
        if self.output is None:
            self.output = f"runs/detect-{self.recipe}-{self.model}"

    def check_more(self) -> None:
        if not self.min_sizes:
            raise UserError("setting min_sizes=[]: give at least one shorter side")
        if not self.fit_to_run or "lr_steps" in self.given:  # else fit_to_run scales them, then checks
            check_lr_steps(self)
        if not self.model.startswith(DETECTORS):
            raise UserError(f"--model {self.model}: a detector is needed, maskrcnn_convnext_{{tiny,small,base}}, "
                            "fasterrcnn_convnext_* or cascade_mask_rcnn_convnext_{tiny,...,xlarge} (a classifier's "
                            "weights go to --backbone)")


RECIPES: dict[str, dict] = {
    "coco_3x": dict(augment="detr"),
    "coco_1x": dict(epochs=12, lr_steps=(8, 11)),
    # the built-in demo on 2 CPU cores: a slim detector on 128 px images (see convnext.tasks.detection.demo), its
    # backbone the slim ConvNeXt of the classification demo
    "demo": dict(model="maskrcnn_convnext_tiny",
                 model_args=dict(dims=[24, 48, 96, 192], depths=[1, 1, 3, 1], fpn_channels=32, head_width=128,
                                 rois_per_image=32, proposals=200),
                 epochs=16, lr_steps=(12, 15), warmup_iters=50, batch_size=4, lr=1e-3, lr_batch=4, layer_decay=1.0,
                 drop_path=0.0, min_sizes=(96, 112, 128), max_size=256, test_size=128, workers=0,
                 output="runs/detect-demo"),
}
WARMUP_SHARE = 0.05  # a fitted run warms up for at most this share of its steps


def resolve_detect_config(recipe: str = "coco_3x", settings: list[str] | tuple[str, ...] = (), *,
                          command_defaults: dict | None = None, **overrides) -> DetectConfig:
    """Defaults, then the recipe, then ``command_defaults`` (not given), then ``key=value`` settings, then
    keyword overrides (None: not given)."""
    return resolve(DetectConfig, RECIPES, recipe, settings, command_defaults=command_defaults, **overrides)


def check_lr_steps(config: DetectConfig) -> None:
    steps = list(config.lr_steps)
    if not (all(0 < s < config.epochs for s in steps) and steps == sorted(steps)):
        raise UserError(f"setting lr_steps={json.dumps(steps)}: must be rising epochs inside the run's "
                        f"{config.epochs}" + ("" if config.fit_to_run else " (--fit-to-run scales the recipe's)"))


def fit_to_run(config: DetectConfig, train_images: int, world_size: int = 1) -> list[str]:
    """Adapt the COCO schedule to a run of other length: lr steps at the same fractions of the run, the
    warm-up kept to a share of it. Only settings the user did not give change; one line per change."""
    notes = apply_fits(config, lambda: _fits(config, train_images, world_size))
    check_lr_steps(config)
    return notes


def _fits(config: DetectConfig, train_images: int, world_size: int) -> Iterator[Fit]:
    recipe_epochs = RECIPES[config.recipe].get("epochs", DetectConfig.epochs)
    recipe_steps = RECIPES[config.recipe].get("lr_steps", DetectConfig.lr_steps)
    if config.epochs != recipe_epochs:
        yield ("lr_steps", tuple(round(s * config.epochs / recipe_epochs, 2) for s in recipe_steps),
               f"the recipe's drops at the same fractions of a {config.epochs}-epoch run")
    total = max(train_images // (config.batch_size * config.accum_steps * world_size), 1) * config.epochs
    yield ("warmup_iters", min(config.warmup_iters, max(1, round(total * WARMUP_SHARE))),
           f"at most {WARMUP_SHARE:.0%} of this {total}-step run")


def lr_factor(step: int, steps_per_epoch: int, config: DetectConfig) -> float:
    """mmdet's schedule as a multiple of the peak lr: linear warm-up from ``warmup_ratio`` over
    ``warmup_iters`` steps, times 0.1 for every lr step (in epochs) passed."""
    warm = 1.0
    if step < config.warmup_iters:
        warm = config.warmup_ratio + (1 - config.warmup_ratio) * step / config.warmup_iters
    drops = sum(step >= s * steps_per_epoch for s in config.lr_steps)
    return warm * 0.1 ** drops
