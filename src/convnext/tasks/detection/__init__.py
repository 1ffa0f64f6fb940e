"""Object detection and instance segmentation: ConvNeXt in torchvision's Mask R-CNN / Faster R-CNN and in our
Cascade Mask R-CNN (on torchvision's components), COCO data and the COCO protocol (box and mask AP), trained
through the one engine.

``maskrcnn_convnext_{tiny,small,base}``, ``fasterrcnn_convnext_*`` and ``cascade_mask_rcnn_convnext_{tiny,small,
base,large,xlarge}`` are registered models (`convnext.create_model`).
"""

from ...models.mask_rcnn import ConvNeXtFasterRCNN, ConvNeXtFPN, ConvNeXtMaskRCNN, build_detector, init_backbone

__all__ = ["ConvNeXtFPN", "ConvNeXtFasterRCNN", "ConvNeXtMaskRCNN", "build_detector", "init_backbone"]
