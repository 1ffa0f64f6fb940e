import pytest
import torch
import torch.nn.functional as F

from convnext import UserError, check_input, create_model, list_models
from convnext.models import Block, ConvNeXt, ConvNeXtFeatures, build_model, drop_path_rates
from convnext.models.complexity import count_macs_and_activations

PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnext_xlarge": 350_196_968,
}
# Paper / official README GMACs (multiply-accumulates), to one decimal.
GMACS = [
    ("convnext_tiny", 224, 4.5), ("convnext_small", 224, 8.7), ("convnext_base", 224, 15.4),
    ("convnext_large", 224, 34.4), ("convnext_xlarge", 224, 60.9), ("convnext_base", 384, 45.1),
    ("convnext_large", 384, 101.0), ("convnext_xlarge", 384, 179.0), ("convnext_isotropic_small", 224, 4.3),
    ("convnext_isotropic_base", 224, 16.9), ("convnext_isotropic_large", 224, 59.7),
]
SMALL_VARIANTS = {  # depths, dims of the CPU / edge variants
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnext_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnext_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnext_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
}


def meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


def tiny_net(**kw):
    return ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, **kw)


@pytest.mark.parametrize("name,params", PARAMS.items())
def test_paper_parameter_counts(name, params):
    assert sum(p.numel() for p in meta(name).parameters()) == params


@pytest.mark.parametrize("name,res,gmacs", GMACS)
def test_gmacs_match_paper(name, res, gmacs):
    macs, _ = count_macs_and_activations(meta(name), res)
    assert round(macs / 1e9, 1) == gmacs


@pytest.mark.parametrize("name", SMALL_VARIANTS)
def test_small_variants_shapes(name):
    depths, dims = SMALL_VARIANTS[name]
    model = meta(name)
    assert model.depths == depths and model.dims == dims
    assert [len(s) for s in model.stages] == list(depths)


def test_isotropic_variants():
    for name, depth, dim, has_gamma in [("convnext_isotropic_small", 18, 384, False),
                                        ("convnext_isotropic_base", 18, 768, False),
                                        ("convnext_isotropic_large", 36, 1024, True)]:
        model = meta(name)
        keys = model.state_dict().keys()
        assert len(model.blocks) == depth and model.stem.kernel_size == (16, 16) and model.stem.out_channels == dim
        assert ("blocks.0.gamma" in keys) == has_gamma
        assert not any(k.startswith("stem.") and k not in ("stem.weight", "stem.bias") for k in keys)


def test_registry_lists_the_family():
    names = list_models("convnext_*")
    for name in [*PARAMS, *SMALL_VARIANTS, "convnext_isotropic_small"]:
        assert name in names
    assert list_models("convnext_*tiny") == ["convnext_tiny"]


def test_official_state_dict_names():
    keys = list(meta("convnext_tiny").state_dict())
    assert len(keys) == 182
    assert keys[:4] == ["downsample_layers.0.0.weight", "downsample_layers.0.0.bias",
                        "downsample_layers.0.1.weight", "downsample_layers.0.1.bias"]
    block = [k for k in keys if k.startswith("stages.2.8.")]
    assert block == ["stages.2.8.gamma", "stages.2.8.dwconv.weight", "stages.2.8.dwconv.bias",
                     "stages.2.8.norm.weight", "stages.2.8.norm.bias", "stages.2.8.pwconv1.weight",
                     "stages.2.8.pwconv1.bias", "stages.2.8.pwconv2.weight", "stages.2.8.pwconv2.bias"]
    assert keys[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    shapes = meta("convnext_tiny").state_dict()
    assert shapes["stages.0.0.pwconv1.weight"].shape == (384, 96)
    assert shapes["downsample_layers.1.1.weight"].shape == (192, 96, 2, 2)


def test_layer_scale_disabled_has_no_gamma():
    for value in (0, None):
        model = tiny_net(layer_scale_init_value=value)
        assert not any("gamma" in k for k in model.state_dict())
    assert tiny_net().stages[0][0].gamma.detach().eq(1e-6).all()


def test_forward_any_size_divisible_by_32():
    model = create_model("convnext_atto", num_classes=7).eval()
    for h, w in [(32, 32), (64, 96), (128, 64)]:
        assert model(torch.randn(2, 3, h, w)).shape == (2, 7)


def test_wrong_input_shape_is_a_clear_error():
    model = tiny_net().eval()
    with pytest.raises(UserError, match=r"shape \(N, 3, H, W\)"):
        check_input(model, torch.randn(1, 4, 64, 64))
    with pytest.raises(UserError, match="H, W >= 32"):
        check_input(model, torch.randn(1, 3, 16, 16))
    with pytest.raises(UserError, match="H, W >= 16"):
        check_input(meta("convnext_isotropic_small"), torch.randn(1, 3, 8, 8))
    check_input(model, torch.randn(1, 3, 32, 32))
    assert issubclass(UserError, ValueError)


def test_in_chans_and_num_classes():
    model = create_model("convnext_atto", in_chans=1, num_classes=3).eval()
    assert model.downsample_layers[0][0].weight.shape[1] == 1
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_forward_features_head_and_reset_classifier():
    model = tiny_net().eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 32, 2, 2)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 32)
    torch.testing.assert_close(model.forward_head(feats), model.head(pre))
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)


