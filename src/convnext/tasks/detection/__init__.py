"""Object detection and instance segmentation: ConvNeXt in torchvision's Mask R-CNN / Faster R-CNN, COCO
data and the COCO protocol (box and mask AP), trained with the same run machinery as classification.

Importing this package registers ``maskrcnn_convnext_{tiny,small,base}`` and ``fasterrcnn_convnext_*``.
"""

from ...models.mask_rcnn import ConvNeXtFasterRCNN, ConvNeXtFPN, ConvNeXtMaskRCNN, build_detector, init_backbone
from ...models.mask_rcnn import _register as _register_models

_register_models()

__all__ = ["ConvNeXtFPN", "ConvNeXtFasterRCNN", "ConvNeXtMaskRCNN", "build_detector", "init_backbone"]
