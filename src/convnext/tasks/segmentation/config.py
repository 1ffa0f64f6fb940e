"""The paper's ADE20K recipe (official semantic_segmentation configs) as named settings, fitted to short runs.

``ade20k``: UperNet, AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05 (none on biases and norms),
stage-wise lr decay 0.9, poly schedule (power 1, to 0) after a 1,500-iteration linear warm-up from 1e-6 of the
peak, 160k iterations at batch 16 (8 GPUs x 2), crop 512, random scale 0.5-2.0 of 2048x512, flip,
photometric distortion, drop path 0.4 (0.3 for small). ``ade20k_640`` is the same at crop 640 (2560x640) for
the ImageNet-22K models. ``demo`` is the built-in real-photo scenes' run: a small model from scratch on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...engine.config import (
    AT_LEAST_1,
    FRACTION_BELOW_1,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    RunConfig,
    apply_fits,
    check_model_builds,
    check_order,
    resolve,
)
from ...errors import UserError


@dataclass
class SegConfig(RunConfig):
    """Every setting of a segmentation run (``convnext segment train``)."""

    recipe: str = "ade20k"
    model: str = "upernet_convnext_tiny"
    num_classes: int = 150
    reduce_zero_label: bool | None = None  # None: on for ADE20K trees, off for plain folders
    pretrained: str | None = None  # ImageNet weights for the backbone (a tag of the backbone, or a file)
    iters: int = 160_000
    batch_size: int = 16
    min_lr: float = 0.0
    layer_decay: float = 0.9
    decay_layers: int | None = None  # the configs' num_layers: 6 for tiny, 12 for the deeper ones
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    drop_path: float | None = 0.4
    aux_weight: float = 0.4
    crop: int = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    photometric: bool = True
    stride: int | None = None  # sliding-window stride at evaluation; None: 2/3 of the crop (341 at 512, 426 at 640)
    eval_every: int = 16_000
    amp: bool = True
    channels_last: bool = True
    workers: int = 4
    fit_to_run: bool = True

    RANGES: ClassVar[dict[str, Range]] = {
        **RunConfig.RANGES, "num_classes": Range(2, 255), "iters": AT_LEAST_1, "min_lr": NON_NEGATIVE,
        "decay_layers": AT_LEAST_1, "warmup_iters": NON_NEGATIVE, "warmup_ratio": Range(0, 1, open_low=True),
        "power": POSITIVE, "drop_path": FRACTION_BELOW_1, "aux_weight": NON_NEGATIVE, "crop": Range(32),
        "scale": Range(32), "ratio_range": POSITIVE, "stride": AT_LEAST_1, "eval_every": AT_LEAST_1,
    }

    @property
    def eval_stride(self) -> int:
        return self.stride or self.crop * 2 // 3

    def complete(self) -> None:
        if self.recipe.startswith("ade20k") and "drop_path" not in self.given and self.model.endswith("_small"):
            self.drop_path = 0.3  # the official small config; 0.4 for all others
        if self.output is None:
            self.output = f"runs/segment-{self.recipe}"

    def check_more(self) -> None:
        check_order(self, "ratio_range")
        check_model_builds(self.model, self.model_args, image_side=64)
        if self.min_lr > self.lr:
            raise UserError(f"setting min_lr={self.min_lr!r}: must be at most lr ({self.lr!r})")


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
    return resolve(SegConfig, SEG_RECIPES, recipe, settings, what="segmentation recipe", **given)


def fit_segmentation_run(config: SegConfig) -> list[str]:
    """Fit the 160k-iteration recipe to a shorter run; one line per change, settings the user gave untouched."""
    share = config.iters / PAPER_ITERS
    if share >= 1:
        return []
    return apply_fits(config, [
        ("warmup_iters", max(1, round(config.warmup_iters * share)),
         f"warm-up kept to the paper's share of the run (1500 of {PAPER_ITERS:,} iterations)"),
        ("eval_every", max(1, min(config.eval_every, config.iters // 10 or 1)), "ten evaluations over the run")])


def poly_factor(step: int, config: SegConfig, total: int) -> float:
    """The lr at iteration ``step`` as a share of the peak: poly decay, scaled up linearly from
    ``warmup_ratio`` over the warm-up (mmcv's rule)."""
    floor = config.min_lr / config.lr
    factor = (1 - floor) * (1 - min(step, total) / total) ** config.power + floor
    if step < config.warmup_iters:
        factor *= 1 - (1 - step / config.warmup_iters) * (1 - config.warmup_ratio)
    return factor
