import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convnext.weights as weights
from convnext import UserError, create_model
from convnext.cli import main
from convnext.data.images import eval_transform
from convnext.deploy.export import export_model, export_safetensors
from convnext.models import build_model
from convnext.tasks.classification.config import resolve_config
from convnext.tasks.classification.predict import class_labels, find_images, predict, read_labels
from convnext.tasks.loading import load_model
from convnext.weights import data_config

RES = 64


def spread_model(num_classes=1000):
    """convnext_atto with a sharpened head, so different images get clearly different probabilities."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=num_classes).eval()
    with torch.no_grad():
        model.head.weight.mul_(10)
    model.pretrained_cfg = dict(data_config(RES), label_set="imagenet-1k")
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1000-class checkpoint that carries 64px preprocessing and its label set in its metadata."""
    path = tmp_path_factory.mktemp("ckpt") / "atto.safetensors"
    export_safetensors(spread_model(), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model("convnext_atto", checkpoint=checkpoint)


def picture(height=48, width=80):
    """A smooth, asymmetric RGB picture: orientation and colour both change what a model sees."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1)
    rgb[: height // 3, : width // 4] = (250, 30, 30)
    return rgb.astype(np.uint8)


def run_json(args, capsys):
    code = main(["predict", *map(str, args), "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def top(results, name):
    (entry,) = [r for r in results if Path(r["file"]).name == name]
    return [(p["index"], p["probability"]) for p in entry["predictions"]]


def assert_same_top(a, b):
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-5)


def test_every_image_mode_matches_its_rgb_equivalent(tmp_path, checkpoint, capsys):
    rgb = picture()
    gray = rgb[..., 0]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(gray.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "l_as_rgb.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "p.png")
    palette.convert("RGB").save(tmp_path / "p_as_rgb.png")
    transparent = np.dstack([rgb, np.zeros(gray.shape, np.uint8)])  # fully transparent -> white
    Image.fromarray(transparent).save(tmp_path / "clear.png")
    Image.fromarray(np.full_like(rgb, 255)).save(tmp_path / "white.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    assert Image.open(tmp_path / "p.png").mode == "P"

    code, report, _ = run_json([tmp_path, "--model", "convnext_atto", "--checkpoint", checkpoint], capsys)
    assert code == 0 and report["errors"] == []
    results = report["results"]
    assert len(results) == 9
    assert_same_top(top(results, "rgba.png"), top(results, "rgb.png"))
    assert_same_top(top(results, "l.png"), top(results, "l_as_rgb.png"))
    assert_same_top(top(results, "i16.png"), top(results, "l_as_rgb.png"))
    assert_same_top(top(results, "p.png"), top(results, "p_as_rgb.png"))
    assert_same_top(top(results, "clear.png"), top(results, "white.png"))
    assert top(results, "rgb.png") != top(results, "l.png")  # the comparisons above can fail


def test_exif_orientation_is_respected(tmp_path, model):
    upright = Image.fromarray(picture())
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "camera.jpg", quality=95, exif=exif)
    stored.save(tmp_path / "no_exif.jpg", quality=95)

    (tagged, plain) = predict(model, [tmp_path / "camera.jpg", tmp_path / "no_exif.jpg"], topk=5)
    decoded = Image.open(tmp_path / "no_exif.jpg").convert("RGB")  # same pixels as camera.jpg
    transform = eval_transform(model.pretrained_cfg)
    with torch.no_grad():
        for image, pred in ((decoded.transpose(Image.Transpose.ROTATE_270), tagged), (decoded, plain)):
            probs = model(transform(image)[None]).softmax(-1)[0]
            values, indices = probs.topk(5)
            assert [i for i, _ in pred.top] == indices.tolist()
            np.testing.assert_allclose([p for _, p in pred.top], values.numpy(), atol=1e-6)
    assert tagged.top != plain.top


def test_unreadable_files_are_reported_and_skipped(tmp_path, checkpoint, capsys):
    Image.fromarray(picture()).save(tmp_path / "good.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    Image.fromarray(picture()).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])  # truncated
    (tmp_path / "notes.txt").write_text("not an image, not attempted")
    args = [tmp_path, tmp_path / "missing.png", "--model", "convnext_atto", "--checkpoint", checkpoint]

    code, report, err = run_json(args, capsys)
    assert code == 1
    assert [r["file"] for r in report["results"]] == [str(tmp_path / "good.png")]
    failed = sorted(e["file"] for e in report["errors"])
    assert failed == sorted(str(tmp_path / n) for n in ("corrupt.jpg", "cut.png", "missing.png"))
    assert "corrupt.jpg" in err and "3 of 4 files could not be read" in err and "Traceback" not in err


def test_json_fields_and_topk_ordering(tmp_path, checkpoint, model, capsys):
    Image.fromarray(picture()).save(tmp_path / "a.png")
    code, report, _ = run_json([tmp_path / "a.png", "--model", "convnext_atto", "--checkpoint", checkpoint,
                                "--topk", "7"], capsys)
    assert code == 0
    assert report["model"] == "convnext_atto" and report["num_classes"] == 1000
    assert report["weights"] == str(checkpoint)
    assert report["preprocessing"]["input_size"] == [3, RES, RES]  # from the checkpoint's metadata
    (result,) = report["results"]
    preds = result["predictions"]
    assert [p["rank"] for p in preds] == list(range(1, 8))
    assert set(preds[0]) == {"rank", "index", "label", "probability", "id"}
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and probs[0] > probs[-1]
    names = class_labels(1000, label_set="imagenet-1k")
    assert all(p["label"] == names[p["index"]].name and p["id"] == names[p["index"]].id for p in preds)
    with torch.no_grad():
        full = model(eval_transform(model.pretrained_cfg)(Image.open(tmp_path / "a.png").convert("RGB"))[None])
    assert preds[0]["index"] == full.argmax().item()


def test_batches_keep_files_in_order(tmp_path, model):
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    files = find_images([tmp_path])
    assert [f.name for f in files] == [f"{i}.png" for i in range(5)]
    one_batch = list(predict(model, files, topk=3, batch_size=32))
    small_batches = list(predict(model, files, topk=3, batch_size=2))
    assert [p.path for p in small_batches] == files
    for a, b in zip(one_batch, small_batches, strict=True):
        assert_same_top(a.top, b.top)
    assert len({p.top[0] for p in one_batch}) > 1


def test_text_output_is_readable(tmp_path, checkpoint, capsys):
    Image.fromarray(picture()).save(tmp_path / "photo.png")
    code = main(["predict", str(tmp_path / "photo.png"), "--model", "convnext_atto", "--checkpoint",
                 str(checkpoint), "--topk", "3"])
    out = capsys.readouterr().out
    assert code == 0
    header, _, body = out.partition("\n\n")
    assert "convnext_atto" in header and f"{RES}px" in header and "1 file" in header
    lines = body.strip().splitlines()
    assert lines[0].endswith("photo.png") and len(lines) == 4
    percents = [float(line.rsplit(None, 1)[-1].rstrip("%")) for line in lines[1:]]
    assert percents == sorted(percents, reverse=True)


def test_class_names():
    in1k = class_labels(1000, label_set="imagenet-1k")
    assert len(in1k) == 1000 and in1k[0] == ("tench", "n01440764") and in1k[999].name == "toilet tissue"
    assert len({label.id for label in in1k}) == 1000
    in22k = class_labels(21841, label_set="imagenet-22k")
    assert len(in22k) == 21841 and in22k[0] == ("organism", "n00004475")
    assert len({label.id for label in in1k} - {label.id for label in in22k}) == 1  # only "teddy" is not in 22K
    assert [label.name for label in class_labels(3)] == ["class 0", "class 1", "class 2"]
    # a 1000-class head is not ImageNet unless its weights say so
    assert class_labels(1000)[999] == ("class 999", None)
    assert class_labels(1000, label_set="imagenet-22k")[0].name == "class 0"


def test_own_classes_from_checkpoint_and_file(tmp_path, capsys):
    path = tmp_path / "digits.safetensors"
    export_safetensors(spread_model(num_classes=3), path)
    Image.fromarray(picture()).save(tmp_path / "x.png")
    base = [tmp_path / "x.png", "--model", "convnext_atto", "--checkpoint", path]

    code, report, _ = run_json(base, capsys)
    assert code == 0 and report["num_classes"] == 3
    assert {p["label"] for p in report["results"][0]["predictions"]} == {"class 0", "class 1", "class 2"}

    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    code, report, _ = run_json([*base, "--classes", tmp_path / "names.txt"], capsys)
    assert {p["label"] for p in report["results"][0]["predictions"]} == {"cat", "dog", "bird"}

    (tmp_path / "two.txt").write_text("cat\ndog\n")
    assert main(["predict", *map(str, base), "--classes", str(tmp_path / "two.txt")]) == 2
    assert "names 2 classes but the model has 3" in capsys.readouterr().err


def test_read_labels_with_ids(tmp_path):
    (tmp_path / "l.txt").write_text("n1\tfirst, one\n\nsecond\n")
    assert read_labels(tmp_path / "l.txt") == [("first, one", "n1"), ("second", None)]


def test_released_weights_from_the_local_cache(tmp_path, monkeypatch, capsys):
    """--pretrained finds the official file in torch.hub's cache (no network) and uses its preprocessing."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("CONVNEXT_OFFLINE", "1")
    entry = weights.get_pretrained("convnext_tiny", "in1k")
    cached = weights.cached_weights_path(entry)
    cached.parent.mkdir(parents=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model("convnext_tiny").state_dict().items()}
    torch.save({"model": {k: torch.zeros(shape, dtype=torch.bfloat16) for k, shape in shapes.items()}}, cached)
    Image.fromarray(picture()).save(tmp_path / "x.png")

    code, report, _ = run_json([tmp_path / "x.png", "--model", "convnext_tiny", "--pretrained"], capsys)
    assert code == 0 and report["weights"] == "pretrained in1k"
    assert report["preprocessing"]["input_size"] == [3, 224, 224]
    assert len(report["results"][0]["predictions"]) == 5


def test_weights_are_required_and_readable_errors(tmp_path, checkpoint, capsys):
    with pytest.raises(UserError, match="needs weights"):
        load_model("convnext_atto")
    with pytest.raises(UserError, match="not both"):
        load_model("convnext_atto.in1k", checkpoint=checkpoint)
    with pytest.raises(UserError, match="no image files"):
        find_images([tmp_path])
    assert main(["predict", str(tmp_path), "--model", "convnext_atto", "--checkpoint", str(checkpoint)]) == 2
    assert main(["predict", str(checkpoint), "--model", "convnext_atto", "--checkpoint", "nope.pth"]) == 2
    err = capsys.readouterr().err
    assert "no image files" in err and "checkpoint not found: nope.pth" in err and "Traceback" not in err


def test_training_run_checkpoint_brings_architecture_preprocessing_and_classes(tmp_path, capsys):
    """A `convnext train` checkpoint (the demo recipe's slim atto at 32 px) predicts with its digit names,
    and so does its safetensors export."""
    config = resolve_config("demo")
    classes = [str(d) for d in range(10)]
    model = build_model(config.model, num_classes=10, **config.model_args)
    torch.save(dict(model=model.state_dict(), config=config.to_dict(), classes=classes, epoch=1),
               tmp_path / "best.pt")
    Image.fromarray(picture()).save(tmp_path / "x.png")

    for ckpt in ("best.pt", "exported.safetensors"):
        if ckpt.endswith(".safetensors"):
            export_model(load_model("convnext_atto", checkpoint=tmp_path / "best.pt"), tmp_path / ckpt,
                         "safetensors")
        code, report, _ = run_json([tmp_path / "x.png", "--model", "convnext_atto", "--checkpoint",
                                    tmp_path / ckpt, "--topk", "10"], capsys)
        assert code == 0 and report["num_classes"] == 10
        assert report["preprocessing"]["input_size"] == [3, 32, 32]
        assert sorted(p["label"] for p in report["results"][0]["predictions"]) == classes
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "best.pt"), "--topk", "11"]) == 2
    assert "--topk 11: the model has 10 classes" in capsys.readouterr().err  # not silently 10 (attacker trial)
    with pytest.raises(UserError, match="holds a convnext_atto"):
        load_model("convnext_femto", checkpoint=tmp_path / "best.pt")


def test_a_broken_link_in_a_folder_is_reported_not_skipped(tmp_path, model):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    files = find_images([tmp_path])
    assert [f.name for f in files] == ["a.png", "b.png"]
    errors = [p.error for p in predict(model, files, topk=1) if p.error]
    assert len(errors) == 1 and "b.png" in errors[0]


def test_folders_list_numbered_files_in_number_order(tmp_path):
    for name in ("10.png", "2.png", "1.png", "img11.jpg", "img9.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert [f.name for f in find_images([tmp_path])] == ["1.png", "2.png", "10.png", "img9.jpg", "img11.jpg"]
