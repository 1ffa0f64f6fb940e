"""The model protocol (`convnext.protocol`): every registered model of ours follows it, and the entry
points give the attributes they promise."""

import pytest
import torch

import convnext  # noqa: F401 - registers every model: roadmap, UperNet, detectors
from convnext.models import ConvNeXt, ConvNeXtFeatures, build_model, check_input, create_model, list_models
from convnext.models.upernet import UperNet
from convnext.protocol import (
    ConvNeXtModel,
    FeatureBackbone,
    FromRun,
    ImageModel,
    LayerDecay,
    Named,
    Preprocessed,
    SelfCounting,
    TaskModel,
    model_name,
)

OURS = list_models()  # at collection: the package's own names only (tests register theirs while running)
TASKS = ("upernet_", "maskrcnn_", "fasterrcnn_", "cascade_mask_rcnn_")


def meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.mark.parametrize("name", OURS)
def test_every_registered_model_follows_the_protocol(name):
    model = meta(name, **({"num_classes": 3} if name.startswith(TASKS) else {}))
    assert isinstance(model, ConvNeXtModel) and isinstance(model, Named) and model.model_name == name
    assert isinstance(model, TaskModel) == name.startswith(TASKS)
    assert isinstance(model, SelfCounting) == name.startswith(TASKS[1:])  # the detectors count themselves
    ids, top = model.layer_decay_ids()
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert min(ids.values()) == 0 and max(ids.values()) == top
    assert model.layer_decay_ids(num_layers=None) == (ids, top)


def test_num_layers_is_the_segmentation_configs_override():
    model = meta("upernet_convnext_tiny", num_classes=3)
    ids, top = model.layer_decay_ids(num_layers=9)
    assert top == 10 and ids["decode_head.conv_seg.weight"] == 10 and ids["backbone.stages.3.0.gamma"] == 4
    assert model.layer_decay_ids()[1] == 7  # the tiny config's 6, plus one
    classifier = meta("convnext_tiny")
    assert classifier.layer_decay_ids(num_layers=9) == classifier.layer_decay_ids()


def test_backbones_and_the_attributes_entry_points_give():
    backbone = build_model("convnext_atto", features_only=True)
    assert isinstance(backbone, FeatureBackbone) and isinstance(backbone, ConvNeXtModel)
    assert not isinstance(meta("convnext_atto"), FeatureBackbone)
    direct = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=2)
    assert not isinstance(direct, Named | Preprocessed | FromRun) and model_name(direct) == "ConvNeXt"
    created = create_model("convnext_atto", num_classes=2)
    assert isinstance(created, Preprocessed) and created.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model_name(created) == "convnext_atto"


def test_foreign_models_are_seen_for_what_they_are():
    plain = torch.nn.Linear(3, 3)
    assert not isinstance(plain, LayerDecay | ImageModel | ConvNeXtModel)
    plain.in_chans = 3
    assert isinstance(plain, ImageModel) and not isinstance(plain, ConvNeXtModel)


def test_check_input_reads_the_stride_of_our_models():
    upernet = UperNet(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=3, channels=8, aux_channels=8)
    check_input(upernet, torch.zeros(1, 3, 32, 32))
    with pytest.raises(convnext.UserError, match="H, W >= 32"):
        check_input(upernet, torch.zeros(1, 3, 16, 32))
    isotropic = meta("convnext_isotropic_small")
    check_input(isotropic, torch.zeros(1, 3, 16, 16, device="meta"))
    backbone = ConvNeXtFeatures(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
    with pytest.raises(convnext.UserError, match="H, W >= 32"):
        check_input(backbone, torch.zeros(1, 3, 16, 16))
