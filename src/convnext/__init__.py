"""ConvNeXt ("A ConvNet for the 2020s", Liu et al., CVPR 2022) for PyTorch."""

from .deploy.allocator import keep_freed_memory
from .errors import UserError
from .models.complexity import count_params, model_info
from .models.convnext import (
    Block,
    ConvNeXt,
    ConvNeXtFeatures,
    ConvNeXtIsotropic,
    build_model,
    check_input,
    create_model,
    list_models,
)
from .models.fuse import fuse
from .models.layers import LayerNorm2d, Pointwise, as_linears
from .models.roadmap import STEPS as ROADMAP_STEPS  # importing roadmap registers the roadmap_* models
from .models.roadmap import RoadmapConfig, RoadmapNet
from .tasks import detection  # noqa: F401 - registers the detectors (maskrcnn_convnext_*, fasterrcnn_convnext_*)
from .tasks.classification.config import RECIPES, TrainConfig, resolve_config
from .tasks.classification.evaluate import evaluate, evaluate_checkpoint
from .tasks.classification.train import train
from .tasks.loading import load_model
from .tasks.segmentation import UperNet  # importing segmentation registers the upernet_* models
from .weights import PRETRAINED, list_pretrained, load_checkpoint, save_weights

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
