"""Our models inside timm's machinery: registry, pretrained cfgs, feature wrappers, FX, TorchScript."""

import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.models.feature_extraction import create_feature_extractor

import convnext.models
import convnext.models.convnext
from convnext.errors import UserError
from convnext.models import MODEL_ARCHS, TIMM_PREFIX, ConvNeXt, ConvNeXtIsotropic, register_with_timm
from convnext.models.layers import DepthwiseConv2d
from convnext.weights import save_weights

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:.*jit.*:FutureWarning")]

ARCHS = ["convnext_atto", "convnext_tiny"]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", autouse=True)
def names() -> list[str]:
    return register_with_timm()


def seeded(name: str, **kwargs) -> torch.nn.Module:
    """A timm-built model with weights fixed by the seed, so that two builds can be compared."""
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def test_registration_is_explicit_prefixed_and_idempotent(names):
    assert names == [TIMM_PREFIX + arch for arch in MODEL_ARCHS]
    assert names == register_with_timm()
    assert set(timm.list_models("cnx_*")) == set(names)
    assert "convnext_tiny" in timm.list_models("convnext_t*")  # timm's own model is untouched
    assert {"cnx_convnext_tiny.in1k", "cnx_convnext_tiny.in22k_ft_in1k_384"} <= set(
        timm.list_models("cnx_convnext_tiny*", pretrained=True))
    assert timm.models.get_pretrained_cfg("cnx_convnext_tiny").tag == "in1k"  # our default weights, timm's too
    code = "import convnext, timm; assert not timm.is_model('cnx_convnext_atto')"
    subprocess.run([sys.executable, "-c", code], check=True)  # `import convnext` registers nothing


@pytest.mark.parametrize("arch", ARCHS)
def test_create_model_gives_ours_with_pretrained_cfg_and_head_size(arch):
    model = seeded(TIMM_PREFIX + arch)
    assert type(model) is ConvNeXt and model.model_name == arch
    torch.manual_seed(0)
    ours = convnext.models.create_model(arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), ours(X))
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == TIMM_PREFIX + arch and cfg["input_size"] == (3, 224, 224)
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert timm.data.resolve_model_data_config(model)["crop_pct"] == 0.875
    assert model.head_hidden_size == model.num_features == MODEL_ARCHS[arch][1]["dims"][-1]
    with torch.no_grad():
        assert model.forward_head(model.forward_features(X), pre_logits=True).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("feature_cls", [None, "getter", "hook"])
