import json
from dataclasses import fields

import pytest
import torch
from PIL import Image

from convnext import UserError, create_model, list_models, load_checkpoint
from convnext.cli import main
from convnext.models import Block, build_model
from convnext.models.complexity import count_macs_and_activations, count_params
from convnext.models.roadmap import STEPS, RoadmapBlock, get_step

# What each step's name says it changes, as RoadmapConfig fields.
CHANGES = {
    "resnet50": set(),
    "stage_ratio": {"depths"},
    "patchify_stem": {"stem"},
    "resnextify": {"depthwise", "dims"},
    "inverted_bottleneck": {"inverted_bottleneck"},
    "move_up_dwconv": {"dwconv_first"},
    "kernel_5": {"kernel_size"},
    "kernel_7": {"kernel_size"},
    "kernel_9": {"kernel_size"},
    "kernel_11": {"kernel_size"},
    "gelu": {"activation"},
    "fewer_activations": {"single_activation"},
    "fewer_norms": {"single_norm"},
    "layer_norm": {"norm"},
    "separate_downsampling": {"separate_downsampling"},
}
# The paper's top-1 per step (Figure 2), in order.
PAPER_TOP1 = [78.8, 79.4, 79.5, 80.5, 80.6, 79.9, 80.4, 80.6, 80.6, 80.5, 80.6, 81.3, 81.4, 81.5, 82.0]


def meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


def gmacs(model, res=224):
    return count_macs_and_activations(model, res)[0] / 1e9


def test_steps_are_the_papers_in_order_and_registered():
    assert [s.name for s in STEPS] == list(CHANGES)
    assert [s.paper_top1 for s in STEPS] == PAPER_TOP1
    assert list_models("roadmap_*") == [f"roadmap_{name}" for name in CHANGES]
    assert get_step("roadmap_gelu") is get_step("gelu")
    with pytest.raises(UserError, match="unknown roadmap step"):
        get_step("kernel_13")


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_step_changes_only_what_its_name_says(step):
    if step.base is None:
        assert step.name == "resnet50"
        return
    base = get_step(step.base).config
    changed = {f.name for f in fields(base) if getattr(base, f.name) != getattr(step.config, f.name)}
    assert changed == CHANGES[step.name]


def test_kernel_sizes_branch_from_3x3_and_the_road_goes_on_from_7x7():
    assert [get_step(f"kernel_{k}").config.kernel_size for k in (5, 7, 9, 11)] == [5, 7, 9, 11]
    assert get_step("gelu").base == "kernel_7"


def test_gmacs_match_the_paper():
    """Within 0.1 G of every figure the paper states; 'about 4.1-4.3' where it gives none."""
    for step in STEPS:
        ours = gmacs(meta(step.model_name))
        if step.paper_gflops is not None:
            assert abs(ours - step.paper_gflops) <= 0.1, (step.name, ours)
        else:
            assert 4.0 <= ours <= 4.4, (step.name, ours)


def test_resnet50_is_the_textbook_network():
    model = meta("roadmap_resnet50", layer_scale_init_value=0)
    assert count_params(model) == 25_557_032  # torchvision's resnet50
    first = model.stages[1][0]
    assert first.dwconv.stride == (2, 2) and first.dwconv.groups == 1 and first.dwconv.kernel_size == (3, 3)
    assert first.shortcut[0].stride == (2, 2) and first.dwconv.bias is None  # no bias before a BatchNorm
    assert [len(s) for s in model.stages] == [3, 4, 6, 3] and model.num_features == 2048


def test_middle_steps_block_layout():
    inverted = meta("roadmap_inverted_bottleneck").stages[2][0]
    assert inverted.dwconv.in_channels == 4 * 384 and inverted.dwconv.groups == 4 * 384
    moved = meta("roadmap_move_up_dwconv").stages[2][0]  # depthwise conv at the input width, stride 2
    assert moved.dwconv.in_channels == 192 and moved.dwconv.stride == (2, 2)
    assert moved.pwconv1.weight.shape == (4 * 384, 192)
    norms = meta("roadmap_fewer_norms").stages[2][1]
    assert isinstance(norms.norm, torch.nn.BatchNorm2d)
    assert isinstance(norms.norm1, torch.nn.Identity) and isinstance(norms.norm2, torch.nn.Identity)
    layer_norm = meta("roadmap_layer_norm")
    assert isinstance(layer_norm.stages[2][1], Block) and isinstance(layer_norm.stages[2][0], RoadmapBlock)


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_trains_at_64px(step):
    """Forward and backward at 64x64 on each step's structure, narrowed 8x to stay fast."""
    torch.manual_seed(0)
    model = create_model(step.model_name, num_classes=3, dims=tuple(d // 8 for d in step.config.dims)).train()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_last_step_is_convnext_tiny():
    torch.manual_seed(0)
    tiny = create_model("convnext_tiny").eval()
    step = create_model("roadmap_separate_downsampling").eval()
    assert count_params(step) == count_params(tiny) == 28_589_128
    assert {k: v.shape for k, v in step.state_dict().items()} == {k: v.shape for k, v in tiny.state_dict().items()}
    load_checkpoint(step, {"model": tiny.state_dict()}, strict=True)  # the official file layout
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(step(x), tiny(x), rtol=0, atol=0)


def test_config_overrides_and_bad_options():
    relu = meta("roadmap_gelu", activation="relu")
    assert relu.config == get_step("kernel_7").config
    # what `convnext train` passes to every model (training._build), plus JSON lists from --set model_args
    trained = meta("roadmap_layer_norm", num_classes=10, drop_path_rate=0.2, head_init_scale=0.001,
                   layer_scale_init_value=0.0, dims=[8, 16, 32, 64])
    assert trained.head.out_features == 10 and trained.config.dims == (8, 16, 32, 64)
    assert trained.stages[3][-1].drop_path.p == pytest.approx(0.2)
    assert not any("gamma" in k for k in trained.state_dict())
    with pytest.raises(UserError, match="norm must be one of"):
        meta("roadmap_resnet50", norm="group")
    with pytest.raises(UserError, match="invalid option"):
        meta("roadmap_resnet50", widths=(1, 2))


def test_cli_table_json_and_plot(tmp_path, capsys):
    png = tmp_path / "roadmap.png"
    assert main(["roadmap", "--json", "--plot", str(png)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == [s.model_name for s in STEPS]
    assert rows[-1]["params"] == 28_589_128 and rows[0]["paper_top1"] == 78.8
    with Image.open(png) as img:
        assert img.width > 800 and img.height > 600
    assert main(["roadmap", "--res", "16"]) == 2
    assert main(["roadmap", "--plot", str(tmp_path / "new" / "r.png")]) == 0  # a missing folder is made
    assert (tmp_path / "new" / "r.png").is_file()
    assert main(["roadmap", "--plot", str(tmp_path / "new")]) == 2  # no picture format, checked before measuring
    assert "name a .png, .pdf or .svg file" in capsys.readouterr().err
    (tmp_path / "dir.png").mkdir()
    assert main(["roadmap", "--plot", str(tmp_path / "dir.png")]) == 2  # a folder is no picture
    assert "it is a folder" in capsys.readouterr().err
