"""Semantic segmentation with UperNet on ConvNeXt, the paper's ADE20K protocol (Sec. 4, Table 4).

Importing this package registers ``upernet_convnext_{tiny,small,base,large,xlarge}`` with `convnext.create_model`
and the released ADE20K weights with the weights registry.
"""

from ...models.upernet import UperNet
from ...weights.segmentation import ADE20K_WEIGHTS, convert_segmentation_state_dict, load_segmentation_checkpoint

__all__ = ["ADE20K_WEIGHTS", "UperNet", "convert_segmentation_state_dict", "load_segmentation_checkpoint"]
