"""The layer-wise lr-decay maps of our models, as pure functions of parameter names.

Each model's ``layer_decay_ids`` (`convnext.protocol.LayerDecay`) calls one of these; the optimizer
(`convnext.engine.optim.param_groups`) turns the ids into parameter groups. The maps are the official
recipes', so fine-tuning decays the lr as the paper's code did, and they must not change: a training
checkpoint stores its optimizer's groups, and a resume rebuilds the same groups from these ids.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence


def hierarchical_ids(names: Iterable[str], depths: Sequence[int]) -> tuple[dict[str, int], int]:
    """The official classification fine-tuning map (``get_num_layer_for_convnext``, generalised to any
    depths): stem 0, stage 0 is 1, stage 1 and its downsampling 2, stage 2 in groups of three blocks from 3,
    stage 3 and its downsampling next, everything else (``norm``, ``head``, a backbone's ``norm{i}``) ``top``:
    12 + 1 for [3, 3, 27, 3], 6 + 1 for [3, 3, 9, 3]. The detectors use it for their backbone too
    (mmdet's ``decay_type='layer_wise'``)."""
    top = 3 + math.ceil(depths[2] / 3) + 1
    fixed = {"downsample_layers.0": 0, "stages.0": 1, "downsample_layers.1": 2, "stages.1": 2,
             "downsample_layers.2": 3, "downsample_layers.3": top - 1, "stages.3": top - 1}
    ids = {}
    for name in names:
        stage2 = re.match(r"stages\.2\.(\d+)\.", name)
        ids[name] = 3 + int(stage2.group(1)) // 3 if stage2 else fixed.get(".".join(name.split(".")[:2]), top)
    return ids, top


def isotropic_ids(names: Iterable[str], depth: int) -> tuple[dict[str, int], int]:
    """The official map of the isotropic ConvNeXts: stem 0, block ``i`` is ``i + 1``, ``norm`` and ``head``
    ``depth + 1``."""
    top = depth + 1
    ids = {}
    for name in names:
        block = re.match(r"blocks\.(\d+)\.", name)
        ids[name] = 0 if name.startswith("stem.") else int(block.group(1)) + 1 if block else top
    return ids, top


def stage_wise_ids(names: Iterable[str], depths: Sequence[int], num_layers: int | None
                   ) -> tuple[dict[str, int], int]:
    """The official segmentation map (mmseg's ``stage_wise``) over ``backbone.*``: every downsampling layer 0,
    stage ``i`` is ``i + 1``, everything else (the heads, the backbone's output norms) ``num_layers + 1``;
    ``num_layers`` defaults to the configs' 6 for tiny-depth backbones and 12 for the deeper ones."""
    top = (num_layers or (6 if depths[2] <= 9 else 12)) + 1
    ids = {}
    for name in names:
        stage = re.match(r"backbone\.stages\.(\d)\.", name)
        ids[name] = 0 if name.startswith("backbone.downsample_layers.") else int(stage[1]) + 1 if stage else top
    return ids, top


def block_of(name: str) -> str:
    """The block a parameter belongs to: its name up to the last numeric part (``layers.3.conv.weight`` ->
    ``layers.3``), else its top-level module (``head.weight`` -> ``head``)."""
    parts = name.split(".")[:-1]
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[: numeric[-1] + 1]) if numeric else (parts[0] if parts else name)


def stage_order_ids(names: Sequence[str]) -> tuple[dict[str, int], int]:
    """One id per block (`block_of`) of a ``downsample_layers``/``stages`` network, in the order its forward
    pass reaches them: stage ``i``'s downsampling, then its blocks, for each ``i``; then the rest (``norm``,
    ``head``) in registration order; ``top`` is the last. This is what the optimizer's forward-order fallback
    finds for such a network, without running it: the roadmap nets and ConvNeXts of other than four stages,
    which have no official map, use it."""

    def position(block: str) -> tuple[float, bool]:
        stage = re.match(r"(downsample_layers|stages)\.(\d+)", block)
        return (int(stage[2]), stage[1] == "stages") if stage else (math.inf, False)

    blocks = sorted(dict.fromkeys(block_of(name) for name in names), key=position)  # stable: registration order
    order = {block: i for i, block in enumerate(blocks)}
    ids = {name: order[block_of(name)] for name in names}
    return ids, max(ids.values(), default=0)
