"""The models a robustness run compares: ConvNeXt checkpoints and, beside them, any timm classifier
(``timm:NAME``), so the rows of the paper's Table 8 (ConvNeXt against Swin, ResNet, ...) are scored on the
same images in one run.

A timm model keeps everything timm says about it: built by ``timm.create_model`` (a tag such as
``.ms_in1k`` picks that release's ``pretrained_cfg``), preprocessed by ``timm.data.resolve_data_config``
and timm's own eval transform. Its weights come from a file of timm's layout (or of a layout timm's own
checkpoint filter for that architecture converts, such as the original Swin release), read by our safe
reader: safetensors, or a pickle with ``weights_only=True``. Random weights only when asked for by name
(``random``), since their robustness numbers mean nothing beyond a smoke test.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ...errors import UserError
from ...weights import check_fit, first_line, read_state_dict
from .runner import Subject, identity_of

TIMM = "timm:"  # the prefix naming a timm model: timm:swin_tiny_patch4_window7_224
RANDOM = "random"  # in place of weights: untrained, seeded weights for smoke tests
RANDOM_SEED = 0


def load_subject(label: str, model: str | None, weights: str | os.PathLike | None = None,
                 pretrained: bool | str = False) -> Subject:
    """A model under test from what a command line names: ``model`` a ConvNeXt name (left out for a
    `convnext train` checkpoint, which names its own) or ``timm:NAME``; ``weights`` a file or ``random``;
    ``pretrained`` our released ConvNeXt weights."""
    if model is not None and model.startswith(TIMM):
        if pretrained:
            raise UserError(f"{model}: timm's released weights are not downloaded here; pass the file (e.g. "
                            f"model.safetensors of huggingface.co/timm/{model[len(TIMM):]}) as its weights")
        return timm_subject(label, model[len(TIMM):], weights)
    if str(weights) == RANDOM:
        if model is None:
            raise UserError("random weights need a model name")
        return Subject(label, _seeded(lambda: _convnext(model)), _random_identity(model))
    return _convnext_subject(label, weights, model, pretrained)


def _convnext_subject(label: str, checkpoint: str | os.PathLike | None, model: str | None,
                      pretrained: bool | str) -> Subject:
    from ..loading import load_model

    if checkpoint is None and not pretrained and (model is None or "." not in model):
        raise UserError(f"{model or 'the model'} needs weights: a checkpoint, or released weights (--pretrained "
                        "[TAG] or NAME.TAG); timm:NAME for a timm model")
    if model is None and checkpoint is None:
        raise UserError("--pretrained needs --model")
    module = load_model(model, checkpoint=checkpoint, pretrained=pretrained)  # a run checkpoint names its model
    return Subject(label, module, identity_of(checkpoint, getattr(module, "model_name", model), pretrained))


def _convnext(name: str) -> nn.Module:
    from ...models.convnext import create_model

    return create_model(name).eval()


def _seeded(build):
    """The same random weights on every run, so a smoke test's stored results are reused."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def _random_identity(name: str) -> dict:
    return {"model": name, "weights": f"{RANDOM} (seed {RANDOM_SEED}: a smoke test, not a robustness figure)"}


def timm_subject(label: str, name: str, weights: str | os.PathLike | Mapping | None) -> Subject:
    """A timm classifier with its weights and timm's own preprocessing (``resolve_data_config``), marked so
    the images go through timm's eval transform."""
    if weights is None:
        raise UserError(f"{TIMM}{name} needs weights: a state dict of timm's layout (.safetensors, .pth, .bin), "
                        f"or `{RANDOM}` for a smoke test only (random weights: meaningless numbers)")
    model = load_timm(name, weights)  # first: a missing timm is one readable line
    from timm.data import resolve_data_config

    config = dict(resolve_data_config({}, model=model), pipeline="timm")
    if str(weights) == RANDOM:
        identity = _random_identity(TIMM + name)
    elif isinstance(weights, Mapping):
        identity = {"model": TIMM + name, "checkpoint": "(in memory)"}
    else:
        identity = identity_of(weights, TIMM + name)
    return Subject(label, model, identity, data_config=config)


def load_timm(name: str, weights: str | os.PathLike | Mapping) -> nn.Module:
    """``timm.create_model(name)`` in eval mode with ``weights`` (a file, a state dict, or ``random``); the
    class count follows the weights' classifier, so a fine-tuned head loads as it is."""
    timm = _import_timm(name)
    _check_name(timm, name)
    if str(weights) == RANDOM:
        return _seeded(lambda: _create(timm, name, {}))
    state = read_state_dict(weights if isinstance(weights, Mapping) else Path(weights))
    classifier = timm.models.get_pretrained_cfg_value(name, "classifier") or ""
    classifier = classifier[0] if isinstance(classifier, tuple | list) else classifier
    head = state.get(f"{classifier}.weight")
    model = _create(timm, name, {} if head is None or head.dim() != 2 else {"num_classes": head.shape[0]})
    model.load_state_dict(_fitting_state(model, name, state))
    return model.eval()


def _import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise UserError(f"{TIMM}{name} needs timm, which is not installed (pip install timm)") from None
    return timm


def _check_name(timm, name: str) -> None:
    """An unknown architecture or tag is one line with timm's closest names."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"timm.list_models('*{arch[:4]}*') lists its names"
        raise UserError(f"timm has no model {arch}; {hint}")
    tags = [known.partition(".")[2] for known in timm.list_models(arch, pretrained=True)]
    if tag and tag not in tags:
        raise UserError(f"timm's {arch} has no tag {tag}; its tags: {', '.join(tags) or '(none)'}")


def _create(timm, name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    except Exception as err:  # noqa: BLE001 - a model builder can raise anything
        raise UserError(f"timm cannot build {name}: {first_line(err)}") from None


def _fitting_state(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` when it fits the model; else what timm's checkpoint filter for that architecture makes of
    it (the original Swin, ViT, ... layouts), when that fits; else the first misfit, as one error."""
    target = model.state_dict()
    try:
        check_fit(TIMM + name, state, target)
        return state
    except UserError as misfit:
        convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        try:
            converted = convert(dict(state), model) if convert is not None else None
        except Exception:  # noqa: BLE001 - a filter that cannot read this file: the misfit is the answer
            converted = None
        if converted is None:
            raise misfit from None
        try:
            check_fit(TIMM + name, converted, target)
        except UserError:
            raise misfit from None
        return converted
