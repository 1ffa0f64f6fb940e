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


def test_the_demo_refuses_another_model(capsys):
    assert main(["detect", "demo", "--model", "upernet_convnext_tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the demo trains" in err[0]
