"""Training a detector on a tiny COCO-format set: the loss falls, COCOeval scores it, the run resumes, and the
CLI evaluates and predicts from its checkpoint."""

import json

import pytest
import torch

from convnext.cli import main
from convnext.errors import UserError
from convnext.tasks.detection.config import fit_to_run, lr_factor, resolve_detect_config
from convnext.tasks.detection.data import CocoData
from convnext.tasks.detection.demo import make_demo_set
from convnext.tasks.detection.evaluate import METRICS, evaluate_detector
from convnext.tasks.detection.predict import load_detector
from convnext.tasks.detection.train import DetectionTask, train_detector

MODEL_ARGS = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], fpn_channels=16, head_width=64, rois_per_image=32,
                  proposals=100)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    data = make_demo_set(root / "train", "train", 8, size=64, seed=2)
    config = resolve_detect_config("demo", model_args=MODEL_ARGS, data=str(data), val_data=str(data),
                                   output=str(root / "run"), epochs=6, lr_steps=(5,), warmup_iters=2, batch_size=2,
                                   lr=2e-3, min_sizes=(64,), test_size=64, max_size=128)
    lines = []
    summary = train_detector(config, log=lines.append)
    return dict(root=root, data=data, config=config, summary=summary, lines=lines)


def test_the_loss_falls_and_every_epoch_is_recorded(run):
    rows = [json.loads(line) for line in (run["root"] / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == list(range(1, 7))
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"], [row["train_loss"] for row in rows]
    assert {"loss_classifier", "loss_mask", "loss_objectness", "box_ap", "mask_ap"} <= set(rows[-1])
    for name in ("last.pt", "best.pt", "summary.json", "curves.png", "config.json"):
        assert (run["root"] / "run" / name).is_file()
    assert any("backbone initialised at random" in line for line in run["lines"])


def test_evaluation_returns_the_coco_metrics(run):
    model, classes, cat_ids = load_detector(run["root"] / "run" / "last.pt")
    data = CocoData(run["data"], train=False)
    metrics = evaluate_detector(model, data)
    assert set(metrics["bbox"]) == set(METRICS) and set(metrics["segm"]) == set(METRICS)
    assert metrics["images"] == len(data) and classes == ["0", "1", "4"] and cat_ids == [0, 1, 4]
    assert all(v is None or 0 <= v <= 100 for v in metrics["bbox"].values())


def test_a_rerun_resumes_the_finished_run(run):
    lines = []
    summary = train_detector(run["config"], log=lines.append)
    assert any("already holds a finished 6-epoch run" in line for line in lines)
    assert summary["final"] == run["summary"]["final"]


def test_cli_evaluate_and_predict(run, tmp_path, capsys):
    ckpt = str(run["root"] / "run" / "last.pt")
    assert main(["detect", "evaluate", "--checkpoint", ckpt, "--data", str(run["data"]), "--json"]) == 0
    assert "AP50" in json.loads(capsys.readouterr().out)["bbox"]
    image = sorted((run["data"] / "images").glob("*.jpg"))[0]
    out = tmp_path / "results.json"
    pictures = tmp_path / "new" / "pictures"  # created, as every output folder (issue 21)
    code = main(["detect", "predict", str(image), str(tmp_path / "missing.jpg"), "--checkpoint", ckpt,
                 "--score", "0", "--output", str(pictures), "--json", str(out)])
    assert code == 1  # one file could not be read: skipped and reported, the other predicted
    assert (pictures / f"{image.stem}.pred.png").is_file()
    records = json.loads(out.read_text())
    assert records and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(records[0])
    said = capsys.readouterr()
    assert "missing.jpg" in said.err and "missing.jpg" not in said.out  # not also listed with "0 objects"


def test_recipes_schedule_and_fitting():
    config = resolve_detect_config("coco_1x")
    assert (config.epochs, config.lr_steps, config.lr, config.weight_decay, config.drop_path) == (
        12, (8, 11), 1e-4, 0.05, 0.4)
    assert lr_factor(0, 100, config) == pytest.approx(0.001)
    assert lr_factor(800, 100, config) == pytest.approx(0.1) and lr_factor(1100, 100, config) == pytest.approx(0.01)
    short = resolve_detect_config("coco_3x", epochs=6, fit_to_run=True)
    notes = fit_to_run(short, train_images=40)
    assert short.lr_steps == (4.5, 5.5) and short.warmup_iters == 6 and len(notes) == 2
    with pytest.raises(Exception, match="lr_steps"):
        resolve_detect_config("coco_3x", epochs=6)


def test_detect_train_fits_the_recipe_to_the_run_unless_told_not_to(monkeypatch):
    """Issue 21: ``detect train --recipe demo --epochs 1`` failed on the recipe's own lr_steps=[12, 15]."""
    import convnext.tasks.detection.train as training
    from convnext.cli import main

    seen = []
    monkeypatch.setattr(training, "train_detector", lambda config, resume: seen.append(config) or {"final": {}})
    assert main(["detect", "train", "--recipe", "demo", "--epochs", "1"]) == 0
    config = seen[-1]
    assert config.fit_to_run and "fit_to_run" not in config.given
    fit_to_run(config, train_images=40)
    assert config.lr_steps == (0.75, 0.94)  # the recipe's 12 and 15 of 16 epochs, in a 1-epoch run
    assert main(["detect", "train", "--recipe", "demo", "--epochs", "1", "--no-fit-to-run"]) == 2


def test_detection_accumulates_gradients_and_stops_on_a_non_finite_loss(tmp_path, monkeypatch):
    data = make_demo_set(tmp_path / "train", "train", 8, size=64, seed=2)
    settings = dict(model_args=MODEL_ARGS, data=str(data), epochs=1, lr_steps=(), warmup_iters=1, batch_size=2,
                    min_sizes=(64,), test_size=64, max_size=128)
    lines = []
    train_detector(resolve_detect_config("demo", accum_steps=2, output=str(tmp_path / "accum"), **settings),
                   log=lines.append)
    assert any("batch 4 = 2 x 2 accumulation x 1 processes" in line for line in lines), lines
    saved = torch.load(tmp_path / "accum" / "last.pt", weights_only=True)
    assert saved["schedule"]["last_epoch"] == len(CocoData(data, train=True)) // 4  # 4 images per optimizer step

    real_step, calls = DetectionTask.step, []

    def nan_on_the_second_step(self, net, batch, device):
        out = real_step(self, net, batch, device)
        calls.append(1)
        if len(calls) == 2:
            out.losses["loss"] = out.losses["loss"] * float("nan")
        return out

    monkeypatch.setattr(DetectionTask, "step", nan_on_the_second_step)
    with pytest.raises(UserError, match=r"^the loss became nan at epoch 1, step 2: training stopped"):
        train_detector(resolve_detect_config("demo", output=str(tmp_path / "nan"), **settings), log=lambda _: None)


def test_the_demo_picture_draws_predictions_at_twice_the_size_with_the_ground_truth(tmp_path):
    from PIL import Image

    from convnext.models import build_model
    from convnext.tasks.detection.demo import draw_demo

    make_demo_set(tmp_path / "data" / "val", "val", 2, size=64, seed=3)
    data = CocoData(tmp_path / "data" / "val", train=False)
    torch.manual_seed(0)
    model = build_model("maskrcnn_convnext_tiny", num_classes=len(data.classes) + 1, **MODEL_ARGS).eval()
    out = draw_demo(tmp_path, model, data.classes, count=2, score=0.0)  # score 0: an untrained model's boxes too
    with Image.open(out) as picture:
        assert picture.width > 200 and picture.height > 200


def test_predicting_an_image_the_annotations_do_not_list_is_refused(tmp_path):
    from convnext.models import build_model
    from convnext.tasks.detection.predict import predict_files

    data = make_demo_set(tmp_path / "val", "val", 2, size=64, seed=3)
    listed = sorted((data / "images").glob("*.jpg"))
    stranger = tmp_path / "zzz.jpg"
    stranger.write_bytes(listed[0].read_bytes())
    ids = {path.name: i + 1 for i, path in enumerate(listed)}
    model = build_model("maskrcnn_convnext_tiny", num_classes=4, **MODEL_ARGS).eval()
    with pytest.raises(UserError, match=r"1 image\(s\) not in --annotations, e.g. zzz.jpg"):
        predict_files(model, [listed[0], stranger], ["a", "b", "c"], [1, 2, 3], out_dir=None, image_ids=ids)
