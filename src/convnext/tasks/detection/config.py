"""Detection training settings: the official COCO recipe (``object_detection/configs/convnext``), and how a
run far shorter or smaller than COCO's is fitted to it.

The official Mask R-CNN ConvNeXt-T config: AdamW lr 1e-4 at 16 images per step (8 GPUs x 2), betas
(0.9, 0.999), weight decay 0.05, layer-wise lr decay 0.95 over the backbone (6 layer ids for tiny, 12 for
small and base), stochastic depth 0.4, mmdet's warm-up (500 iterations rising linearly from 0.001 x lr) and
step schedule (x0.1 at epochs 27 and 33 of 36; the 1x schedule is mmdet's standard 12 epochs, steps at 8 and
11), flips, and multi-scale training (shorter side one of 480, 512, ..., 800; longer side at most 1333),
tested at 800 / 1333. Only ConvNeXt-T has an official Mask R-CNN config; small and base take stochastic depth
from their official Cascade Mask R-CNN configs (0.6 and 0.7).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ...errors import UserError
from ..classification.config import _parse

MULTI_SCALE = tuple(range(480, 801, 32))  # shorter sides of the official multi-scale training
DROP_PATH = {"tiny": 0.4, "small": 0.6, "base": 0.7}


@dataclass
class DetectConfig:
    """Every setting of a detection run (``convnext detect train``)."""

    recipe: str = "coco_3x"
    model: str = "maskrcnn_convnext_tiny"
    model_args: dict = field(default_factory=dict)  # e.g. {"dims": [...], "depths": [...], "fpn_channels": 64}
    data: str | None = None  # a COCO-format folder or json; None: the built-in demo data
    val_data: str | None = None
    output: str | None = None  # None: runs/detect-<recipe>-<model>
    backbone: str | None = None  # classification checkpoint for the backbone (any layout load_checkpoint reads)
    backbone_key: str | None = None  # None: the file's 'model' (non-EMA) weights, as the official code
    epochs: int = 36
    lr_steps: tuple[float, ...] = (27, 33)  # epochs after which the lr drops 10x
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    batch_size: int = 2  # per device
    lr: float = 1e-4  # at lr_batch images per step, used as is (AdamW; mmdet does not scale it)
    lr_batch: int = 16
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.95
    drop_path: float | None = None  # None: the official value for the backbone's size
    clip_grad: float | None = None
    min_sizes: tuple[int, ...] = MULTI_SCALE  # training: one shorter side per image, at random
    max_size: int = 1333
    test_size: int = 800
    hflip: float = 0.5
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    save_every_steps: int = 0
    fit_to_run: bool = False
    given: tuple[str, ...] = ()


RECIPES: dict[str, dict] = {
    "coco_3x": {},
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


def _size(model: str) -> str:
    return model.rsplit("_", 1)[-1]


def resolve_detect_config(recipe: str = "coco_3x", settings: list[str] | tuple[str, ...] = (),
                          **overrides) -> DetectConfig:
    """Defaults, then the recipe, then ``key=value`` settings, then keyword overrides (None: not given)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    names = {f.name for f in dataclasses.fields(DetectConfig)}
    values, given = {**RECIPES[recipe], "recipe": recipe}, set()
    defaults = DetectConfig()
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names or key == "given":
            raise UserError(f"bad setting {item!r}: expected key=value with one of {', '.join(sorted(names))}")
        values[key] = _parse(key, text, getattr(defaults, key))
        given.add(key)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    values.update(chosen)
    values["given"] = tuple(sorted(given | set(chosen)))
    try:
        config = DetectConfig(**values)
    except TypeError as err:
        raise UserError(f"bad detection setting: {err}") from None
    if config.drop_path is None:
        config.drop_path = DROP_PATH.get(_size(config.model), 0.0)
    if config.output is None:
        config.output = f"runs/detect-{recipe}-{config.model}"
    check_detect_config(config)
    return config


