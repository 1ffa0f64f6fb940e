"""Cascade Mask R-CNN: sizes against the official table, the stages as configured, training and inference, and
the official (mmdetection) checkpoint names."""

import pytest
import torch

import convnext
from convnext.models.cascade import BOX_STDS, IOU_THRESHOLDS, build_cascade
from convnext.models.mask_rcnn import detector_macs

SMALL = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], fpn_channels=16, head_width=32, min_size=64,
             test_size=64, max_size=128, rois_per_image=64, proposals=100)
# the official README (1280 x 800, 80 classes): parameters in millions
PAPER_PARAMS = {"tiny": 86, "small": 108, "base": 146, "large": 255, "xlarge": 407}


@pytest.mark.parametrize("size", list(PAPER_PARAMS))
def test_every_size_has_the_official_parameter_count(size):
    with torch.device("meta"):
        model = convnext.create_model(f"cascade_mask_rcnn_convnext_{size}", num_classes=81)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - PAPER_PARAMS[size]) / PAPER_PARAMS[size] < 0.02, params


def test_tiny_counts_the_official_741_gflops_at_1280x800():
    model = build_cascade("tiny", num_classes=81)
    assert abs(detector_macs(model) / 1e9 - 741) / 741 < 0.03


def test_the_stages_are_configured_as_the_official_cascade():
    model = build_cascade("tiny", num_classes=5, **SMALL)
    stages = model.roi_heads.stages
    assert [s.proposal_matcher.high_threshold for s in stages] == list(IOU_THRESHOLDS)
    assert [s.proposal_matcher.low_threshold for s in stages] == list(IOU_THRESHOLDS)
    for stage, stds in zip(stages, BOX_STDS, strict=True):
        assert stage.box_coder.weights == pytest.approx(tuple(1 / s for s in stds))
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stage.box_head.modules()) == 4
        assert stage.box_predictor.bbox_pred.out_features == 4 * 4  # class-specific, foreground only
        assert stage.mask_predictor.mask_fcn_logits.out_channels == 4
    assert stages[0].fg_bg_sampler.batch_size_per_image == 64


def _sample():
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 64, 80, dtype=torch.uint8)
    mask[0, 10:40, 20:50] = 1
    target = dict(boxes=torch.tensor([[20.0, 10.0, 50.0, 40.0]]), labels=torch.tensor([2]), masks=mask)
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                 masks=torch.zeros(0, 64, 80, dtype=torch.uint8))
    return [image, image.flip(-1)], [target, empty]


def test_training_returns_three_stages_of_losses_and_they_fall():
    torch.manual_seed(0)
    model = build_cascade("tiny", num_classes=3, **SMALL)
    images, targets = _sample()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(8):
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    for stage in (1, 2, 3):
        assert {f"loss_classifier_{stage}", f"loss_box_giou_{stage}", f"loss_mask_{stage}"} <= set(losses)
    assert {"loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert losses["loss_classifier_3"] < losses["loss_classifier_1"]  # stage weights 1, 0.5, 0.25
    assert totals[-1] < 0.6 * totals[0], totals


def test_inference_returns_boxes_labels_scores_and_masks():
    model = build_cascade("tiny", num_classes=3, **SMALL).eval()
    model.roi_heads.score_thresh = 0.0
    images, _ = _sample()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for row in out:
        assert set(row) == {"boxes", "labels", "scores", "masks"}
        n = len(row["boxes"])
        assert n > 0 and row["masks"].shape == (n, 1, 64, 80)
        assert row["labels"].min() >= 1 and row["labels"].max() <= 2
        assert 0 <= row["masks"].min() and row["masks"].max() <= 1


def test_an_mmdet_cascade_checkpoint_loads_strictly_tensor_for_tensor(tmp_path, mmdet_cascade_state):
    args = {**SMALL, "head_width": 48}
    model = build_cascade("tiny", num_classes=4, **args)
    mmdet = mmdet_cascade_state(model, args["dims"], args["fpn_channels"], args["head_width"], classes=3)
    path = tmp_path / "cascade_mask_rcnn_convnext_tiny_1k_3x.pth"
    torch.save({"state_dict": mmdet, "meta": {"CLASSES": ("a", "b", "c"), "epoch": 36}}, path)
    assert "detector weights" in model.load_weights(path)
    ours = model.state_dict()
    assert len(ours) == len(mmdet)
    assert torch.equal(ours["backbone.body.stages.3.0.pwconv2.weight"], mmdet["backbone.stages.3.0.pwconv2.weight"])
    assert torch.equal(ours["backbone.fpn.inner_blocks.2.0.weight"], mmdet["neck.lateral_convs.2.conv.weight"])
    assert torch.equal(ours["rpn.head.bbox_pred.weight"], mmdet["rpn_head.rpn_reg.weight"])
    for s in range(3):
        box, stage = f"roi_head.bbox_head.{s}", f"roi_heads.stages.{s}"
        assert torch.equal(ours[f"{stage}.box_head.3.1.running_var"], mmdet[f"{box}.shared_convs.3.bn.running_var"])
        assert torch.equal(ours[f"{stage}.box_head.5.weight"], mmdet[f"{box}.shared_fcs.0.weight"])
        assert torch.equal(ours[f"{stage}.box_predictor.bbox_pred.weight"], mmdet[f"{box}.fc_reg.weight"])
        cls = mmdet[f"{box}.fc_cls.weight"]  # mmdet [fg..., bg] -> ours [bg, fg...]
        assert torch.equal(ours[f"{stage}.box_predictor.cls_score.weight"], torch.cat([cls[-1:], cls[:-1]]))
        assert torch.equal(ours[f"{stage}.mask_predictor.conv5_mask.weight"],
                           mmdet[f"roi_head.mask_head.{s}.upsample.weight"])
        assert torch.equal(ours[f"{stage}.mask_predictor.mask_fcn_logits.bias"],
                           mmdet[f"roi_head.mask_head.{s}.conv_logits.bias"])


def test_an_mmdet_file_of_another_architecture_is_refused_in_one_line(tmp_path):
    model = build_cascade("tiny", num_classes=4, **SMALL)
    path = tmp_path / "mask_rcnn.pth"
    torch.save({"state_dict": {"neck.lateral_convs.0.conv.weight": torch.zeros(1),
                               "roi_head.bbox_head.shared_fcs.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(convnext.UserError, match="another detector"):
        model.load_weights(path)


def test_cascade_layer_decay_and_features_only():
    with torch.device("meta"):
        model = convnext.create_model("cascade_mask_rcnn_convnext_base", num_classes=3)
    ids, top = model.layer_decay_ids()
    assert top == 13 and ids["roi_heads.stages.2.box_head.5.weight"] == top
    assert ids["backbone.body.stages.2.26.pwconv1.weight"] == 11
    with pytest.raises(convnext.UserError, match="detector"):
        convnext.create_model("cascade_mask_rcnn_convnext_tiny", features_only=True)
