import argparse
import dataclasses
import hashlib
import re

import pytest
import torch

import convnext.weights as weights
from convnext import UserError, create_model, load_checkpoint, save_weights
from convnext.models import ConvNeXt, ConvNeXtFeatures
from convnext.weights import PretrainedWeights, convert_state_dict, detect_layout, get_pretrained, read_metadata

DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)


def small_model(**kw):
    return ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=5, **kw).eval()


def randomized(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def logits(model, x):
    with torch.no_grad():
        return model(x)


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def to_torchvision(sd):
    """Our keys -> torchvision's positional keys (peers.md §2), layer scale as (C, 1, 1)."""
    out = {}
    for k, v in sd.items():
        if m := re.match(r"downsample_layers\.(\d)\.(.*)", k):
            out[f"features.{2 * int(m[1])}.{m[2]}"] = v
        elif m := re.match(r"stages\.(\d)\.(\d+)\.(\w+)(.*)", k):
            part = {"dwconv": "block.0", "norm": "block.2", "pwconv1": "block.3", "pwconv2": "block.5"}.get(m[3])
            if m[3] == "gamma":
                out[f"features.{2 * int(m[1]) + 1}.{m[2]}.layer_scale"] = v.view(-1, 1, 1)
            else:
                out[f"features.{2 * int(m[1]) + 1}.{m[2]}.{part}{m[4]}"] = v
        else:
            out[k.replace("norm.", "classifier.0.").replace("head.", "classifier.2.")] = v
    return out


def to_timm(sd, conv_mlp=False):
    """Our keys -> timm's (peers.md §1.1); with conv_mlp the pointwise weights are 1x1 convs."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^downsample_layers\.0\.", "stem.", k)
        k = re.sub(r"^downsample_layers\.(\d)\.", r"stages.\1.downsample.", k)
        k = re.sub(r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
        k = k.replace(".dwconv.", ".conv_dw.").replace(".pwconv", ".mlp.fc")
        k = re.sub(r"^norm\.", "head.norm.", k)
        k = re.sub(r"^head\.(weight|bias)", r"head.fc.\1", k)
        if conv_mlp and ".mlp.fc" in k and k.endswith("weight"):
            v = v[:, :, None, None]
        out[k] = v
    return out


def test_hf_transformers_model_converts_exactly(tmp_path):
    import transformers
    config = transformers.ConvNextConfig(hidden_sizes=list(DIMS), depths=list(DEPTHS), num_labels=5,
                                         layer_norm_eps=1e-6)
    hf = randomized(transformers.ConvNextForImageClassification(config).eval())
    ours = small_model()
    load_checkpoint(ours, hf.state_dict())
    expected = hf(pixel_values=X).logits.detach()
    assert (logits(ours, X) - expected).abs().max() < 1e-5
    hf.save_pretrained(tmp_path / "hf")  # a save_pretrained folder loads too
    again = small_model()
    load_checkpoint(again, tmp_path / "hf")
    assert (logits(again, X) - expected).abs().max() < 1e-5


def test_torchvision_layout_converts():
    reference = randomized(small_model())
    tv_sd = to_torchvision(reference.state_dict())
    assert detect_layout(tv_sd) == "torchvision"
    ours = small_model()
    load_checkpoint(ours, tv_sd)
    torch.testing.assert_close(logits(ours, X), logits(reference, X), rtol=0, atol=0)


def test_real_torchvision_model_converts_exactly():
    import torchvision.models as tvm
    tv = randomized(tvm.convnext_tiny(num_classes=5).eval())
    ours = create_model("convnext_tiny", num_classes=5).eval()
    load_checkpoint(ours, tv.state_dict())
    assert (logits(ours, X) - logits(tv, X)).abs().max() < 1e-5


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_timm_layout_converts(conv_mlp):
    reference = randomized(small_model())
    timm_sd = to_timm(reference.state_dict(), conv_mlp)
    assert detect_layout(timm_sd) == "timm"
    ours = small_model()
    load_checkpoint(ours, timm_sd)
    torch.testing.assert_close(logits(ours, X), logits(reference, X), rtol=0, atol=0)


def test_real_timm_model_converts_exactly():
    import timm
    ref = randomized(timm.create_model("convnext_tiny", num_classes=5).eval())
    ours = create_model("convnext_tiny", num_classes=5).eval()
    load_checkpoint(ours, ref.state_dict())
    assert (logits(ours, X) - logits(ref, X)).abs().max() < 1e-5


def test_official_training_checkpoint_with_wrappers(tmp_path):
    reference = randomized(small_model())
    ema = randomized(small_model())
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1)
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": {f"module.{k}": v for k, v in reference.state_dict().items()},
                "model_ema": ema.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=4e-3)}, path)
    ours = small_model()
    load_checkpoint(ours, path)
    torch.testing.assert_close(logits(ours, X), logits(reference, X), rtol=0, atol=0)
    load_checkpoint(ours, path, key="model_ema")
    torch.testing.assert_close(logits(ours, X), logits(ema, X), rtol=0, atol=0)


def test_safetensors_round_trip_is_exact(tmp_path):
    reference = randomized(small_model())
    path = save_weights(reference, tmp_path / "w.safetensors", metadata={"model": "small"})
    assert read_metadata(path) == {"model": "small"}
    assert not (tmp_path / "w.safetensors.tmp").exists()
    ours = small_model()
    load_checkpoint(ours, path)
    for k, v in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


def test_other_num_classes_drops_head_with_warning():
    reference = randomized(small_model())
    ours = ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=3)
    head_before = ours.head.weight.clone()
    with pytest.warns(UserWarning, match="5 classes, model has 3"):
        load_checkpoint(ours, reference.state_dict())
    assert torch.equal(ours.head.weight, head_before)
    assert torch.equal(ours.stages[2][1].pwconv1.weight, reference.stages[2][1].pwconv1.weight)


def test_in_chans_adapts_the_stem():
    reference = randomized(small_model())
    gray = ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=5, in_chans=1).eval()
    load_checkpoint(gray, reference.state_dict())
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(logits(gray, x), logits(reference, x.expand(1, 3, 64, 64)), atol=1e-5, rtol=1e-4)
    four = ConvNeXt(depths=DEPTHS, dims=DIMS, num_classes=5, in_chans=4)
    load_checkpoint(four, reference.state_dict())
    assert four.downsample_layers[0][0].weight.shape[1] == 4


def test_mismatch_is_one_readable_error():
    reference = small_model()
    other = ConvNeXt(depths=(1, 1, 3, 1), dims=DIMS, num_classes=5)
    with pytest.raises(UserError, match=r"unexpected keys: stages\.2\.2\.") as err:
        load_checkpoint(reference, other.state_dict())
    assert "convnext" not in str(err.value).lower() or "does not fit" in str(err.value)
    wider = ConvNeXt(depths=DEPTHS, dims=(8, 16, 24, 40), num_classes=5)
    with pytest.raises(UserError, match="wrong shape keys"):
        load_checkpoint(reference, wider.state_dict())
    no_gamma = small_model(layer_scale_init_value=0)
    with pytest.raises(UserError, match="missing keys: .*gamma"):
        load_checkpoint(reference, no_gamma.state_dict())
    report = load_checkpoint(reference, no_gamma.state_dict(), strict=False)
    assert report.missing and not report.unexpected


def test_features_only_backbone_loads_classifier_checkpoint():
    reference = randomized(small_model())
    backbone = ConvNeXtFeatures(depths=DEPTHS, dims=DIMS)
    load_checkpoint(backbone, reference.state_dict())
    assert torch.equal(backbone.stages[3][0].dwconv.weight, reference.stages[3][0].dwconv.weight)
    assert backbone.norm0.weight.eq(1).all()


def test_bad_files_are_readable_errors(tmp_path):
    model = small_model()
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(model, tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(model, corrupt)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(model, bad_st)
    with pytest.raises(UserError, match="unrecognised checkpoint layout"):
        load_checkpoint(model, {"foo.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="no tensors"):
        load_checkpoint(model, {"epoch": 3})


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": small_model().state_dict(), "x": Evil()}, path)
    with pytest.raises(UserError, match="weights_only"):
        load_checkpoint(small_model(), path)


def test_registry_tags():
    entry = get_pretrained("convnext_base", "in22k_ft_in1k_384")
    assert (entry.res, entry.top1, entry.data_config["crop_pct"]) == (384, 86.8, 1.0)
    assert entry.url == "https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_1k_384.pth"
    assert get_pretrained("convnext_tiny").tag == "in1k" and get_pretrained("convnext_tiny").top1 == 82.1
    assert get_pretrained("convnext_large", "in22k").num_classes == 21841
    assert get_pretrained("convnext_large", "in22k").data_config["label_set"] == "imagenet-22k"
    for entry in weights.PRETRAINED:  # explicit metadata, consistent with the official file names
        if entry.label_set not in ("imagenet-1k", "imagenet-22k"):  # task weights (ADE20K) have their own rules
            continue
        assert (entry.res == 384) == ("_384" in entry.file) and entry.crop_pct == (1.0 if entry.res == 384 else 0.875)
        assert (entry.label_set == "imagenet-22k") == (entry.tag == "in22k")
        assert entry.sha256 is None or len(entry.sha256) == 64
    with pytest.raises(UserError, match="available"):
        get_pretrained("convnext_tiny", "in5k")
    with pytest.raises(UserError, match="no released weights"):
        get_pretrained("convnext_atto")


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    """A released-weights entry for convnext_atto, with torch.hub and HF caches in tmp_path, offline."""
    entry = PretrainedWeights("convnext_atto", "test", "atto_test.pth", 50.0, 224, 0.875, "imagenet-1k",
                              "someone/convnext-atto")
    monkeypatch.setattr(weights, "PRETRAINED", [entry])
    torch_hub = tmp_path / "torch_hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(torch_hub))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    reference = randomized(create_model("convnext_atto").eval())
    return entry, reference, torch_hub, tmp_path / "hf_cache"


def test_pretrained_offline_error_says_what_to_download(fake_registry):
    entry, _, torch_hub, _ = fake_registry
    with pytest.raises(UserError) as err:
        create_model("convnext_atto", pretrained=True)
    message = str(err.value)
    assert entry.url in message and str(torch_hub / "checkpoints" / "atto_test.pth") in message
    assert "hf download someone/convnext-atto" in message


def test_pretrained_loads_from_torch_hub_cache(fake_registry):
    _, reference, torch_hub, _ = fake_registry
    (torch_hub / "checkpoints").mkdir(parents=True)
    torch.save({"model": reference.state_dict()}, torch_hub / "checkpoints" / "atto_test.pth")
    model = create_model("convnext_atto.test", pretrained=True).eval()
    torch.testing.assert_close(logits(model, X), logits(reference, X), rtol=0, atol=0)
    assert model.pretrained_cfg["tag"] == "test" and model.pretrained_cfg["crop_pct"] == 0.875
    # as in timm, a tag alone selects the release's configuration, not its weights (nothing is fetched)
    configured = create_model("convnext_atto.test").eval()
    assert configured.pretrained_cfg["crop_pct"] == 0.875 and "tag" not in configured.pretrained_cfg
    assert not torch.equal(configured.head.weight, reference.head.weight)
    with pytest.raises(UserError, match="the name says tag 'test', pretrained says 'in1k'"):
        create_model("convnext_atto.test", pretrained="in1k")
    fresh_head = create_model("convnext_atto", pretrained="test", num_classes=10)
    assert fresh_head.head.out_features == 10


def test_pretrained_loads_from_hugging_face_cache(fake_registry):
    _, reference, _, hf_cache = fake_registry
    import transformers
    repo = hf_cache / "models--someone--convnext-atto"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    config = transformers.ConvNextConfig(hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], num_labels=1000)
    hf = randomized(transformers.ConvNextForImageClassification(config).eval())
    hf.save_pretrained(snapshot)
    model = create_model("convnext_atto", pretrained=True).eval()
    expected = hf(pixel_values=X).logits.detach()
    assert (logits(model, X) - expected).abs().max() < 1e-3  # HF's final LN eps is 1e-12, ours 1e-6


def test_download_checks_the_sha256_when_known(fake_registry, monkeypatch, tmp_path):
    entry, reference, torch_hub, _ = fake_registry
    source = tmp_path / "served" / entry.file
    source.parent.mkdir()
    torch.save({"model": reference.state_dict()}, source)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights, "OFFICIAL_URL", source.parent.as_uri() + "/")  # file://: no network
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    bad = dataclasses.replace(entry, sha256="0" * 64, hf_hub_id=None)
    with pytest.raises(UserError, match="invalid hash value"):
        weights.download_weights(bad)
    assert not (torch_hub / "checkpoints" / entry.file).exists()  # nothing unverified is left in the cache
    good = dataclasses.replace(entry, sha256=digest)
    assert weights.download_weights(good).read_bytes() == source.read_bytes()


def test_convert_state_dict_keeps_official_keys():
    sd = small_model().state_dict()
    assert list(convert_state_dict(sd)) == list(sd)


def test_no_network_fails_fast_without_the_hub_retries(fake_registry, monkeypatch):
    import socket
    import urllib.error

    import huggingface_hub

    entry, _, _, _ = fake_registry
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_dns(url, dst, hash_prefix=None, progress=True):
        assert socket.getdefaulttimeout() == weights.NETWORK_TIMEOUT  # a stalled network cannot hang us
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    def hub(*args, **kwargs):
        raise AssertionError("the Hugging Face Hub was tried without a network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_dns)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    with pytest.raises(UserError, match="no network, so the Hugging Face Hub was not tried") as err:
        create_model("convnext_atto", pretrained=True)
    assert "hf download someone/convnext-atto" in str(err.value)
    assert socket.getdefaulttimeout() is None


def test_weights_with_nan_or_inf_are_refused_in_one_line(tmp_path, capsys):
    """Issue 21: non-finite weights are one clear error wherever they are loaded (here: the shared loader,
    and `convnext predict` / `export` on such a file)."""
    import numpy as np
    from PIL import Image

    from convnext.cli import main

    model = create_model("convnext_atto", num_classes=3)
    state = model.state_dict()
    state["stages.1.0.pwconv1.weight"][0, 0] = float("nan")
    state["head.bias"][1] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match=r"non-finite weights \(NaN or inf in stages.1.0.pwconv1.weight"):
        load_checkpoint(create_model("convnext_atto", num_classes=3), path)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    for argv in (["predict", str(image), "--model", "convnext_atto", "--checkpoint", str(path), "--json"],
                 ["export", "--model", "convnext_atto", "--checkpoint", str(path), "--format", "safetensors",
                  "--out", str(tmp_path / "m.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "non-finite weights" in err[0], err
    assert not (tmp_path / "m.safetensors").exists()


def test_an_export_or_an_image_given_as_a_checkpoint_is_named(tmp_path):
    from PIL import Image

    from convnext.deploy.export import export_torchscript, save_program
    from convnext.errors import UserError
    from convnext.models import build_model
    from convnext.weights import data_config, read_checkpoint_file

    model = build_model("convnext_atto").eval()
    model.pretrained_cfg = data_config(32)
    files = {"a TorchScript file": export_torchscript(model, tmp_path / "m.ts", res=32),
             "a torch.export program": save_program(model, tmp_path / "m.pt2", res=32),
             "a JPEG image": tmp_path / "photo.jpg"}
    Image.new("RGB", (8, 8)).save(files["a JPEG image"])
    for what, path in files.items():
        with pytest.raises(UserError, match=f"is {what}.*not a checkpoint: --checkpoint reads weights"):
            read_checkpoint_file(path)
    torch.save({"model": model.state_dict()}, tmp_path / "ok.pt")
    assert "model" in read_checkpoint_file(tmp_path / "ok.pt")  # a torch.save archive is not mistaken


def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(tmp_path):
    from convnext.errors import UserError
    from convnext.weights import read_checkpoint_file

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage that is not a pickle" * 3)
    with pytest.raises(UserError, match="not a PyTorch checkpoint of tensors, or a damaged one") as err:
        read_checkpoint_file(junk)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("code,words", [(28, "is full"), (30, "the file system is read-only")])
def test_a_failed_safetensors_write_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch, code, words):
    from safetensors import SafetensorError

    import convnext.weights as weights

    path = save_weights({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    before = path.read_bytes()

    def failing(tensors, target, metadata=None):
        raise SafetensorError(f"Error while serializing: I/O error: the writer's words (os error {code})")

    monkeypatch.setattr(weights, "save_file", failing)
    with pytest.raises(UserError, match=words):
        save_weights({"a": torch.ones(2)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    monkeypatch.setattr(weights, "save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError("bad dtype")))
    with pytest.raises(SafetensorError):  # not an I/O failure: not ours to word
        save_weights({"a": torch.ones(2)}, path)
