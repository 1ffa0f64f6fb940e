"""The paper's ADE20K recipe (official semantic_segmentation configs) as named settings, fitted to short runs.

``ade20k``: UperNet, AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 (none on biases and norms),
stage-wise lr decay 0.9, poly schedule (power 1, to 0) after a 1,500-iteration linear warm-up from 1e-6 of the
peak, 160k iterations at batch 16 (8 GPUs x 2), crop 512, random scale 0.5-2.0 of 2048x512, flip,
photometric distortion, drop path 0.4 (0.3 for small). ``ade20k_640`` is the same at crop 640 (2560x640) for
the ImageNet-22K models. ``demo`` is the built-in real-photo scenes' run: a small model from scratch on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from ...errors import UserError
from ..classification.config import _conform, _parse


@dataclass
class SegConfig:
    recipe: str = "ade20k"
    model: str = "upernet_convnext_tiny"
    model_args: dict = field(default_factory=dict)
    num_classes: int = 150
    data: str | None = None
    val_data: str | None = None
    reduce_zero_label: bool | None = None  # None: on for ADE20K trees, off for plain folders
    output: str | None = None
    pretrained: str | None = None  # ImageNet weights for the backbone (a tag of the backbone, or a file)
    iters: int = 160_000
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    decay_layers: int | None = None  # the configs' num_layers: 6 for tiny, 12 for the deeper ones
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    drop_path: float = 0.4
    aux_weight: float = 0.4
    crop: int = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    photometric: bool = True
    stride: int | None = None  # sliding-window stride at evaluation; None: 2/3 of the crop (341 at 512, 426 at 640)
    eval_every: int = 16_000
    amp: bool = True
    clip_grad: float | None = None
    channels_last: bool = True
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    save_every_steps: int = 0
    fit_to_run: bool = True
    given: list[str] = field(default_factory=list)  # settings the user gave: fit_to_run leaves them alone

    @property
    def eval_stride(self) -> int:
        return self.stride or self.crop * 2 // 3


SEG_RECIPES: dict[str, dict] = {
    "ade20k": {},
    "ade20k_640": dict(crop=640, scale=(2560, 640)),
    "demo": dict(model="upernet_convnext_tiny", num_classes=6, iters=400, batch_size=8, lr=2e-3,
                 layer_decay=1.0, drop_path=0.0, warmup_iters=20, crop=64, scale=(256, 128), eval_every=50,
                 amp=False, workers=0, channels_last=True, fit_to_run=False,
                 model_args=dict(depths=(2, 2, 2, 2), dims=(32, 64, 128, 256), channels=48, aux_channels=32)),
}
PAPER_ITERS = 160_000


def seg_config(recipe: str = "ade20k", settings: list[str] | tuple[str, ...] = (), **given) -> SegConfig:
    """The named recipe, then ``"key=value"`` settings (``--set``), then ``given`` keyword settings (None: not
    given); every setting given is recorded, so fitting leaves it alone."""
    if recipe not in SEG_RECIPES:
        raise UserError(f"unknown segmentation recipe {recipe!r}; choose from {', '.join(SEG_RECIPES)}")
    hints = typing.get_type_hints(SegConfig)
    given = {k: v for k, v in given.items() if v is not None}
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints or key == "given":
            raise UserError(f"bad setting {item!r}: expected key=value with a key of "
                            f"convnext.tasks.segmentation.config.SegConfig ({', '.join(sorted(hints))})")
        given.setdefault(key, _conform(key, _parse(key, text, getattr(SegConfig, key, None)), hints[key]))
    unknown = sorted(set(given) - set(hints))
    if unknown:
        raise UserError(f"unknown segmentation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(hints))}")
    config = SegConfig(recipe=recipe, **{**SEG_RECIPES[recipe], **given})
    if recipe.startswith("ade20k") and "drop_path" not in given and config.model.endswith("_small"):
        config.drop_path = 0.3  # the official small config; 0.4 for all others
    config.given = sorted(set(config.given) | set(given) - {"given"})
    check_config(config)
    return config


def check_config(config: SegConfig) -> None:
    """Out-of-range values stop here with one line, before any file is read."""
    checks = [(config.num_classes >= 2, "num_classes must be at least 2"),
              (config.num_classes <= 255, "num_classes must be at most 255 (255 marks ignored pixels)"),
              (config.iters >= 1, "iters must be at least 1"), (config.batch_size >= 1, "batch_size must be >= 1"),
              (config.accum_steps >= 1, "accum_steps must be >= 1"), (config.crop >= 32, "crop must be >= 32"),
              (config.lr > 0, "lr must be positive"), (0 < config.layer_decay <= 1, "layer_decay must be in (0, 1]"),
              (0 <= config.drop_path < 1, "drop_path must be in [0, 1)"), (config.warmup_iters >= 0,
                                                                           "warmup_iters must be >= 0"),
              (0 < config.ratio_range[0] <= config.ratio_range[1], "ratio_range must be (low, high), 0 < low <= high"),
              (config.eval_every >= 1, "eval_every must be at least 1"), (0 <= config.hflip <= 1, "hflip: 0..1")]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def fit_segmentation_run(config: SegConfig) -> list[str]:
    """Fit the 160k-iteration recipe to a shorter run; one line per change, settings the user gave untouched."""
    if not config.fit_to_run:
        return []
    notes: list[str] = []

    def change(key: str, value, why: str) -> None:
        if key not in config.given and getattr(config, key) != value:
            notes.append(f"{key} {getattr(config, key)!r} -> {value!r}: {why}")
            setattr(config, key, value)

    share = config.iters / PAPER_ITERS
    if share < 1:
        change("warmup_iters", max(1, round(config.warmup_iters * share)),
               f"warm-up kept to the paper's share of the run (1500 of {PAPER_ITERS:,} iterations)")
        change("eval_every", max(1, min(config.eval_every, config.iters // 10 or 1)),
               "ten evaluations over the run")
    return notes


def config_dict(config: SegConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def poly_factor(step: int, config: SegConfig, total: int) -> float:
    """The lr at iteration ``step`` as a share of the peak: poly decay, scaled up linearly from
    ``warmup_ratio`` over the warm-up (mmcv's rule)."""
    floor = config.min_lr / config.lr
    factor = (1 - floor) * (1 - min(step, total) / total) ** config.power + floor
    if step < config.warmup_iters:
        factor *= 1 - (1 - step / config.warmup_iters) * (1 - config.warmup_ratio)
    return factor
