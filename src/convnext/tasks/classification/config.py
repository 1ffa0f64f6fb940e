"""Training configuration: every knob with the paper's default, and named recipes that override a few.

A run's configuration is resolved in this order: ``TrainConfig`` defaults (ImageNet-1K, paper Table 5),
then the recipe, then ``key=value`` settings and the command line's own flags. The result is saved with
the run (``config.json``) and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field

import torch

from ...errors import UserError
from ...models.convnext import build_model
from ...weights import IMAGENET_MEAN, IMAGENET_STD


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
    lr_scaling: str = "linear"  # how lr follows the effective batch from lr_batch: linear, sqrt or none
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
    if "lr" in config.given and "lr_batch" not in config.given:
        change("lr_scaling", "none", f"--lr {config.lr:g} is used as given at this run's batch")
    elif eff_batch < config.lr_batch and not {"lr_batch", "lr_scaling"} & set(config.given):
        ratio = eff_batch / config.lr_batch
        change("lr_scaling", "none", f"linear scaling from batch {config.lr_batch} to {eff_batch} would give "
               f"{config.lr * ratio:.2g}, too small to learn; AdamW normalises its steps, so the peak is used "
               "as is, halved below")
        change("lr", config.lr * SMALL_BATCH_LR_SHARE, f"the full peak is too noisy at batch {eff_batch}")
    change("warmup_epochs", min(config.warmup_epochs, round(config.epochs * WARMUP_SHARE, 2)),
           f"warm-up kept to the paper's share of the run ({WARMUP_SHARE:.1%})")
    why_not_ema = ema_warning(config, steps)
    if why_not_ema:
        change("ema", False, why_not_ema)
    if steps < SHORT_RUN_STEPS:
        why = f"a {steps}-step run is too short for the paper's regularisation (made for ~94k steps)"
        for key in ("randaug_n", "mixup", "cutmix", "reprob"):
            change(key, 0 if key == "randaug_n" else 0.0, why)
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


def _conform(name: str, value, hint):
    """``value`` as the type ``hint`` of its field names (ints taken as floats, lists as tuples), or one error.
    A bool is never taken for a number (``epochs=true``), nor a number for a bool (``ema=1``)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    wrong = UserError(f"setting {name}={value!r}: expected {_type_text(hint)}")
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        return float(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            raise wrong
        return tuple(_conform(name, v, kind) for v, kind in zip(value, kinds, strict=True))
    if isinstance(value, bool) != (origin is bool) or not isinstance(value, origin):
        raise wrong
    return value


def _type_text(hint) -> str:
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{'numbers' if args[0] is float else 'texts'}"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text",
            dict: "a JSON object"}.get(origin, getattr(origin, "__name__", str(origin)))


def _within(low: float, high: float, *, open_low: bool = False, open_high: bool = False):
    """A range test and its words: ``[low, high]`` with either end open."""
    def test(v: float) -> bool:
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    text = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if high == math.inf:
        text = f"{'above' if open_low else 'at least'} {low:g}"
    return test, text.replace(f"{high:g}", str(high)) if high >= 1e6 else text


