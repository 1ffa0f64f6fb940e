"""UperNet on ConvNeXt: shapes, the paper's parameter count, and weights from Hugging Face and mmseg layouts."""

import pytest
import torch

import convnext
from convnext.models.complexity import count_params
from convnext.tasks.segmentation import ADE20K_WEIGHTS, UperNet, convert_segmentation_state_dict
from convnext.weights.segmentation import detect_segmentation_layout

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), channels=16, aux_channels=8)


def _hf_model(num_labels=5, aux=True):
    import transformers
    backbone = transformers.ConvNextConfig(depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 24, 32],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_channels=8,
                                        num_labels=num_labels, use_auxiliary_head=aux)
    torch.manual_seed(0)
    model = transformers.UperNetForSemanticSegmentation(config).eval()
    with torch.no_grad():  # random norms, layer scales and BN statistics, so that every tensor matters
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if "running_var" in name:
                    tensor.uniform_(0.5, 1.5)
                else:
                    tensor.normal_(0, 0.2 if "layer_scale" not in name else 0.5)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_gives_logits_at_input_size_and_aux_only_when_asked():
    model = UperNet(num_classes=7, **SMALL).eval()
    x = torch.randn(2, 3, 72, 100)  # sides not multiples of 32
    out = model(x)
    assert out.shape == (2, 7, 72, 100)
    logits, aux = model(x, with_aux=True)
    assert torch.equal(logits, out) and aux.shape == (2, 7, 72, 100)


def test_tiny_has_the_papers_60m_parameters():
    model = convnext.create_model("upernet_convnext_tiny", num_classes=150)
    assert abs(count_params(model) / 60e6 - 1) < 0.01
    assert "upernet_convnext_xlarge" in convnext.list_models("upernet_*")


def test_hugging_face_upernet_is_an_oracle(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    ours = convnext.create_model("upernet_convnext_tiny", num_classes=5, checkpoint=tmp_path / "hf",
                                 **{k: v for k, v in SMALL.items()}).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = hf(pixel_values=x)
        got = ours(x)
        got_aux = ours(x, with_aux=True)[1]
        hf_aux = hf.auxiliary_head(hf.backbone(x).feature_maps)
    assert (got - want.logits).abs().max() < 1e-4
    aux_want = torch.nn.functional.interpolate(hf_aux, size=x.shape[2:], mode="bilinear", align_corners=False)
    assert (got_aux - aux_want).abs().max() < 1e-4


def _mmseg_keys(state_dict):
    """The official (mmseg) names of a Hugging Face UperNet, written out independently of our converter."""
    import re

    out = {}
    for key, value in state_dict.items():
        k = key
        k = re.sub(r"^backbone\.embeddings\.patch_embeddings\.", "backbone.downsample_layers.0.0.", k)
        k = re.sub(r"^backbone\.embeddings\.layernorm\.", "backbone.downsample_layers.0.1.", k)
        k = re.sub(r"^backbone\.encoder\.stages\.(\d)\.downsampling_layer\.", r"backbone.downsample_layers.\1.", k)
        k = re.sub(r"^backbone\.encoder\.stages\.(\d)\.layers\.", r"backbone.stages.\1.", k)
        k = re.sub(r"\.layernorm\.", ".norm.", k).replace("layer_scale_parameter", "gamma")
        k = re.sub(r"^backbone\.hidden_states_norms\.stage(\d)", lambda m: f"backbone.norm{int(m[1]) - 1}", k)
        k = k.replace(".batch_norm.", ".bn.").replace("head.classifier.", "head.conv_seg.")
        out[k] = value
    return out


def test_mmseg_layout_loads_and_matches_the_oracle(tmp_path):
    hf = _hf_model()
    mmseg = _mmseg_keys(hf.state_dict())
    assert detect_segmentation_layout(mmseg) == "mmseg" and detect_segmentation_layout(hf.state_dict()) == "hf"
    assert convert_segmentation_state_dict(hf.state_dict()).keys() == mmseg.keys()
    path = tmp_path / "upernet_mmseg.pth"
    torch.save({"meta": {"CLASSES": ("a", "b"), "iter": 160000}, "state_dict": mmseg}, path)
    ours = UperNet(num_classes=5, **SMALL)
    ours.load_weights(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours.eval()(x) - hf(pixel_values=x).logits).abs().max() < 1e-4


def test_classification_checkpoint_initialises_the_backbone_only():
    classifier = convnext.ConvNeXt(depths=SMALL["depths"], dims=SMALL["dims"], num_classes=10)
    model = UperNet(num_classes=5, **SMALL)
    head_before = model.decode_head.conv_seg.weight.clone()
    model.load_weights({"model": classifier.state_dict()})
    assert torch.equal(model.backbone.stages[2][1].pwconv1.weight, classifier.stages[2][1].pwconv1.weight)
    assert torch.equal(model.decode_head.conv_seg.weight, head_before)


def test_other_class_count_keeps_a_fresh_classifier_and_bad_keys_fail_in_one_error():
    source = UperNet(num_classes=5, **SMALL).state_dict()
    model = UperNet(num_classes=3, **SMALL)
    with pytest.warns(UserWarning, match="5 classes, model has 3"):
        model.load_weights(source)
    lateral = "decode_head.lateral_convs.0.conv.weight"
    assert torch.equal(model.state_dict()[lateral], source[lateral])
    broken = {k: v for k, v in source.items() if "fpn_bottleneck" not in k}
    with pytest.raises(convnext.UserError, match="missing keys: decode_head.fpn_bottleneck"):
        UperNet(num_classes=5, **SMALL).load_weights(broken)


def test_ade20k_weights_are_registered():
    tags = [w.tag for w in convnext.list_pretrained("upernet_convnext_base")]
    assert tags == ["ade20k", "ade20k_in22k"]
    entry = convnext.list_pretrained("upernet_convnext_tiny")[0]
    assert entry.url.endswith("ade20k/upernet_convnext_tiny_1k_512x512.pth") and entry.num_classes == 150
    for entry in ADE20K_WEIGHTS:  # 22K-pretrained files were trained at 640, the others at 512
        assert (entry.res == 640) == ("_22k_640x640" in entry.file) == entry.tag.endswith("in22k")


def test_offline_pretrained_segmentation_weights_fail_in_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNEXT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(convnext.UserError, match="upernet_convnext_tiny_1k_512x512.pth"):
        convnext.create_model("upernet_convnext_tiny", pretrained=True)


def test_info_reports_the_papers_gflops_at_512x2048(capsys):
    import json

    from convnext.cli import main

    assert main(["info", "upernet_convnext_tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["res"] == [512, 2048] and abs(info["gmacs"] / 939 - 1) < 0.01  # Table 4: 939 GFLOPs
    assert abs(info["params"] / 60e6 - 1) < 0.01
