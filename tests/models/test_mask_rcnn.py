"""The detectors: size against the paper, backbone initialisation, layer decay, FLOP count."""

import pytest
import torch

import convnext
from convnext.engine.optim import param_groups
from convnext.models.mask_rcnn import detector_macs

SMALL = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], fpn_channels=16, head_width=32, min_size=64,
             test_size=64, max_size=128)


def test_maskrcnn_tiny_has_the_papers_48m_parameters():
    with torch.device("meta"):
        model = convnext.create_model("maskrcnn_convnext_tiny", num_classes=91)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 48e6) / 48e6 < 0.02, params
    assert model.backbone.out_channels == 256
    assert [getattr(model.backbone.body, f"norm{i}").weight.shape[0] for i in range(4)] == [96, 192, 384, 768]
    with torch.device("meta"):
        faster = convnext.create_model("fasterrcnn_convnext_tiny", num_classes=91)
    assert sum(p.numel() for p in faster.parameters()) < params  # no mask head


def test_backbone_starts_from_a_classification_checkpoint(tmp_path):
    classifier = convnext.create_model("convnext_tiny", dims=SMALL["dims"], depths=SMALL["depths"], num_classes=5)
    path = tmp_path / "cls.pth"
    torch.save({"model": classifier.state_dict()}, path)
    detector = convnext.create_model("maskrcnn_convnext_tiny", num_classes=3, checkpoint=path, **SMALL)
    body = detector.backbone.body
    assert torch.equal(body.stages[3][0].pwconv1.weight, classifier.stages[3][0].pwconv1.weight)
    assert torch.equal(body.downsample_layers[0][0].weight, classifier.downsample_layers[0][0].weight)
    assert "non-EMA" in detector.init_note
    # the official detection layout: the backbone's own keys under `backbone.`
    assert "backbone.norm3.weight" in detector.backbone_state_dict()
    assert "backbone.stages.0.0.dwconv.weight" in detector.backbone_state_dict()


def test_layer_decay_covers_the_backbone_only():
    with torch.device("meta"):
        detector = convnext.create_model("maskrcnn_convnext_small", num_classes=3)
    ids, top = detector.layer_decay_ids()
    assert top == 13  # 12 layer ids for [3, 3, 27, 3], as the official num_layers=12
    assert ids["backbone.body.downsample_layers.0.0.weight"] == 0
    assert ids["backbone.body.stages.2.26.pwconv1.weight"] == 11
    assert ids["backbone.body.norm2.weight"] == top and ids["roi_heads.box_head.fc6.weight"] == top
    groups = param_groups(detector, 0.05, 0.95)
    scales = {g["lr_scale"] for g in groups}
    assert max(scales) == 1.0 and min(scales) == pytest.approx(0.95 ** 13)


def test_detector_flops_count_box_and_mask_heads():
    mask = convnext.create_model("maskrcnn_convnext_tiny", num_classes=3, **SMALL)
    boxes = convnext.create_model("fasterrcnn_convnext_tiny", num_classes=3, **SMALL)
    assert detector_macs(boxes, 64, 96) > 0
    assert detector_macs(mask, 64, 96) > detector_macs(boxes, 64, 96)
    assert mask.training  # the count leaves the mode as it was


def test_detector_names_refuse_features_only():
    with pytest.raises(convnext.UserError, match="detector"):
        convnext.create_model("maskrcnn_convnext_tiny", features_only=True)
