"""The networks: the paper's ConvNeXt (``convnext``), its layers and kernels, the ResNet-50 -> ConvNeXt
roadmap, inference fusion, complexity counting, and the task heads built on the backbone (UperNet, Mask R-CNN)."""

from .convnext import (
    LN_EPS,
    MODEL_ARCHS,
    TIMM_PREFIX,
    Block,
    ConvNeXt,
    ConvNeXtFeatures,
    ConvNeXtIsotropic,
    build_model,
    check_input,
    create_model,
    drop_path_rates,
    list_models,
    register_model,
    register_with_timm,
)

__all__ = ["LN_EPS", "MODEL_ARCHS", "TIMM_PREFIX", "Block", "ConvNeXt", "ConvNeXtFeatures", "ConvNeXtIsotropic",
           "build_model", "check_input", "create_model", "drop_path_rates", "list_models", "register_model",
           "register_with_timm"]
