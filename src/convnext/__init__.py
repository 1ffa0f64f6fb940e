"""ConvNeXt ("A ConvNet for the 2020s", Liu et al., CVPR 2022) for PyTorch.

The names below are loaded on first use (PEP 562 ``__getattr__``), each from the module that defines it, so
``import convnext`` (and ``convnext --help``) imports neither PyTorch nor any task's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import UserError

# public name -> (module, attribute)
_LAZY = {
    "PRETRAINED": (".weights", "PRETRAINED"),
    "RECIPES": (".tasks.classification.config", "RECIPES"),
    "ROADMAP_STEPS": (".models.roadmap", "STEPS"),
    "Block": (".models.convnext", "Block"),
    "ConvNeXt": (".models.convnext", "ConvNeXt"),
    "ConvNeXtFeatures": (".models.convnext", "ConvNeXtFeatures"),
    "ConvNeXtIsotropic": (".models.convnext", "ConvNeXtIsotropic"),
    "LayerNorm2d": (".models.layers", "LayerNorm2d"),
    "Pointwise": (".models.layers", "Pointwise"),
    "RoadmapConfig": (".models.roadmap", "RoadmapConfig"),
    "RoadmapNet": (".models.roadmap", "RoadmapNet"),
    "TrainConfig": (".tasks.classification.config", "TrainConfig"),
    "UperNet": (".models.upernet", "UperNet"),
    "as_linears": (".models.layers", "as_linears"),
    "build_model": (".models.convnext", "build_model"),
    "check_input": (".models.convnext", "check_input"),
    "count_params": (".models.complexity", "count_params"),
    "create_model": (".models.convnext", "create_model"),
    "evaluate": (".tasks.classification.evaluate", "evaluate"),
    "evaluate_checkpoint": (".tasks.classification.evaluate", "evaluate_checkpoint"),
    "fuse": (".models.fuse", "fuse"),
    "keep_freed_memory": (".deploy.allocator", "keep_freed_memory"),
    "list_models": (".models.convnext", "list_models"),
    "list_pretrained": (".weights", "list_pretrained"),
    "load_model": (".tasks.loading", "load_model"),
    "load_checkpoint": (".weights", "load_checkpoint"),
    "model_info": (".models.complexity", "model_info"),
    "resolve_config": (".tasks.classification.config", "resolve_config"),
    "save_weights": (".weights", "save_weights"),
    "train": (".tasks.classification.train", "train"),
}
_SUBPACKAGES = ("cli", "data", "deploy", "engine", "files", "models", "plots", "tasks", "weights")

__all__ = [
    "PRETRAINED",
    "RECIPES",
    "ROADMAP_STEPS",
    "Block",
    "ConvNeXt",
    "ConvNeXtFeatures",
    "ConvNeXtIsotropic",
    "LayerNorm2d",
    "Pointwise",
    "RoadmapConfig",
    "RoadmapNet",
    "TrainConfig",
    "UperNet",
    "UserError",
    "as_linears",
    "build_model",
    "check_input",
    "count_params",
    "create_model",
    "evaluate",
    "evaluate_checkpoint",
    "fuse",
    "keep_freed_memory",
    "list_models",
    "list_pretrained",
    "load_model",
    "load_checkpoint",
    "model_info",
    "resolve_config",
    "save_weights",
    "train",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _SUBPACKAGES:  # `import convnext; convnext.models....` as before
        return importlib.import_module(f".{name}", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})


if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from .deploy.allocator import keep_freed_memory
    from .models import *  # Block, ConvNeXt, create_model, ... (convnext.models.__all__)
    from .models.complexity import count_params, model_info
    from .models.fuse import fuse
    from .models.layers import LayerNorm2d, Pointwise, as_linears
    from .models.roadmap import STEPS as ROADMAP_STEPS
    from .models.roadmap import RoadmapConfig, RoadmapNet
    from .models.upernet import UperNet
    from .tasks.classification.config import RECIPES, TrainConfig, resolve_config
    from .tasks.classification.evaluate import evaluate, evaluate_checkpoint
    from .tasks.classification.train import train
    from .tasks.loading import load_model
    from .weights import PRETRAINED, list_pretrained, load_checkpoint, save_weights