def check_detect_config(config: DetectConfig) -> None:
    """Every number in its range, or one `UserError` naming the setting."""
    def need(ok: bool, name: str, text: str) -> None:
        if not ok:
            raise UserError(f"setting {name}={json.dumps(getattr(config, name))}: must be {text}")

    for name in ("epochs", "batch_size", "lr_batch", "max_size", "test_size"):
        need(isinstance(getattr(config, name), int) and getattr(config, name) >= 1, name, "a whole number >= 1")
    for name in ("warmup_iters", "workers", "save_every_steps", "seed"):
        need(isinstance(getattr(config, name), int) and getattr(config, name) >= 0, name, "a whole number >= 0")
    need(isinstance(config.lr, int | float) and config.lr > 0, "lr", "above 0")
    need(isinstance(config.weight_decay, int | float) and config.weight_decay >= 0, "weight_decay", "at least 0")
    need(isinstance(config.layer_decay, int | float) and 0 < config.layer_decay <= 1, "layer_decay", "in (0, 1]")
    need(isinstance(config.drop_path, int | float) and 0 <= config.drop_path < 1, "drop_path", "in [0, 1)")
    need(0 < config.warmup_ratio <= 1, "warmup_ratio", "in (0, 1]")
    need(0 <= config.hflip <= 1, "hflip", "in [0, 1]")
    need(config.clip_grad is None or config.clip_grad > 0, "clip_grad", "above 0 (or null)")
    need(len(config.betas) == 2 and all(0 <= b < 1 for b in config.betas), "betas", "two numbers in [0, 1)")
    need(bool(config.min_sizes) and all(isinstance(s, int) and s >= 32 for s in config.min_sizes), "min_sizes",
         "whole numbers of at least 32")
    if not config.fit_to_run or "lr_steps" in config.given:  # else fit_to_run scales them, then checks
        check_lr_steps(config)
    if not config.model.startswith(("maskrcnn_convnext_", "fasterrcnn_convnext_")):
        raise UserError(f"--model {config.model}: a detector is needed, maskrcnn_convnext_{{tiny,small,base}} or "
                        "fasterrcnn_convnext_* (a classifier's weights go to --backbone)")
    if not isinstance(config.model_args, dict):
        raise UserError("setting model_args: expected a JSON object")


def check_lr_steps(config: DetectConfig) -> None:
    steps = list(config.lr_steps)
    if not (all(isinstance(s, int | float) and 0 < s < config.epochs for s in steps) and steps == sorted(steps)):
        raise UserError(f"setting lr_steps={json.dumps(steps)}: must be rising epochs inside the run's "
                        f"{config.epochs} (--fit-to-run scales the recipe's)")


def fit_to_run(config: DetectConfig, train_images: int, world_size: int = 1) -> list[str]:
    """Adapt the COCO schedule to a run of other length: lr steps at the same fractions of the run, the
    warm-up kept to a share of it. Only settings the user did not give change; one line per change."""
    if not config.fit_to_run:
        return []
    notes: list[str] = []
    recipe_epochs = RECIPES[config.recipe].get("epochs", DetectConfig.epochs)
    recipe_steps = RECIPES[config.recipe].get("lr_steps", DetectConfig.lr_steps)
    if config.epochs != recipe_epochs and "lr_steps" not in config.given:
        steps = tuple(round(s * config.epochs / recipe_epochs, 2) for s in recipe_steps)
        notes.append(f"lr_steps {list(config.lr_steps)} -> {list(steps)}: the recipe's drops at the same "
                     f"fractions of a {config.epochs}-epoch run")
        config.lr_steps = steps
    total = max(train_images // (config.batch_size * world_size), 1) * config.epochs
    cap = max(1, round(total * WARMUP_SHARE))
    if config.warmup_iters > cap and "warmup_iters" not in config.given:
        notes.append(f"warmup_iters {config.warmup_iters} -> {cap}: at most {WARMUP_SHARE:.0%} of this "
                     f"{total}-step run")
        config.warmup_iters = cap
    check_lr_steps(config)
    return notes


def lr_factor(step: int, steps_per_epoch: int, config: DetectConfig) -> float:
    """mmdet's schedule as a multiple of the peak lr: linear warm-up from ``warmup_ratio`` over
    ``warmup_iters`` steps, times 0.1 for every lr step (in epochs) passed."""
    warm = 1.0
    if step < config.warmup_iters:
        warm = config.warmup_ratio + (1 - config.warmup_ratio) * step / config.warmup_iters
    drops = sum(step >= s * steps_per_epoch for s in config.lr_steps)
    return warm * 0.1 ** drops


def config_dict(config: DetectConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: dict) -> DetectConfig:
    names = {f.name: f for f in dataclasses.fields(DetectConfig)}
    return DetectConfig(**{k: tuple(v) if isinstance(v, list) and k != "model_args" else v
                           for k, v in values.items() if k in names})
