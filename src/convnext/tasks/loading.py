"""Models with weights, from any source: released tags, ``convnext train`` run checkpoints, exported
safetensors files, and foreign checkpoints of every layout ``load_checkpoint`` reads.

A run checkpoint records its configuration, so it rebuilds its own model (name, architecture options,
regularisation-only options such as layer scale, evaluation preprocessing, class names) without being told;
``predict``, ``evaluate`` and ``export`` all come through ``load_model``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..engine.config import task_of_model
from ..errors import UserError
from ..models.convnext import build_model, create_model
from ..weights import (
    convert_state_dict,
    load_checkpoint,
    metadata_json,
    read_checkpoint_file,
    read_metadata,
    read_state_dict,
)
from .classification.config import TrainConfig

# Run checkpoints of the dense tasks (told apart by their model's name, `task_of_model`): the command reading them
DENSE_COMMANDS = {"segmentation": "segment", "detection": "detect"}


def build_run_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model with the run's regularisation; options left at neutral values are not passed, so any
    registered builder works."""
    kwargs = dict(config.model_args, num_classes=num_classes)
    if config.drop_path:
        kwargs["drop_path_rate"] = config.drop_path
    if config.head_init_scale != 1.0:
        kwargs["head_init_scale"] = config.head_init_scale
    if config.layer_scale_init is not None:
        kwargs["layer_scale_init_value"] = config.layer_scale_init
    return build_model(config.model, **kwargs)


def eval_config(config: TrainConfig) -> dict:
    """The evaluation preprocessing of a run, in ``pretrained_cfg`` form (what ``eval_transform`` takes)."""
    return dict(input_size=(3, config.res, config.res), crop_pct=config.crop_pct,
                interpolation=config.interpolation, mean=tuple(config.mean), std=tuple(config.std))


def _run_config(raw, path: Path) -> dict | None:
    """The training configuration a checkpoint carries: in a run checkpoint's ``config`` entry, or in the
    metadata of a safetensors file ``convnext export`` wrote."""
    if isinstance(raw.get("config"), dict):
        return raw["config"]
    if path.suffix == ".safetensors":
        return metadata_json(read_metadata(path), "run_config", path)
    return None


def load_model(name: str | None = None, *, checkpoint: str | os.PathLike | None = None,
               pretrained: bool | str = False, key: str | None = None) -> nn.Module:
    """A model in eval mode with real weights: released ones, or a checkpoint of any layout.

    ``name`` may be left out for checkpoints that record their model (``convnext train`` runs and their
    safetensors exports); given, it must match. A checkpoint's own head decides the class count. ``key``
    picks an entry of the checkpoint, e.g. ``"model_ema"``.
    """
    if checkpoint is None:
        if name is None:
            raise UserError("name a model (--model) or a checkpoint (--checkpoint)")
        if not pretrained and "." not in name:
            raise UserError(f"{name} needs weights: pass --checkpoint FILE or --pretrained [TAG] "
                            "(`convnext models` lists the released tags)")
        return create_model(name, pretrained=pretrained).eval()
    if pretrained or (name is not None and "." in name):
        raise UserError("give either --checkpoint or released weights (--pretrained / MODEL.TAG), not both")
    path = Path(checkpoint)
    if path.suffix == ".xml":  # an INT8 model `convnext quantize` wrote
        if key is not None:
            raise UserError(f"{path} is one INT8 model; it has no {key} weights")
        return _quantized(name, path)
    raw = read_checkpoint_file(path)  # read once: tensors, or the whole record of a training run
    run_config = _run_config(raw, path)
    task = task_of_model(str((run_config or {}).get("model", "")))
    if task in DENSE_COMMANDS:
        raise UserError(f"{path} holds a {run_config['model']} ({task}); use `convnext {DENSE_COMMANDS[task]}` for it "
                        "(this command takes image classifiers)")
    if key is not None and key in raw and raw[key] is None:
        raise UserError(f"{path} holds no {key} weights (the run trained without them)")
    state = convert_state_dict(read_state_dict(raw, key=key))
    head = state.get("head.weight")
    if run_config:
        config = TrainConfig.from_dict(run_config)
        if name is not None and config.model != name:
            raise UserError(f"{path} holds a {config.model} (trained with `convnext train`), not {name}")
        model = build_run_model(config, 0 if head is None else head.shape[0])
        model.run_config = run_config  # what rebuilds it, kept by `convnext export --format safetensors`
        model.pretrained_cfg = dict(eval_config(config), label_names=raw.get("classes"))
    elif name is None:
        raise UserError(f"{path} does not record which model it holds (only `convnext train` checkpoints and "
                        "their safetensors exports do): pass --model NAME")
    else:
        model = create_model(name, **({} if head is None else {"num_classes": head.shape[0]}))
    load_checkpoint(model, state)
    metadata = read_metadata(path) if path.suffix == ".safetensors" else {}
    if "pretrained_cfg" in metadata:
        model.pretrained_cfg = metadata_json(metadata, "pretrained_cfg", path)
    model.model_name = model.run_config["model"] if run_config else name
    return model.eval()


def _quantized(name: str | None, path: Path) -> nn.Module:
    from ..weights.int8 import load_quantized

    model = load_quantized(path)
    if name is not None and model.model_name != name:
        raise UserError(f"{path} holds an INT8 {model.model_name}, not {name}")
    return model.eval()
