"""Training configuration: every knob with the paper's default, and named recipes that override a few.

A run's configuration is resolved in this order: ``TrainConfig`` defaults (ImageNet-1K, paper Table 5),
then the recipe, then ``key=value`` settings and the command line's own flags. The result is saved with
the run (``config.json``) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field

from .errors import UserError
from .weights import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class TrainConfig:
    """Every setting of a run. Learning rates are given for ``lr_batch`` images per step and scaled linearly
    to the effective batch (per-device batch x accumulation steps x world size)."""

    recipe: str = "in1k"
    model: str = "convnext_tiny"
    model_args: dict = field(default_factory=dict)  # extra constructor arguments, e.g. {"dims": [...]}
    data: str | None = None  # None: the built-in digits
    val_data: str | None = None
    output: str | None = None  # None: runs/<recipe>-<model>
    finetune: str | None = None  # initial weights: any checkpoint load_checkpoint understands
    finetune_key: str | None = None  # e.g. "model_ema"
    # optimisation (AdamW, per-iteration warm-up + cosine)
    epochs: int = 300
    warmup_epochs: float = 20
    batch_size: int = 64  # per device
    accum_steps: int = 1
    lr: float = 4e-3
    lr_batch: int = 4096
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0
    clip_grad: float | None = None
    # model regularisation
    drop_path: float | None = None  # None: the recipe's value for this model, else 0
    layer_scale_init: float | None = None  # None: the model's own default
    head_init_scale: float = 1.0
    ema: bool = True
    ema_decay: float = 0.9999
    # data and augmentation
    res: int = 224
    crop_pct: float | None = None  # evaluation crop; None: 0.875 below 384, 1.0 (no crop) at 384 and up
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
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
    seed: int = 0
    workers: int = 8
    device: str = "auto"  # auto: cuda when available, else cpu
    amp: bool = False  # bf16 autocast (fp16 + loss scaling on GPUs without bf16)
    compile: bool = False
    channels_last: bool = True
    save_every: int = 0  # also keep checkpoint-<epoch>.pt every N epochs (0: only last and best)
    save_every_steps: int = 0  # also refresh last.pt every N optimizer steps inside an epoch
    tensorboard: bool = False
    # fitting the recipe to a run far shorter or smaller than the paper's (see fit_to_run)
    fit_to_run: bool = False
    lr_scaling: str = "linear"  # how lr follows the effective batch from lr_batch: linear or sqrt
    given: tuple[str, ...] = ()  # the settings the user gave; fit_to_run never changes them


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
# Below this many optimizer steps a run is "short": the paper's strong regularisation (Mixup/CutMix, random
# erasing) keeps such a run from fitting at all.
SHORT_RUN_STEPS = 2000


def scaled_lr(config: TrainConfig, eff_batch: int) -> float:
    """The peak lr at ``eff_batch``: ``lr`` is given for ``lr_batch`` images and scaled linearly (the paper's
    rule) or by the square root of the batch ratio (``lr_scaling="sqrt"``)."""
    ratio = eff_batch / config.lr_batch
    return config.lr * (ratio if config.lr_scaling == "linear" else ratio ** 0.5)


def ema_warning(config: TrainConfig, total_steps: int) -> str | None:
    """Why the EMA weights of this run would be meaningless, or None."""
    horizon = 1 / (1 - config.ema_decay) if config.ema_decay < 1 else float("inf")
    if config.ema and total_steps < EMA_MIN_HORIZONS * horizon:
        return (f"EMA decay {config.ema_decay:g} averages over ~{horizon:,.0f} steps but the run has "
                f"{total_steps}: the EMA weights stay close to their initial values")
    return None


def fit_to_run(config: TrainConfig, train_images: int, world_size: int = 1) -> list[str]:
    """Adapt a recipe made for 300 ImageNet epochs at batch 4096 to this run's length and batch.

    Only settings the user did not give are changed; returns one line per change, saying why. The
    recipes themselves stay untouched: a run with ``fit_to_run`` off uses them exactly.
    """
    if not config.fit_to_run:
        return []
    notes: list[str] = []

    def change(key: str, value, why: str) -> None:
        if key in config.given or getattr(config, key) == value:
            return
        notes.append(f"{key} {getattr(config, key)!r} -> {value!r}: {why}")
        setattr(config, key, value)

    eff_batch = config.batch_size * config.accum_steps * world_size
    steps = max(train_images // eff_batch, 1) * config.epochs
    if eff_batch < config.lr_batch and "lr" not in config.given:
        ratio = eff_batch / config.lr_batch
        change("lr_scaling", "sqrt", f"linear scaling from batch {config.lr_batch} to {eff_batch} starves the "
               f"run (lr {config.lr * ratio:.2g}); square-root scaling gives {config.lr * ratio ** 0.5:.2g}")
    change("warmup_epochs", min(config.warmup_epochs, round(config.epochs * WARMUP_SHARE, 2)),
           f"warm-up kept to the paper's share of the run ({WARMUP_SHARE:.1%})")
    why_not_ema = ema_warning(config, steps)
    if why_not_ema:
        change("ema", False, why_not_ema)
    if steps < SHORT_RUN_STEPS:
        why = f"a {steps}-step run is too short for the paper's regularisation (made for ~94k steps)"
        change("mixup", 0.0, why)
        change("cutmix", 0.0, why)
        change("reprob", 0.0, why)
    return notes


def _field_types() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _parse(key: str, text: str, current) -> object:
    """A ``--set`` value read as JSON where it parses (numbers, true/false, null, lists), else as a string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(current, bool) and isinstance(value, str) and value.lower() in ("yes", "no"):
        value = value.lower() == "yes"
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def _check(config: TrainConfig) -> None:
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), f.default
        kind = type(default) if default is not dataclasses.MISSING and default is not None else None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, f.name, float(value))
        elif kind is not None and value is not None and not isinstance(value, kind):
            raise UserError(f"setting {f.name}={value!r}: expected a {kind.__name__}")
    if config.batch_size < 1 or config.accum_steps < 1 or config.epochs < 1:
        raise UserError("batch_size, accum_steps and epochs must be at least 1")
    if not 0 < config.layer_decay <= 1:
        raise UserError(f"layer_decay must be in (0, 1], got {config.layer_decay}")


