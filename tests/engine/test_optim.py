"""One optimizer for every task: the parameter groups of `engine.optim` against the three implementations it
replaced (copied below from commit d5ac46d as the reference), group for group, so that checkpoints written by
earlier versions keep resuming: a resume loads the optimizer state into freshly built groups by position."""

import math
import re
import warnings

import pytest
import torch
from torch import nn

from convnext.engine.optim import build_optimizer, layer_ids, param_groups
from convnext.models.convnext import ConvNeXt, ConvNeXtFeatures, ConvNeXtIsotropic
from convnext.models.mask_rcnn import build_detector
from convnext.models.roadmap import STEPS, build_step
from convnext.models.upernet import UperNet

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the reference: the implementations of d5ac46d ---------------------------------------------------------


def old_unit(name):
    parts = name.split(".")[:-1]
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[: numeric[-1] + 1]) if numeric else (parts[0] if parts else name)


def old_forward_order(model, res):
    owners = [(name, m) for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    called = []
    hooks = [m.register_forward_pre_hook(lambda *_, name=name: called.append(name)) for name, m in owners]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, getattr(model, "in_chans", 3), res, res))
    except Exception:  # noqa: BLE001
        called = [name for name, _ in owners]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return list(dict.fromkeys(called + [name for name, _ in owners]))


