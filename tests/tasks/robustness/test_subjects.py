"""timm models scored beside ConvNeXt checkpoints (`convnext.tasks.robustness.subjects`): a row per model,
timm's own preprocessing, results stored per timm name and weights, and one line for every bad input."""

import json
import re
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

from convnext.cli import main
from convnext.data.images import ImageFolder, eval_transform
from convnext.errors import UserError
from convnext.models.convnext import create_model
from convnext.tasks.robustness import CorruptedImages, evaluate_robustness, load_subject, load_timm, runner
from convnext.tasks.robustness.suites import imagenet_synsets, subset_synsets
from convnext.weights import save_weights


def timm_file(folder, name, seed=0, **kwargs):
    """A timm model's state dict, as `model.safetensors` files of the hub hold it."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    path = folder / f"{name}-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, model.eval()


def pictures(count=4, seed=0):
    # 65 x 48: resized to 168 high, the width is 227.5, which timm's transform rounds down and ours to even
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 65, 3), dtype=np.uint8)) for _ in range(count)]


def folder_of(root, labelled):
    for i, (img, synset) in enumerate(labelled):
        (root / synset).mkdir(parents=True, exist_ok=True)
        img.save(root / synset / f"{i}.png")
    return root


def cli(args, capsys):
    code = main(["robustness", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_timm_contenders_get_rows_beside_a_convnext_checkpoint(tmp_path, capsys):
    vit, model = timm_file(tmp_path, "test_vit")
    other, _ = timm_file(tmp_path, "test_vit", seed=1)
    convnext = save_weights(create_model("convnext_atto"), tmp_path / "atto.safetensors")
    # each image filed under the class test_vit gives it through timm's own pipeline: 100% clean top-1 for it
    transform = create_transform(**resolve_data_config({}, model=model))
    images = pictures()
    with torch.no_grad():
        guesses = [int(model(transform(img)[None]).argmax()) for img in images]
    data = folder_of(tmp_path / "data", [(img, imagenet_synsets()[g]) for img, g in zip(images, guesses, strict=True)])
    code, out, err = cli(["--model", "convnext_atto", "--checkpoint", convnext, "--contender", f"timm:test_vit={vit}",
                          "--contender", f"timm:test_vit={other}", "--suite", "clean,c", "--data", f"clean={data}",
                          "--data", f"c={data}", "--corruptions", "fog", "--severities", "1", "--output",
                          tmp_path / "out", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert list(report["summary"]) == ["model", "test_vit", "test_vit-test_vit-1"]  # a row per model
    assert report["summary"]["test_vit"]["clean"]["top1"] == 100.0
    assert report["summary"]["test_vit"]["c"]["errors"]["fog"][0] >= 0
    assert report["models"]["test_vit"]["model"] == "timm:test_vit"
    assert report["models"]["test_vit"]["checkpoint"] == str(vit.resolve())
    expected = dict(resolve_data_config({}, model=model), pipeline="timm")
    assert report["models"]["test_vit"]["preprocessing"] == json.loads(json.dumps(expected))
    assert report["models"]["model"]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]  # ours kept ours
    code, out, _ = cli(["--contender", f"timm:test_vit={vit}", "--suite", "clean", "--data", data, "--output",
                        tmp_path / "out"], capsys)  # contenders alone are the rows; the table reads timm's name
    assert code == 0 and re.search(r"^test_vit +100\.0$", out, re.M), out


def test_a_timm_model_sees_timms_own_eval_transform_and_keeps_its_fine_tuned_head(tmp_path):
    data = folder_of(tmp_path / "data", [(img, "0") for img in pictures(2)])
    weights, reference = timm_file(tmp_path, "test_resnet", num_classes=10)
    subject = load_subject("x", "timm:test_resnet", weights)
    assert subject.num_classes == 10  # the head follows the weights
    assert torch.equal(subject.model(torch.ones(1, 3, 64, 64)), reference(torch.ones(1, 3, 64, 64)))
    config = resolve_data_config({}, model=reference)
    assert config["interpolation"] == "bilinear" and config["crop_pct"] == 0.95  # not our bicubic / 0.875
    source = ImageFolder(data)
    expected = create_transform(**config)(source.load(0)[0])
    assert torch.allclose(CorruptedImages(source, subject.preprocessing)[0][0], expected, atol=1e-6)
    ours = eval_transform(subject.preprocessing)(source.load(0)[0])  # the same numbers through our transform
    assert (ours - expected).abs().max() > 0.1  # differ: the check above tells the two apart
    assert CorruptedImages(source, subject.preprocessing, "fog", 2)[0][0].shape == expected.shape


def test_stored_results_are_keyed_on_the_timm_name_and_the_weights(tmp_path, monkeypatch):
    data = folder_of(tmp_path / "data", [(img, subset_synsets("a")[0]) for img in pictures(2)])
    first, _ = timm_file(tmp_path, "test_vit")
    second, _ = timm_file(tmp_path, "test_vit", seed=1)
    calls = []
    real = runner._score_group
    monkeypatch.setattr(runner, "_score_group", lambda *a, **k: calls.append(a[0][0].identity["model"])
                        or real(*a, **k))

    def score(name, weights):
        subject = load_subject("model", name, weights)
        evaluate_robustness(subject, {"a": data}, output=tmp_path / "out")
        return subject

    score("timm:test_vit", first)
    score("timm:test_vit", first)  # the same model again: read back, not scored
    assert calls == ["timm:test_vit"]
    subject = score("timm:test_vit", second)  # other weights, same name and label
    stamp = json.loads((tmp_path / "out" / "model" / "a.json").read_text())["stamp"]
    assert stamp["model"] == "timm:test_vit" and stamp["weights"] == subject.identity["digest"]
    score("timm:test_vit.r160_in1k", second)  # the same weights and preprocessing under another timm name
    score("timm:test_resnet", "random")
    assert calls == ["timm:test_vit", "timm:test_vit", "timm:test_vit.r160_in1k", "timm:test_resnet"]


def test_weights_of_the_original_swin_release_load_through_timms_own_filter():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224")
    original = {}  # the Microsoft layout: downsampling at the end of a stage, a bare `head`
    for key, value in model.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        original[key.replace("head.fc.", "head.")] = value
    loaded = load_timm("swin_tiny_patch4_window7_224", original).state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in model.state_dict().items())


def test_every_bad_timm_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    imagenet = folder_of(tmp_path / "a", [(img, subset_synsets("a")[0]) for img in pictures(1)])
    digits = folder_of(tmp_path / "digits", [(img, str(i)) for i, img in enumerate(pictures(2))])
    resnet, _ = timm_file(tmp_path, "test_resnet")
    ten, _ = timm_file(tmp_path, "test_vit", num_classes=10)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    on_a = ["--suite", "a", "--data", imagenet]
    cases = [
        (["--contender", "timm:swin_tiny_patch4_window7=random", *on_a],
         "timm has no model swin_tiny_patch4_window7; did you mean swin_tiny_patch4_window7_224"),
        (["--contender", "timm:test_vit.in22k=random", *on_a], "timm's test_vit has no tag in22k; its tags: r160_in1k"),
        (["--contender", "timm:test_vit", *on_a], "timm:test_vit needs weights"),
        (["--model", "timm:test_vit", *on_a], "timm:test_vit needs weights"),
        (["--model", "timm:test_vit", "--pretrained", *on_a], "timm's released weights are not downloaded here"),
        (["--contender", f"timm:test_vit={resnet}", *on_a], "checkpoint does not fit timm:test_vit"),
        (["--contender", f"timm:test_vit={broken}", *on_a], "cannot read checkpoint"),
        (["--contender", f"timm:test_vit={ten}", *on_a], "needs a model with the 1000 ImageNet-1K classes"),
        (["--contender", "timm:test_vit=random", "--suite", "clean", "--data", digits],
         "do not match the model's classes: 0, 1"),
        (["--baseline-model", "timm:test_vit", "--contender", "timm:test_vit=random", *on_a],
         "--baseline-model names the model of --baseline"),
    ]
    for args, message in cases:
        code, _, err = cli([*args, "--output", tmp_path / "out"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    monkeypatch.setitem(sys.modules, "timm", None)  # timm not installed
    code, _, err = cli(["--contender", f"timm:test_vit={ten}", *on_a, "--output", tmp_path / "out"], capsys)
    assert code == 2 and "timm:test_vit needs timm, which is not installed" in err and len(err.splitlines()) == 1


def test_labels_must_differ_in_the_library_call(tmp_path):
    data = folder_of(tmp_path / "data", [(img, subset_synsets("a")[0]) for img in pictures(1)])
    first = load_subject("same", "timm:test_vit", "random")
    with pytest.raises(UserError, match="two models would share the row same"):
        evaluate_robustness(first, {"a": data}, contenders=[load_subject("same", "timm:test_resnet", "random")],
                            output=tmp_path / "out")