_POSITIVE, _NON_NEGATIVE = _within(0, math.inf, open_low=True), _within(0, math.inf)
_FRACTION, _FRACTION_BELOW_1 = _within(0, 1), _within(0, 1, open_high=True)
_AT_LEAST_1 = _within(1, math.inf)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
LR_SCALINGS = ("linear", "sqrt", "none")
MIN_RES = 32  # the networks downsample 32x
# The valid range of every number a run takes (a tuple's range holds for each of its values). What these
# ranges rule out would not fail later but silently train wrongly: a negative clip_grad flips the gradients.
RANGES = {
    "epochs": _AT_LEAST_1, "warmup_epochs": _NON_NEGATIVE, "batch_size": _AT_LEAST_1, "accum_steps": _AT_LEAST_1,
    "lr": _POSITIVE, "lr_batch": _AT_LEAST_1, "min_lr": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE,
    "betas": _FRACTION_BELOW_1, "eps": _POSITIVE, "layer_decay": _within(0, 1, open_low=True),
    "clip_grad": _POSITIVE, "drop_path": _FRACTION_BELOW_1, "layer_scale_init": _NON_NEGATIVE,
    "head_init_scale": _POSITIVE, "ema_decay": _FRACTION_BELOW_1, "res": _within(MIN_RES, math.inf),
    "crop_pct": _within(0, 1, open_low=True), "mean": _within(-math.inf, math.inf), "std": _POSITIVE,
    "crop_scale": _within(0, 1, open_low=True), "crop_ratio": _POSITIVE, "hflip": _FRACTION,
    "randaug_n": _NON_NEGATIVE, "randaug_m": _within(0, 10), "randaug_mstd": _NON_NEGATIVE,
    "color_jitter": _NON_NEGATIVE, "reprob": _FRACTION, "mixup": _NON_NEGATIVE, "cutmix": _NON_NEGATIVE,
    "mixup_prob": _FRACTION, "mixup_switch_prob": _FRACTION, "smoothing": _FRACTION_BELOW_1,
    "seed": _within(0, 2**31 - 1), "workers": _NON_NEGATIVE, "save_every": _NON_NEGATIVE,
    "save_every_steps": _NON_NEGATIVE,
}
CHOICES = {"interpolation": INTERPOLATIONS, "lr_scaling": LR_SCALINGS}


def _check(config: TrainConfig) -> None:
    """Every setting of ``config`` of its field's type and in its valid range, or one ``UserError`` naming it."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(config):
        value = _conform(f.name, getattr(config, f.name), hints[f.name])
        setattr(config, f.name, value)
        if value is None:
            continue
        if f.name in RANGES:
            test, text = RANGES[f.name]
            for v in value if isinstance(value, tuple) else (value,):
                if not (math.isfinite(v) and test(v)):
                    raise UserError(f"setting {f.name}={_shown(value)}: must be {text}")
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise UserError(f"setting {f.name}={value!r}: choose from {', '.join(CHOICES[f.name])}")
    for name in ("crop_scale", "crop_ratio"):
        low, high = getattr(config, name)
        if low > high:
            raise UserError(f"setting {name}={_shown(getattr(config, name))}: the smaller value comes first")
    _check_model(config)


def _shown(value) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else repr(value)


def _check_model(config: TrainConfig) -> None:
    """``model`` and ``model_args`` must build: tried on the meta device, which allocates nothing."""
    if not all(isinstance(key, str) for key in config.model_args):
        raise UserError(f"setting model_args={config.model_args!r}: keys must be argument names")
    reserved = sorted({"num_classes", "drop_path_rate", "head_init_scale", "layer_scale_init_value"}
                      & set(config.model_args))
    if reserved:
        raise UserError(f"setting model_args: {', '.join(reserved)} come from the run's own settings "
                        "(the data's classes, drop_path, head_init_scale, layer_scale_init)")
    try:
        with torch.device("meta"):
            build_model(config.model, num_classes=2, **config.model_args)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a builder given bad shapes fails in many ways
        lines = str(err).strip().splitlines()
        raise UserError(f"{config.model} cannot be built with model_args={json.dumps(config.model_args)}: "
                        f"{lines[0] if lines else type(err).__name__}") from None


def resolve_config(recipe: str = "in1k", settings: list[str] | tuple[str, ...] = (),
                   **overrides) -> TrainConfig:
    """Defaults, then the recipe, then ``"key=value"`` settings, then keyword overrides (None: not given)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    values = {**RECIPES[recipe], "recipe": recipe}
    defaults = TrainConfig()
    named = set()  # every key the user set: fit_to_run leaves them alone
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _field_types():
            close = difflib.get_close_matches(key, list(_field_types()), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"bad setting {item!r}: expected key=value with a known key{hint}")
        values[key] = _parse(key, text, getattr(defaults, key))
        named.add(key)
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    values["given"] = tuple(sorted(set(values.get("given", ())) | named | set(given)))
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
