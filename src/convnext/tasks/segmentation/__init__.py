"""Semantic segmentation with UperNet on ConvNeXt, the paper's ADE20K protocol (Sec. 4, Table 4).

``upernet_convnext_{tiny,small,base,large,xlarge}`` are registered models (`convnext.create_model`), and their
released ADE20K weights are in the weights registry (`convnext.weights`).
"""

from ...models.upernet import UperNet
from ...weights.segmentation import ADE20K_WEIGHTS, convert_segmentation_state_dict, load_segmentation_checkpoint

__all__ = ["ADE20K_WEIGHTS", "UperNet", "convert_segmentation_state_dict", "load_segmentation_checkpoint"]
