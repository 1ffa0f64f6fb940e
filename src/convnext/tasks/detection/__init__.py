"""Object detection and instance segmentation: ConvNeXt in torchvision's Mask R-CNN / Faster R-CNN, COCO
data and the COCO protocol (box and mask AP), trained with the same run machinery as classification.

``maskrcnn_convnext_{tiny,small,base}`` and ``fasterrcnn_convnext_*`` are registered models (`convnext.create_model`).
"""

from ...models.mask_rcnn import ConvNeXtFasterRCNN, ConvNeXtFPN, ConvNeXtMaskRCNN, build_detector, init_backbone

__all__ = ["ConvNeXtFPN", "ConvNeXtFasterRCNN", "ConvNeXtMaskRCNN", "build_detector", "init_backbone"]