def resolve_config(recipe: str = "in1k", settings: list[str] | tuple[str, ...] = (),
                   **overrides) -> TrainConfig:
    """Defaults, then the recipe, then ``"key=value"`` settings, then keyword overrides (None: not given)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    values = {**RECIPES[recipe], "recipe": recipe}
    defaults = TrainConfig()
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _field_types():
            close = difflib.get_close_matches(key, list(_field_types()), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"bad setting {item!r}: expected key=value with a known key{hint}")
        values[key] = _parse(key, text, getattr(defaults, key))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    values["given"] = tuple(sorted(set(values.get("given", ())) | set(given) | {
        item.partition("=")[0].strip().replace("-", "_") for item in settings}))
    config = TrainConfig(**values)
    if config.drop_path is None:
        config.drop_path = _DROP_PATH.get(recipe, {}).get(config.model, 0.0)
    if config.output is None:
        config.output = f"runs/{recipe}-{config.model}"
    if config.crop_pct is None:
        config.crop_pct = 1.0 if config.res >= 384 else 0.875
    _check(config)
    return config


def config_dict(config: TrainConfig) -> dict:
    """Plain JSON-able values (tuples as lists): what run folders and checkpoints store."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(values: dict) -> TrainConfig:
    """The inverse of ``config_dict``: unknown keys ignored, lists made tuples where the field is one."""
    defaults = TrainConfig()
    known = {k: (tuple(v) if isinstance(getattr(defaults, k), tuple) and isinstance(v, list) else v)
             for k, v in values.items() if k in _field_types()}
    return TrainConfig(**known)
