"""Classification settings: every knob with the paper's default (ImageNet-1K, Table 5), and named recipes that
override a few. They resolve as every task's do (`convnext.engine.config.resolve`); the result is saved with the
run (``config.json``) and inside every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...engine.config import (
    AT_LEAST_1,
    FRACTION,
    FRACTION_BELOW_1,
    NON_NEGATIVE,
    POSITIVE,
    Fit,
    Range,
    RunConfig,
    apply_fits,
    check_model_builds,
    check_order,
    resolve,
    task_of_model,
)
from ...errors import UserError
from ...models.convnext import MAX_RES, MIN_RES
from ...weights import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
LR_SCALINGS = ("linear", "sqrt", "none")
MIN_CROP_PCT = 0.5  # evaluation resizes to res / crop_pct: a smaller share would ask for huge images
MAX_EPOCHS = 10_000


@dataclass
class TrainConfig(RunConfig):
    """Every setting of a classification run. Learning rates are given for ``lr_batch`` images per step and
    scaled linearly to the effective batch (per-device batch x accumulation steps x world size)."""

    recipe: str = "in1k"
    model: str = "convnext_tiny"
    finetune: str | None = None  # initial weights: any checkpoint load_checkpoint understands
    finetune_key: str | None = None  # e.g. "model_ema"
    # optimisation (AdamW, per-iteration warm-up + cosine)
    epochs: int = 300
    warmup_epochs: float = 20
    lr: float = 4e-3
    lr_batch: int = 4096
    min_lr: float = 1e-6
    # model regularisation
    layer_scale_init: float | None = None  # None: the model's own default
    head_init_scale: float = 1.0
    ema: bool = True
    # data and augmentation
    res: int = 224
    crop_pct: float | None = None  # evaluation crop; None: 0.875 below 384, 1.0 (no crop) at 384 and up
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    randaug_n: int = 2
    randaug_m: int = 9  # timm's 0..10 scale
    randaug_mstd: float = 0.5
    color_jitter: float = 0.4  # only where RandAugment is off, as in timm and the official code
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    # machinery
    workers: int = 8
    compile: bool = False
    channels_last: bool = True
    # how lr follows the effective batch from lr_batch: linear, sqrt or none (fit_to_run may choose none)
    lr_scaling: str = "linear"

    RANGES: ClassVar[dict[str, Range]] = {
        **RunConfig.RANGES, "epochs": Range(1, MAX_EPOCHS), "warmup_epochs": Range(0, MAX_EPOCHS),
        "lr_batch": AT_LEAST_1,
        "min_lr": NON_NEGATIVE, "layer_scale_init": NON_NEGATIVE, "head_init_scale": POSITIVE,
        "res": Range(MIN_RES, MAX_RES), "crop_pct": Range(MIN_CROP_PCT, 1), "mean": Range(-math.inf),
        "std": POSITIVE,
        "crop_scale": Range(0, 1, open_low=True), "crop_ratio": POSITIVE, "randaug_n": NON_NEGATIVE,
        "randaug_m": Range(0, 10), "randaug_mstd": NON_NEGATIVE, "color_jitter": NON_NEGATIVE, "reprob": FRACTION,
        "mixup": NON_NEGATIVE, "cutmix": NON_NEGATIVE, "mixup_prob": FRACTION, "mixup_switch_prob": FRACTION,
        "smoothing": FRACTION_BELOW_1,
    }
    CHOICES: ClassVar[dict] = {"interpolation": INTERPOLATIONS, "lr_scaling": LR_SCALINGS}
    FREE_ON_RESUME: ClassVar[tuple[str, ...]] = (*RunConfig.FREE_ON_RESUME, "epochs", "compile")
    RESERVED_MODEL_ARGS: ClassVar[tuple[str, ...]] = ("num_classes", "drop_path_rate", "head_init_scale",
                                                      "layer_scale_init_value")

    def complete(self) -> None:
        if self.drop_path is None:
            self.drop_path = _DROP_PATH.get(self.recipe, {}).get(self.model, 0.0)
        if self.output is None:
            self.output = f"runs/{self.recipe}-{self.model}"
        if self.crop_pct is None:
            self.crop_pct = 1.0 if self.res >= 384 else 0.875

    def check_more(self) -> None:
        check_order(self, "crop_scale", "crop_ratio")
        task = task_of_model(self.model)
        if task != "classification":
            command = "segment" if task == "segmentation" else "detect"
            raise UserError(f"--model {self.model} is a {task} model: `convnext {command} train` trains it "
                            "(`convnext train` trains classifiers, e.g. convnext_tiny)")
        if self.model_args.get("in_chans", 3) != 3:
            raise UserError(f"setting model_args in_chans={self.model_args['in_chans']!r}: training reads images as "
                            "RGB, 3 channels (a grayscale image is repeated to 3)")
        check_model_builds(self.model, self.model_args)
        if self.data and self.output and Path(self.output).resolve().is_relative_to(Path(self.data).resolve()):
            raise UserError(f"--output {self.output} is inside --data {self.data}, where every folder is a class: "
                            "the run's checkpoints and plots would be read as images; choose a folder outside it")


# Stochastic depth per model, paper Tables 5 and 6 / TRAINING.md.
_DROP_PATH = {
    "in1k": {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5, "convnext_large": 0.5,
             "convnext_isotropic_small": 0.1, "convnext_isotropic_base": 0.2,
             "convnext_isotropic_large": 0.5},
    "in22k": {"convnext_tiny": 0.0, "convnext_small": 0.0, "convnext_base": 0.1, "convnext_large": 0.1,
              "convnext_xlarge": 0.2},
    "finetune": {"convnext_tiny": 0.0, "convnext_small": 0.1, "convnext_base": 0.2, "convnext_large": 0.3,
                 "convnext_xlarge": 0.4},
}

RECIPES: dict[str, dict] = {
    # Table 5, ImageNet-1K from scratch: the TrainConfig defaults.
    "in1k": {},
    # Table 5, ImageNet-22K pre-training: 90 epochs, 5 warm-up, no EMA.
    "in22k": dict(epochs=90, warmup_epochs=5, ema=False),
    # Table 6, fine-tuning (22K->1K, or 1K at 384 with --res 384): no Mixup/CutMix, layer decay 0.8.
    "finetune": dict(epochs=30, warmup_epochs=0, lr=5e-5, lr_batch=512, weight_decay=1e-8, mixup=0.0,
                     cutmix=0.0, head_init_scale=0.001, layer_decay=0.8, ema=False),
    # The built-in digits on a laptop CPU: a slim ConvNeXt at 32 px, light augmentation, no flips.
    "demo": dict(model="convnext_atto", model_args={"dims": [24, 48, 96, 192], "depths": [1, 1, 3, 1]},
                 res=32, crop_pct=1.0, epochs=12, warmup_epochs=1, batch_size=64, lr=4e-3, lr_batch=64,
                 weight_decay=0.05, crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), hflip=0.0, randaug_n=0,
                 color_jitter=0.0, reprob=0.0, mixup=0.0, cutmix=0.0, ema=False, drop_path=0.0, workers=0,
                 output="runs/demo"),
}


# The paper warms up for 20 of its 300 epochs: a fitted run keeps that share at most.
WARMUP_SHARE = 20 / 300
# An EMA of decay d averages over ~1 / (1 - d) steps; a run shorter than this many such horizons leaves the
# EMA weights mostly at their starting values.
EMA_MIN_HORIZONS = 2
# A fitted run below the recipe's batch uses this share of its peak lr, unscaled (measured on real photos:
# README, "Training on your own images").
SMALL_BATCH_LR_SHARE = 0.5
# Below this many optimizer steps a run is "short": the paper's strong regularisation (Mixup/CutMix, random
# erasing) keeps such a run from fitting at all.
SHORT_RUN_STEPS = 2000


def scaled_lr(config: TrainConfig, eff_batch: int) -> float:
    """The peak lr at ``eff_batch``: ``lr`` is given for ``lr_batch`` images and scaled linearly (the paper's
    rule), by the square root of the batch ratio (``lr_scaling="sqrt"``), or not at all (``"none"``)."""
    ratio = eff_batch / config.lr_batch
    return config.lr * {"linear": ratio, "sqrt": ratio ** 0.5, "none": 1.0}[config.lr_scaling]


def ema_warning(config: TrainConfig, total_steps: int) -> str | None:
    """Why the EMA weights of this run would be meaningless, or None."""
    horizon = 1 / (1 - config.ema_decay) if config.ema_decay < 1 else float("inf")
    if config.ema and total_steps < EMA_MIN_HORIZONS * horizon:
        return (f"EMA decay {config.ema_decay:g} averages over ~{horizon:,.0f} steps but the run has "
                f"{total_steps}: the EMA weights stay close to their initial values")
    return None


def fit_to_run(config: TrainConfig, train_images: int, world_size: int = 1) -> list[str]:
    """Adapt a recipe made for 300 ImageNet epochs at batch 4096 to this run's length and batch (with
    ``fit_to_run`` on; settings the user gave stay). The recipes themselves stay untouched: a run with
    ``fit_to_run`` off uses them exactly."""
    return apply_fits(config, lambda: _fits(config, train_images, world_size))


def _fits(config: TrainConfig, train_images: int, world_size: int) -> Iterator[Fit]:
    eff_batch = config.batch_size * config.accum_steps * world_size
    steps = max(train_images // eff_batch, 1) * config.epochs
    if "lr" in config.given and "lr_batch" not in config.given:
        yield "lr_scaling", "none", f"--lr {config.lr:g} is used as given at this run's batch"
    elif eff_batch < config.lr_batch and not {"lr_batch", "lr_scaling"} & set(config.given):
        ratio = eff_batch / config.lr_batch
        yield "lr_scaling", "none", (f"linear scaling from batch {config.lr_batch} to {eff_batch} would give "
                                     f"{config.lr * ratio:.2g}, too small to learn; AdamW normalises its steps, so "
                                     "the peak is used as is, halved below")
        yield "lr", config.lr * SMALL_BATCH_LR_SHARE, f"the full peak is too noisy at batch {eff_batch}"
    yield ("warmup_epochs", min(config.warmup_epochs, round(config.epochs * WARMUP_SHARE, 2)),
           f"warm-up kept to the paper's share of the run ({WARMUP_SHARE:.1%})")
    why_not_ema = ema_warning(config, steps)
    if why_not_ema:
        yield "ema", False, why_not_ema
    if steps < SHORT_RUN_STEPS:
        why = f"a {steps}-step run is too short for the paper's regularisation (made for ~94k steps)"
        for key in ("randaug_n", "mixup", "cutmix", "reprob"):
            yield key, 0 if key == "randaug_n" else 0.0, why


def resolve_config(recipe: str = "in1k", settings: list[str] | tuple[str, ...] = (), *,
                   command_defaults: dict | None = None, **overrides) -> TrainConfig:
    """Defaults, then the recipe, then ``command_defaults`` (not given), then ``"key=value"`` settings, then
    keyword overrides (None: not given)."""
    return resolve(TrainConfig, RECIPES, recipe, settings, command_defaults=command_defaults, **overrides)
