"""Segmentation checkpoints: the official (mmsegmentation) layout, Hugging Face's ``UperNetForSemanticSegmentation``
with a ConvNeXt backbone, our own runs, and plain classification checkpoints for the backbone alone.

Our module names are the official ones, so an official ADE20K file loads as it is; the Hugging Face names map
onto them one to one (the backbone by the classification rules of `convnext.weights`, ``hidden_states_norms
.stage{k}`` to ``norm{k-1}``, ``batch_norm`` to ``bn``, ``classifier`` to ``conv_seg``). The released ADE20K
weights are registered in `convnext.weights`, next to the classification ones (listing them imports nothing
more), and downloaded by the same offline-aware code.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..protocol import model_name
from . import (
    _HF_RULES,
    ADE20K,
    ADE20K_MIOU,
    ADE20K_WEIGHTS,
    LoadReport,
    _fit_shapes,
    check_fit,
    load_checkpoint,
    read_checkpoint_file,
)

__all__ = ["ADE20K", "ADE20K_MIOU", "ADE20K_WEIGHTS", "convert_segmentation_state_dict", "detect_segmentation_layout",
           "load_segmentation_checkpoint"]

_HEAD_RULES = [
    (r"\.batch_norm\.", ".bn."),
    (r"^(decode_head|auxiliary_head)\.classifier\.", r"\1.conv_seg."),
]


def detect_segmentation_layout(keys) -> str:
    """'mmseg' (official files and our runs), 'hf' (UperNetForSemanticSegmentation), or 'backbone' (any
    classification checkpoint, which initialises the backbone only)."""
    keys = list(keys)
    if any(k.startswith("decode_head.") for k in keys):
        return "hf" if any(k.startswith(("backbone.embeddings.", "backbone.encoder.")) for k in keys) else "mmseg"
    return "backbone"


def _unwrap(data: Mapping) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "module"):  # mmseg files: state_dict; our runs: model
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    tensors = {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError("checkpoint holds no tensors")
    return tensors


def _hf_backbone_key(key: str) -> str:
    key = re.sub(r"^hidden_states_norms\.stage(\d)\.", lambda m: f"norm{int(m.group(1)) - 1}.", key)
    for pattern, replacement in _HF_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_segmentation_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face UperNet state dict to the official names (official ones pass unchanged)."""
    if detect_segmentation_layout(state_dict) != "hf":
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            key = "backbone." + _hf_backbone_key(key[len("backbone."):])
        for pattern, replacement in _HEAD_RULES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _drop_other_classes(state_dict: dict, target: Mapping[str, torch.Tensor]) -> set[str]:
    """Classifiers trained on another class count are left out (the model keeps fresh ones), with a warning."""
    dropped = set()
    for head in ("decode_head", "auxiliary_head"):
        key = f"{head}.conv_seg.weight"
        if key in state_dict and key in target and state_dict[key].shape[0] != target[key].shape[0]:
            warnings.warn(f"checkpoint {head} has {state_dict[key].shape[0]} classes, model has "
                          f"{target[key].shape[0]}: keeping the model's new classifier", stacklevel=3)
            for name in (key, f"{head}.conv_seg.bias"):
                state_dict.pop(name, None)
                dropped.add(name)
    return dropped


def load_segmentation_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping, *,
                                 strict: bool = True) -> LoadReport:
    """Load a segmentation checkpoint of any supported layout into an `UperNet`; a classification
    checkpoint initialises its backbone (the paper's ImageNet start) and leaves the heads as they are.

    A checkpoint without the auxiliary head (Hugging Face models saved without it) loads too: the auxiliary
    head only matters for training. Any other difference raises one error naming the keys.
    """
    raw = source if isinstance(source, Mapping) else read_checkpoint_file(Path(source))
    state_dict = _unwrap(raw)
    if detect_segmentation_layout(state_dict) == "backbone":
        return load_checkpoint(model.backbone, state_dict, strict=strict)
    state_dict = convert_segmentation_state_dict(state_dict)
    target = model.state_dict()
    _fit_shapes(state_dict, target, "backbone.downsample_layers.0.0.weight")
    optional = _drop_other_classes(state_dict, target)
    if not any(k.startswith("auxiliary_head.") for k in state_dict):
        optional |= {k for k in target if k.startswith("auxiliary_head.")}
    report = check_fit(model_name(model), state_dict, target, optional=optional, strict=strict)
    model.load_state_dict({k: v for k, v in state_dict.items() if k in target}, strict=False)
    return report

