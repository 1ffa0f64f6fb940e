"""ConvNeXt ("A ConvNet for the 2020s", Liu et al., CVPR 2022) for PyTorch."""

from .complexity import count_params, model_info
from .errors import UserError
from .models import Block, ConvNeXt, ConvNeXtIsotropic, LayerNorm2d, build_model, create_model, list_models
from .weights import PRETRAINED, list_pretrained, load_checkpoint, save_weights

__all__ = [
    "PRETRAINED",
    "Block",
    "ConvNeXt",
    "ConvNeXtIsotropic",
    "LayerNorm2d",
    "UserError",
    "build_model",
    "count_params",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "model_info",
    "save_weights",
]
__version__ = "0.1.0"