def test_features_only_pyramid():
    model = create_model("convnext_atto", features_only=True).eval()
    assert isinstance(model, ConvNeXtFeatures) and model.feature_channels == [40, 80, 160, 320]
    maps = model(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [(1, 40, 32, 32), (1, 80, 16, 16), (1, 160, 8, 8), (1, 320, 4, 4)]
    keys = model.state_dict().keys()
    assert {"norm0.weight", "norm3.bias"} <= set(keys) and "head.weight" not in keys and "norm.weight" not in keys
    two = create_model("convnext_atto", features_only=True, out_indices=(1, 3)).eval()
    assert [m.shape[1] for m in two(torch.randn(1, 3, 64, 64))] == [80, 320]
    with pytest.raises(UserError):
        create_model("convnext_atto", features_only=True, out_indices=(4,))
    with pytest.raises(UserError, match="hierarchical"):
        create_model("convnext_isotropic_small", features_only=True)


def test_classifier_gives_intermediates_and_keeps_its_logits():
    model = tiny_net().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)  # timm's default also returns the final map
        assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 24, 4, 4), (2, 32, 2, 2)]
        torch.testing.assert_close(model.forward_head(maps[-1]), model(x))
        assert [m.shape[1] for m in model.forward_intermediates(x, (1,), intermediates_only=True)] == [16]


def test_grad_checkpointing_gives_same_result():
    torch.manual_seed(0)
    model = tiny_net().train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = tiny_net(drop_path_rate=0.4)
    rates = [b.drop_path.p for stage in model.stages for b in stage]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert drop_path_rates(0.1, 1) == [0.0]


def test_drop_path_drops_whole_samples_in_training_only():
    torch.manual_seed(0)
    block = Block(8, drop_path=0.5, layer_scale_init_value=1.0).train()
    x = torch.randn(64, 8, 4, 4)
    residual = block(x) - x
    dropped = residual.flatten(1).abs().sum(1) == 0
    assert 10 < dropped.sum() < 54
    block.eval()
    assert not ((block(x) - x).flatten(1).abs().sum(1) == 0).any()


def test_init():
    torch.manual_seed(0)
    model = ConvNeXt(head_init_scale=0.001)
    w = model.stages[2][0].pwconv1.weight
    assert abs(w.std().item() - 0.02) < 0.001  # trunc_normal_ cut at ±2 (absolute), as the official code
    assert model.stages[2][0].pwconv1.bias.abs().max() == 0
    assert model.head.weight.std().item() < 0.02 * 0.001 * 1.2
    assert model.downsample_layers[1][0].weight.eq(1).all()


def test_block_gradcheck_float64():
    torch.manual_seed(0)
    block = Block(4, layer_scale_init_value=0.5).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


def test_model_gradcheck_float64():
    torch.manual_seed(0)
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(4, 4, 8, 8), num_classes=3).double()
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)  # few inputs keep gradcheck quick

    def f(z):
        return model(torch.nn.functional.interpolate(z, size=32, mode="bilinear"))

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-4)


def test_unknown_model_and_bad_option():
    with pytest.raises(UserError, match="unknown model"):
        create_model("convnext_tinyy")
    with pytest.raises(UserError, match="invalid option"):
        create_model("convnext_atto", no_such_option=1)



def test_macs_of_a_real_model_under_no_grad_match_the_meta_count():
    """FLOP counters see every convolution of the eager model."""
    model = create_model("convnext_atto").eval()
    with torch.no_grad():
        assert count_macs_and_activations(model, 64) == count_macs_and_activations(meta("convnext_atto"), 64)


def test_torch_compile_traces_the_whole_model_in_one_graph():
    """torch.compile sees the whole model, depthwise backward included: no graph breaks."""
    model = create_model("convnext_atto")
    x = torch.randn(2, 3, 64, 64)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    with torch.no_grad():
        assert torch._dynamo.explain(model.eval())(x).graph_break_count == 0


def test_bf16_autocast_training_step_on_cpu():
    """`--amp` on a CPU: the forward runs in bf16, the depthwise backward casts back to each input's dtype."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=5, dims=(8, 16, 32, 64), depths=(2, 1, 1, 1),
                         layer_scale_init_value=0.5)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    F.cross_entropy(model(x), y).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32, name
        cosine = F.cosine_similarity(p.grad.flatten(), reference[name].flatten(), dim=0)
        assert cosine > 0.9, (name, cosine)