def test_features_only_maps_match_forward_intermediates(arch, feature_cls):
    kwargs = {} if feature_cls is None else dict(feature_cls=feature_cls)
    features = seeded(TIMM_PREFIX + arch, features_only=True, **kwargs)
    assert type(features).__name__ == ("FeatureHookNet" if feature_cls == "hook" else "FeatureGetterNet")
    dims = list(MODEL_ARCHS[arch][1]["dims"])
    assert features.feature_info.channels() == dims and features.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = features(X)
        expected = seeded(TIMM_PREFIX + arch).forward_intermediates(X, intermediates_only=True)
    strides = [4, 8, 16, 32]
    assert [tuple(m.shape) for m in maps] == [(2, d, 64 // r, 64 // r) for d, r in zip(dims, strides, strict=True)]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_getter_prunes_what_the_features_do_not_need():
    features = seeded("cnx_convnext_atto", features_only=True, out_indices=(0, 1))
    assert len(features.model.stages) == 2 and features.feature_info.channels() == [40, 80]
    keys = features.state_dict().keys()
    assert not any(k.startswith(("model.head.", "model.norm.", "model.stages.2")) for k in keys)
    with torch.no_grad():
        assert [m.shape[1] for m in features(X)] == [40, 80]


@pytest.mark.parametrize("feature_cls", ["list", "dict"])
def test_feature_classes_that_rerun_children_are_refused_clearly(feature_cls):
    with pytest.raises(UserError, match="'getter'"):
        timm.create_model("cnx_convnext_atto", features_only=True, feature_cls=feature_cls)


def test_fx_feature_extraction_timm_and_torchvision():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision: train and eval graphs differ (DropPath)
        graph = seeded("cnx_convnext_atto", features_only=True, feature_cls="fx", drop_path_rate=0.1)
        direct = create_feature_extractor(seeded("cnx_convnext_atto"), {"stages.1": "s1", "stages.3": "s3"})
    assert type(graph).__name__ == "FeatureGraphNet"
    expected = seeded("cnx_convnext_atto").forward_intermediates(X, intermediates_only=True)
    with torch.no_grad():
        for got, want in zip(graph(X), expected, strict=True):
            torch.testing.assert_close(got, want)
        out = direct.eval()(X)
    torch.testing.assert_close(out["s1"], expected[1])
    torch.testing.assert_close(out["s3"], expected[3])
    graph.train()(X)[3].sum().backward()  # the train-mode graph runs too (stochastic depth on)


def test_forward_intermediates_follows_timm():
    model = seeded("cnx_convnext_atto")
    with torch.no_grad():
        final, maps = model.forward_intermediates(X)
        torch.testing.assert_close(final, model.forward_features(X))
        assert [m.shape[1] for m in maps] == [40, 80, 160, 320]
        assert [m.shape[1] for m in model.forward_intermediates(X, 2, intermediates_only=True)] == [160, 320]
        assert [m.shape[1] for m in model.forward_intermediates(X, (-1, 1), intermediates_only=True)] == [80, 320]
        final, (one,) = model.forward_intermediates(X, [1], stop_early=True)
        assert final is one and one.shape == (2, 80, 8, 8)
        _, normed = model.forward_intermediates(X, norm=True)
        torch.testing.assert_close(normed[:3], maps[:3])
        ln = F.layer_norm(maps[3].permute(0, 2, 3, 1), (320,), model.norm.weight, model.norm.bias, 1e-6)
        torch.testing.assert_close(normed[3], ln.permute(0, 3, 1, 2))
        nhwc = model.forward_intermediates(X, output_fmt="NHWC", intermediates_only=True)
        assert [tuple(m.shape) for m in nhwc] == [tuple(m.permute(0, 2, 3, 1).shape) for m in maps]
    with pytest.raises(UserError, match="within"):
        model.forward_intermediates(X, [4])
    with pytest.raises(UserError, match="output_fmt"):
        model.forward_intermediates(X, output_fmt="NLC")


def test_reset_classifier_and_global_pool_follow_timm():
    model = seeded("cnx_convnext_atto")
    with torch.no_grad():
        feats = model.forward_features(X)
        per_pixel = model.norm(feats.permute(0, 2, 3, 1))
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(X), per_pixel.permute(0, 3, 1, 2))  # unpooled, LN at every pixel
        assert model.num_classes == 0 and model.head_hidden_size == 320
        model.reset_classifier(5)  # the pooling stays as it was
        torch.testing.assert_close(model(X), model.head(per_pixel).permute(0, 3, 1, 2))
        model.reset_classifier(7, "max")
        torch.testing.assert_close(model(X), model.head(model.norm(feats.amax((-2, -1)))))
        unpooled = timm.create_model("cnx_convnext_atto", num_classes=0, global_pool="")
        assert unpooled(X).shape == (2, 320, 2, 2)
    with pytest.raises(UserError, match="global_pool"):
        model.reset_classifier(3, "catavgmax")
    model.double().reset_classifier(2)
    assert model.head.weight.dtype == torch.float64  # a new head is made where the network lives


def test_prune_intermediate_layers():
    model = seeded("cnx_convnext_atto")
    assert model.prune_intermediate_layers((0, 1)) == [0, 1]
    assert len(model.stages) == len(model.downsample_layers) == 2
    assert model.num_features == model.head_hidden_size == 80
    with torch.no_grad():
        assert model(X).shape == (2, 80, 8, 8)  # norm and head, sized for stage 3, went with it
    kept = seeded("cnx_convnext_atto")
    assert kept.prune_intermediate_layers(1, prune_head=True) == [3]
    assert isinstance(kept.head, torch.nn.Identity) and isinstance(kept.norm, torch.nn.LayerNorm)


def test_isotropic_through_timm():
    kwargs = dict(depth=4, dim=32)
    model = seeded("cnx_convnext_isotropic_small", **kwargs)
    assert type(model) is ConvNeXtIsotropic and model.pretrained_cfg["first_conv"] == "stem"
    assert [f["reduction"] for f in model.feature_info] == [16] * 4
    for feature_cls in (None, "list", "fx"):
        extra = {} if feature_cls is None else dict(feature_cls=feature_cls)
        features = seeded("cnx_convnext_isotropic_small", features_only=True, **kwargs, **extra)
        with torch.no_grad():
            maps = features(X)
        assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 3  # the last three blocks
        with torch.no_grad():
            torch.testing.assert_close(maps, model.forward_intermediates(X, 3, intermediates_only=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_torch_jit_script_matches_eager(arch):
    model = seeded(TIMM_PREFIX + arch)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(X), model(X), rtol=0, atol=1e-5)
    model.reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(X), model(X), rtol=0, atol=1e-5)


def test_script_and_eager_depthwise_paths_agree_in_training():
    """Eager keeps the custom-backward Function; the compiled graph gets the library's, with the same grads."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(8)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    assert "DepthwiseConv2dFunction" in type(layer(x).grad_fn).__name__
    grads = []
    for module in (layer, torch.jit.script(layer)):
        x.grad = None
        layer.zero_grad()
        (module(x) * torch.linspace(-1, 1, 12)).sum().backward()
        grads.append([x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()])
    for eager, scripted in zip(*grads, strict=True):
        torch.testing.assert_close(scripted, eager, rtol=1e-5, atol=1e-5)


def test_pretrained_through_timm_uses_our_weights(monkeypatch, tmp_path):
    torch.manual_seed(1)
    reference = convnext.models.create_model("convnext_tiny").state_dict()

    def fake_download(entry):
        assert (entry.model, entry.tag) == ("convnext_tiny", "in22k_ft_in1k")
        return reference

    monkeypatch.setattr(convnext.models.convnext, "download_weights", fake_download)
    model = timm.create_model("cnx_convnext_tiny.in22k_ft_in1k", pretrained=True)
    assert model.pretrained_cfg["tag"] == "in22k_ft_in1k"
    torch.testing.assert_close(model.state_dict(), reference)

    atto = convnext.models.create_model("convnext_atto")
    path = save_weights(atto, tmp_path / "atto.safetensors")
    loaded = timm.create_model("cnx_convnext_atto", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(loaded.state_dict(), atto.state_dict())
    with pytest.raises(UserError, match="no released weights"):
        timm.create_model("cnx_convnext_atto", pretrained=True)
