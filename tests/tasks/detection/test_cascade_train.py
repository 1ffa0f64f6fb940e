"""Cascade Mask R-CNN through the detection task: it trains and is scored like Mask R-CNN, takes the official
cascade optimiser settings, resumes exactly, and the CLI predicts with it."""

import json

import pytest
import torch

from convnext.cli import main
from convnext.tasks.detection.config import resolve_detect_config
from convnext.tasks.detection.demo import make_demo_set
from convnext.tasks.detection.predict import load_detector
from convnext.tasks.detection.train import train_detector

MODEL_ARGS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], fpn_channels=16, head_width=64, rois_per_image=32,
                  proposals=100)
CASCADE = "cascade_mask_rcnn_convnext_tiny"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_set(tmp_path_factory.mktemp("cascade") / "train", "train", 8, size=64, seed=2)


def _config(data, output, epochs, model=CASCADE):
    return resolve_detect_config("demo", model=model, model_args=MODEL_ARGS, data=str(data), val_data=str(data),
                                 output=str(output), epochs=epochs, lr_steps=(), warmup_iters=2, batch_size=2,
                                 lr=2e-3, min_sizes=(64,), test_size=64, max_size=128)


def test_the_official_cascade_optimiser_unless_given():
    tiny, base = resolve_detect_config("coco_3x", model=CASCADE), resolve_detect_config(
        "coco_3x", model="cascade_mask_rcnn_convnext_base")
    assert (tiny.lr, tiny.layer_decay, tiny.drop_path, tiny.augment) == (2e-4, 0.7, 0.4, "detr")
    assert (base.lr, base.layer_decay, base.drop_path) == (2e-4, 0.8, 0.7)
    mask = resolve_detect_config("coco_3x")
    assert (mask.lr, mask.layer_decay) == (1e-4, 0.95)
    assert resolve_detect_config("coco_3x", ["layer_decay=0.9"], model=CASCADE, lr=3e-4).layer_decay == 0.9
    assert resolve_detect_config("coco_3x", model=CASCADE, lr=3e-4).lr == 3e-4


def test_the_cascade_trains_scores_and_resumes_exactly(data, tmp_path):
    straight = tmp_path / "straight"
    summary = train_detector(_config(data, straight, 2), log=lambda _: None)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_classifier_1", "loss_box_giou_3", "loss_mask_2", "box_ap", "mask_ap"} <= set(rows[-1])
    assert summary["final"]["box_ap"] is not None and rows[-1]["train_loss"] < rows[0]["train_loss"]
    stopped = tmp_path / "stopped"
    train_detector(_config(data, stopped, 1), log=lambda _: None)
    lines = []
    train_detector(_config(data, stopped, 2), log=lines.append)  # more epochs: the run goes on from epoch 1
    assert any("resuming" in line for line in lines), lines
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(stopped / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_predicts_and_evaluates_with_a_cascade_checkpoint(data, tmp_path, capsys):
    train_detector(_config(data, tmp_path / "run", 1), log=lambda _: None)
    ckpt = str(tmp_path / "run" / "last.pt")
    model, classes, _ = load_detector(ckpt)
    assert type(model).__name__ == "ConvNeXtCascadeMaskRCNN" and classes == ["0", "1", "4"]
    assert main(["detect", "evaluate", "--checkpoint", ckpt, "--data", str(data), "--json"]) == 0
    assert "AP50" in json.loads(capsys.readouterr().out)["segm"]
    image = sorted((data / "images").glob("*.jpg"))[0]
    assert main(["detect", "predict", str(image), "--checkpoint", ckpt, "--score", "0", "--json", "-"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records and {"bbox", "segmentation", "score"} <= set(records[0])
    from PIL import Image  # issue 21: a 4000 x 1 strip is skipped in one line, not a traceback
    Image.new("RGB", (4000, 1)).save(tmp_path / "strip.png")
    assert main(["detect", "predict", str(tmp_path / "strip.png"), "--checkpoint", ckpt]) == 1
    assert "too thin for the detector's input size" in capsys.readouterr().err
    assert main(["segment", "predict", str(image), "--checkpoint", ckpt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`convnext detect train` (a detector)" in err[0], err


def test_the_demo_refuses_another_model(capsys):
    assert main(["detect", "demo", "--model", "upernet_convnext_tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the demo trains" in err[0]


def test_an_official_cascade_file_predicts_with_cocos_names(tmp_path, monkeypatch, capsys, mmdet_cascade_state):
    import convnext.tasks.detection.predict as predict
    from convnext.models import build_model

    assert predict.released_size({f"backbone.norm{i}.weight": torch.zeros(d) for i, d in
                                  enumerate([128, 256, 512, 1024])} | {
        f"backbone.stages.{i}.{b}.gamma": torch.zeros(1) for i, n in enumerate([3, 3, 27, 3]) for b in range(n)}
    ) == "base"
    names, ids = predict.coco_categories()
    assert len(names) == 80 and names[0] == "person" and ids[:3] == [1, 2, 3] and ids[-1] == 90
    # an official file of the tiny size, its shapes shrunk (widths of SMALL, three classes) to keep the test light
    small = build_model(CASCADE, num_classes=4, **MODEL_ARGS)
    mmdet = mmdet_cascade_state(small, MODEL_ARGS["dims"], MODEL_ARGS["fpn_channels"], MODEL_ARGS["head_width"],
                                classes=3)
    path = tmp_path / "cascade_mask_rcnn_convnext_tiny_1k_3x.pth"
    torch.save({"state_dict": mmdet, "meta": {"CLASSES": ("cat", "dog", "fox")}}, path)
    monkeypatch.setattr(predict, "released_size", lambda state: "tiny")
    monkeypatch.setattr(predict, "build_model", lambda name, **kw: build_model(name, **kw, **MODEL_ARGS))
    model, classes, cat_ids = predict.load_detector(path)
    assert classes == ["cat", "dog", "fox"] and cat_ids == [1, 2, 3] and not model.training
    assert torch.equal(model.roi_heads.stages[1].box_predictor.bbox_pred.weight,
                       mmdet["roi_head.bbox_head.1.fc_reg.weight"])
    image = tmp_path / "photo.png"
    from PIL import Image
    Image.new("RGB", (64, 48), (90, 120, 30)).save(image)
    assert main(["detect", "predict", str(image), "--checkpoint", str(path), "--score", "0"]) == 0
    assert "photo.png:" in capsys.readouterr().out