def old_backbone_layer_ids(model):  # models/mask_rcnn.py
    depths = model.backbone.body.depths
    top = 3 + -(-depths[2] // 3) + 1
    fixed = {"downsample_layers.0": 0, "stages.0": 1, "downsample_layers.1": 2, "stages.1": 2,
             "downsample_layers.2": 3, "downsample_layers.3": top - 1, "stages.3": top - 1}
    ids = {}
    for name, _ in model.named_parameters():
        inner = name.removeprefix("backbone.body.")
        stage2 = re.match(r"stages\.2\.(\d+)\.", inner)
        if inner == name:
            ids[name] = top
        elif stage2:
            ids[name] = 3 + int(stage2.group(1)) // 3
        else:
            ids[name] = fixed.get(".".join(inner.split(".")[:2]), top)
    return ids, top


def old_layer_ids(model, res=224):  # engine/optim.py
    if hasattr(model, "roi_heads"):
        return old_backbone_layer_ids(model)
    names = [name for name, _ in model.named_parameters()]
    if isinstance(model, ConvNeXt) and len(model.depths) == 4:
        top = 3 + math.ceil(model.depths[2] / 3) + 1
        fixed = {"downsample_layers.0": 0, "stages.0": 1, "downsample_layers.1": 2, "stages.1": 2,
                 "downsample_layers.2": 3, "downsample_layers.3": top - 1, "stages.3": top - 1}
        ids = {}
        for name in names:
            stage2 = re.match(r"stages\.2\.(\d+)\.", name)
            ids[name] = 3 + int(stage2.group(1)) // 3 if stage2 else fixed.get(".".join(name.split(".")[:2]), top)
        return ids, top
    if isinstance(model, ConvNeXtIsotropic):
        top = model.depth + 1
        ids = {}
        for name in names:
            block = re.match(r"blocks\.(\d+)\.", name)
            ids[name] = 0 if name.startswith("stem.") else int(block.group(1)) + 1 if block else top
        return ids, top
    units = dict.fromkeys(old_unit(module + ".weight") for module in old_forward_order(model, res))
    order = {unit: i for i, unit in enumerate(units)}
    ids = {name: order.get(old_unit(name), len(order) - 1) for name in names}
    return ids, max(ids.values(), default=0)


def old_param_groups(model, weight_decay, layer_decay=1.0, res=224):  # classification and detection
    ids, top = old_layer_ids(model, res) if layer_decay < 1 else ({}, 0)
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        layer = ids.get(name, top)
        group = groups.setdefault((layer, no_decay), dict(
            params=[], weight_decay=0.0 if no_decay else weight_decay, lr_scale=layer_decay ** (top - layer),
            name=f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"))
        group["params"].append(param)
    return list(groups.values())


def old_seg_groups(model, lr, weight_decay, layer_decay, decay_layers):  # segmentation/recipes.py
    top = (decay_layers or (6 if model.depths[2] <= 9 else 12)) + 1
    ids = {}
    for name, _ in model.named_parameters():
        stage = re.match(r"backbone\.stages\.(\d)\.", name)
        ids[name] = 0 if name.startswith("backbone.downsample_layers.") else int(stage[1]) + 1 if stage else top
    groups = {}
    for name, param in model.named_parameters():
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        scale = layer_decay ** (top - ids[name])
        group = groups.setdefault((ids[name], no_decay), dict(
            params=[], weight_decay=0.0 if no_decay else weight_decay, lr_scale=scale, lr=lr * scale))
        group["params"].append(param)
    return list(groups.values())


# --- the comparison ----------------------------------------------------------------------------------------


def assert_same_groups(new, old):
    """Same groups in the same order: the same parameters (identity, order), scale, weight decay, and the same
    value for every key the old group had (``lr``, ``name``)."""
    assert len(new) == len(old)
    for i, (a, b) in enumerate(zip(new, old, strict=True)):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]], i
        for key in set(b) - {"params"}:
            assert a[key] == b[key], (i, key)


def slim_convnext(depths=(1, 2, 7, 1)):
    torch.manual_seed(0)
    return ConvNeXt(depths=depths, dims=(8, 8, 16, 16)[: len(depths)] + (16,) * (len(depths) - 4), num_classes=5)


def slim_upernet(depths=(1, 1, 2, 1)):
    return UperNet(depths=depths, dims=(8, 16, 24, 32), num_classes=3, channels=8, aux_channels=8)


def slim_detector(kind="maskrcnn", depths=(1, 1, 4, 1)):
    return build_detector(kind, "tiny", num_classes=3, depths=list(depths), dims=[8, 8, 16, 16], fpn_channels=8,
                          head_width=16, min_size=64, test_size=64, max_size=128)


@pytest.mark.parametrize("layer_decay", [1.0, 0.8])
@pytest.mark.parametrize("make", [slim_convnext, lambda: ConvNeXtIsotropic(depth=3, dim=16, num_classes=4)],
                         ids=["hierarchical", "isotropic"])
def test_classification_groups_are_the_old_ones(make, layer_decay):
    model = make()
    assert all(p.requires_grad for p in model.parameters())  # so filtering on it changes nothing
    assert_same_groups(param_groups(model, 0.05, layer_decay), old_param_groups(model, 0.05, layer_decay))


@pytest.mark.parametrize("name", ["convnext_small", "convnext_base"])
def test_classification_groups_of_the_official_sizes(name):
    from convnext.models import build_model

    with torch.device("meta"):
        model = build_model(name)
    assert_same_groups(param_groups(model, 0.05, 0.8), old_param_groups(model, 0.05, 0.8))


@pytest.mark.parametrize("layer_decay", [1.0, 0.9])
@pytest.mark.parametrize("decay_layers", [None, 3])
@pytest.mark.parametrize("depths", [(1, 1, 2, 1), (1, 1, 12, 1)])
def test_segmentation_groups_are_the_old_ones(depths, decay_layers, layer_decay):
    model = slim_upernet(depths)
    assert all(p.requires_grad for p in model.parameters())
    optimizer, _ = build_optimizer(model, lr=1e-4, weight_decay=0.05, layer_decay=layer_decay, betas=(0.9, 0.999),
                                   lr_factor=lambda step: 1.0, num_layers=decay_layers, group_by_layer=True)
    assert_same_groups(optimizer.param_groups, old_seg_groups(model, 1e-4, 0.05, layer_decay, decay_layers))


@pytest.mark.parametrize("layer_decay", [1.0, 0.95])
@pytest.mark.parametrize("kind", ["maskrcnn", "fasterrcnn"])
def test_detection_groups_are_the_old_ones(kind, layer_decay):
    model = slim_detector(kind)
    assert all(p.requires_grad for p in model.parameters())
    assert_same_groups(param_groups(model, 0.05, layer_decay), old_param_groups(model, 0.05, layer_decay))
    assert layer_ids(model) == old_backbone_layer_ids(model)


@pytest.mark.parametrize("step", [s.name for s in STEPS])
def test_roadmap_nets_keep_the_forward_order_map(step):
    torch.manual_seed(0)
    model = build_step(step, dims=(8, 8, 16, 16), depths=(1, 2, 2, 1), num_classes=3)
    assert layer_ids(model) == old_layer_ids(model, res=64)
    assert_same_groups(param_groups(model, 0.05, 0.7), old_param_groups(model, 0.05, 0.7, res=64))


@pytest.mark.parametrize("depths", [(1,), (1, 2, 1), (1, 1, 2, 1, 1)])
def test_convnexts_of_other_stage_counts_keep_the_forward_order_map(depths):
    model = slim_convnext(depths)
    assert layer_ids(model) == old_layer_ids(model, res=64)


def test_a_foreign_model_gets_the_forward_order():
    class HeadFirst(nn.Module):  # registered out of forward order
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 3)
            self.layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3))

        def forward(self, x):
            return self.head(self.layers(x).mean((2, 3)))

    model = HeadFirst()
    assert layer_ids(model, res=16) == old_layer_ids(model, res=16) == (
        {"head.weight": 2, "head.bias": 2, "layers.0.weight": 0, "layers.0.bias": 0, "layers.2.weight": 1,
         "layers.2.bias": 1}, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_groups(param_groups(model, 0.05, 0.5, res=16), old_param_groups(model, 0.05, 0.5, res=16))


def test_a_backbone_has_the_classifier_map():
    features = ConvNeXtFeatures(depths=(1, 1, 4, 1), dims=(8, 8, 16, 16))
    ids, top = features.layer_decay_ids()
    assert top == 3 + 2 + 1 and ids["downsample_layers.0.0.weight"] == 0 and ids["stages.2.3.gamma"] == 4
    assert ids["stages.3.0.gamma"] == top - 1 and ids["norm2.weight"] == top
    classifier = slim_convnext((1, 1, 4, 1))
    assert {k: v for k, v in ids.items() if not k.startswith("norm")} == {
        k: v for k, v in classifier.layer_decay_ids()[0].items() if not k.startswith(("norm.", "head."))}


def test_frozen_parameters_are_left_out():
    model = slim_convnext()
    model.downsample_layers.requires_grad_(False)
    frozen = {id(p) for p in model.downsample_layers.parameters()}
    kept = [id(p) for g in param_groups(model, 0.05, 0.8) for p in g["params"]]
    assert not frozen & set(kept) and len(kept) == sum(p.requires_grad for p in model.parameters())


def test_build_optimizer_scales_each_group_and_follows_the_tasks_schedule():
    model = slim_upernet()
    optimizer, schedule = build_optimizer(model, lr=2.0, weight_decay=0.05, layer_decay=0.5, betas=(0.9, 0.99),
                                          eps=1e-6, lr_factor=lambda step: 1 / (step + 1))
    assert optimizer.defaults["eps"] == 1e-6 and optimizer.defaults["betas"] == (0.9, 0.99)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert min(scales) == 0.5 ** 7 and max(scales) == 1.0  # the tiny-depth UperNet: 6 decayed layers
    assert schedule.get_last_lr() == pytest.approx([2.0 * s for s in scales])
    for _ in range(3):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr() == pytest.approx([2.0 * s / 4 for s in scales])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.0 * s / 4 for s in scales])
