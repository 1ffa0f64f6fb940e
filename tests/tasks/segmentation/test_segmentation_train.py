"""Segmentation training on the shared run machinery: recipe, schedule, exact resume, CLI and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from convnext import UserError
from convnext.cli import main
from convnext.tasks.segmentation import UperNet
from convnext.tasks.segmentation.config import fit_segmentation_run, poly_factor, seg_config
from convnext.tasks.segmentation.model import segmentation_loss
from convnext.tasks.segmentation.train import train_segmentation

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], channels=8, aux_channels=8)


def _scenes(root, count=4, size=48):
    """Left half class 0, right half class 1 (from different noise statistics), a few ignored pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            image[:, size // 2:] += 150
            mask = np.zeros((size, size), np.uint8)
            mask[:, size // 2:] = 1
            mask[:2] = 255
            Image.fromarray(image).save(root / split / "images" / f"s{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"s{i}.png")
    return root


def _config(data, output, **extra):
    settings = dict(data=str(data), output=str(output), num_classes=3, iters=4, eval_every=2, batch_size=2,
                    crop=32, scale=(64, 32), workers=0, device="cpu", amp=False, drop_path=0.0, lr=1e-3,
                    model_args=dict(TINY))
    return seg_config("ade20k", **{**settings, **extra})


pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipe_is_the_papers_and_fits_short_runs():
    config = seg_config("ade20k")
    assert (config.lr, config.weight_decay, config.layer_decay, config.warmup_iters, config.iters,
            config.batch_size, config.crop, config.aux_weight) == (1e-4, 0.05, 0.9, 1500, 160_000, 16, 512, 0.4)
    assert seg_config("ade20k_640").crop == 640
    assert (config.eval_stride, seg_config("ade20k_640").eval_stride) == (341, 426)  # the official strides
    assert seg_config("ade20k", model="upernet_convnext_small").drop_path == 0.3 and config.drop_path == 0.4
    short = seg_config("ade20k", iters=1600)
    notes = fit_segmentation_run(short)
    assert short.warmup_iters == 15 and any("warmup_iters 1500 -> 15" in n for n in notes)
    kept = seg_config("ade20k", iters=1600, warmup_iters=100)
    fit_segmentation_run(kept)
    assert kept.warmup_iters == 100
    with pytest.raises(UserError, match=r"setting num_classes=300: must be in \[2, 255\]"):
        seg_config("ade20k", num_classes=300)
    with pytest.raises(UserError, match=r"unknown setting 'nonsense' in --set 'nonsense=1' \(the settings: "):
        seg_config("ade20k", ["nonsense=1"])


def test_poly_schedule_with_warmup_and_stage_wise_decay():
    config = seg_config("ade20k")
    assert poly_factor(0, config, 160_000) == pytest.approx(1e-6, rel=1e-3)
    assert poly_factor(1500, config, 160_000) == pytest.approx(1 - 1500 / 160_000)
    assert poly_factor(160_000, config, 160_000) == 0.0
    model = UperNet(num_classes=3, depths=(3, 3, 9, 3), dims=(8, 16, 24, 32), channels=8, aux_channels=8)
    ids, top = model.layer_decay_ids()
    assert top == 7  # the tiny config's num_layers 6, plus one
    assert ids["backbone.downsample_layers.2.1.weight"] == 0 and ids["backbone.stages.3.0.gamma"] == 4
    assert ids["decode_head.conv_seg.weight"] == top and ids["backbone.norm2.weight"] == top


def test_loss_ignores_255_and_an_empty_batch_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    targets = torch.full((1, 4, 4), 255)
    assert segmentation_loss((logits, None), targets, 0.4).item() == 0.0
    targets[0, 0, 0] = 2
    want = torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([2]))
    assert segmentation_loss((logits, logits), targets, 0.4).item() == pytest.approx(1.4 * want.item(), rel=1e-5)


def test_a_run_writes_its_files_skips_bad_samples_and_resumes_exactly(tmp_path):
    data = _scenes(tmp_path / "data")
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(data / "train" / "masks" / "s0.png")  # label 7 of 3
    said = []
    whole = train_segmentation(_config(data, tmp_path / "whole"), log=said.append)
    assert whole["final"]["iter"] == 4 and whole["best_miou"] is not None
    assert [name.split(": ")[0] for name in whole["skipped_images"]] == ["train/images/s0.png"]
    assert "label 7" in whole["skipped_images"][0]  # with the reason
    assert any("skipped 1 unusable" in line and "label 7" in line for line in said)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "curves.png", "config.json"):
        assert (tmp_path / "whole" / name).is_file()
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [2, 4] and "val_miou" in rows[0]

    class Stop(Exception):
        pass

    def stop_after_first(line):
        if line.startswith("iteration 2/4"):
            raise Stop

    with pytest.raises(Stop):
        train_segmentation(_config(data, tmp_path / "split"), log=stop_after_first)
    resumed = train_segmentation(_config(data, tmp_path / "split"), log=lambda _: None)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"]["train_loss"] == whole["final"]["train_loss"]
    with pytest.raises(UserError, match="other settings"):
        train_segmentation(_config(data, tmp_path / "split", lr=5e-4), log=lambda _: None)
    with pytest.raises(UserError, match="batch_size must be at least 2"):
        train_segmentation(_config(data, tmp_path / "one", batch_size=1), log=lambda _: None)


def test_cli_train_evaluate_predict_and_one_line_errors(tmp_path, capsys):
    data = _scenes(tmp_path / "data")
    run = tmp_path / "run"
    tiny = json.dumps(TINY)
    assert main(["segment", "train", "--data", str(data), "--output", str(run), "--num-classes", "3", "--iters",
                 "2", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--set", "crop=32", "scale=[64,32]",
                 "amp=false", "eval_every=2", f"model_args={tiny}"]) == 0
    out = capsys.readouterr().out
    assert "fitted to this run: warmup_iters 1500 -> 1" in out and "best validation mIoU" in out
    assert "the backbone starts from random weights (no --pretrained)" in out
    assert main(["segment", "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data),
                 "--multi-scale", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"single_scale", "multi_scale"} and len(results["single_scale"]["iou"]) == 3
    assert main(["segment", "predict", "--checkpoint", str(run / "best.pt"), str(data / "val" / "images"),
                 "--output", str(tmp_path / "pred")]) == 0
    labels = np.asarray(Image.open(tmp_path / "pred" / "s0_labels.png"))
    assert labels.shape == (48, 48) and labels.max() < 3 and (tmp_path / "pred" / "s0_overlay.png").is_file()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["segment", "predict", "--checkpoint", str(run / "best.pt"), str(tmp_path / "bad.png"),
                 "--output", str(tmp_path / "pred")]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "1 of 1 files could not be read" in captured.err
    assert main(["segment", "train", "--data", str(data), "--output", str(run), "--num-classes", "3", "--iters",
                 "2", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--set", "crop=32", "scale=[64,32]",
                 "amp=false", "eval_every=2", f"model_args={tiny}"]) == 0
    assert "already holds a finished 2-iteration run" in capsys.readouterr().out
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "val" / "masks" / "s1.png")
    capsys.readouterr()
    assert main(["segment", "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image is 48x48 but its mask s1.png is 10x10" in err


def test_checkpoints_of_another_kind_or_class_count_are_named(tmp_path):
    from convnext.tasks.segmentation.predict import load_segmentation_model

    classifier = tmp_path / "cls.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"model": "convnext_atto", "res": 64}}, classifier)
    with pytest.raises(UserError, match="holds a convnext_atto from `convnext train` \\(an image classifier\\)"):
        load_segmentation_model(checkpoint=classifier)
    run = tmp_path / "seg.pt"
    torch.save({"model": {}, "config": {"model": "upernet_convnext_tiny", "crop": 32, "num_classes": 3}}, run)
    with pytest.raises(UserError, match="was trained for 3 classes, not --num-classes 5"):
        load_segmentation_model(checkpoint=run, num_classes=5)


def test_kills_after_any_step_resume_bit_for_bit(tmp_path, monkeypatch):
    """Issue 21: six kills during a run that saves after every step, each followed by the same command, end
    with the weights of an uninterrupted run (drop path on: the host RNG state travels with the checkpoint)."""
    from convnext.engine import checkpoints

    data = _scenes(tmp_path / "data")
    extra = dict(iters=6, eval_every=3, save_every_steps=1, drop_path=0.2)
    train_segmentation(_config(data, tmp_path / "whole", **extra), log=lambda _: None)
    real_save, saves = checkpoints.save_state, []

    def save_then_die(state, path):
        real_save(state, path)
        saves.append(path.name)
        if path.name == "last.pt" and len(saves) % 2 == 1:  # killed after every other save
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_state", save_then_die)
    kills = 0
    for _ in range(12):
        try:
            train_segmentation(_config(data, tmp_path / "killed", **extra), log=lambda _: None)
            break
        except KeyboardInterrupt:
            kills += 1
    assert kills >= 3, kills
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_a_broken_val_split_is_one_line_and_a_plain_folder_has_no_validation(tmp_path):
    """Attacker trial: a missing val mask silently turned validation off; a plain folder was scored on itself."""
    from convnext.tasks.segmentation.data import train_val_sources

    data = _scenes(tmp_path / "data")
    (data / "val" / "masks" / "s0.png").unlink()
    with pytest.raises(UserError, match="have no mask"):
        train_val_sources(_config(data, tmp_path / "run"))
    flat = tmp_path / "flat"
    shutil.copytree(data / "train", flat)
    train_src, val_src = train_val_sources(_config(flat, tmp_path / "run"))
    assert len(train_src) == 4 and val_src is None


@pytest.mark.parametrize("model_args, message", [('{"dims": [1, 2]}', "zip()"), ('{"channels": 0}', "out of range"),
                                                 ('{"channels": -5}', "negative dimension")])
def test_model_args_that_do_not_build_or_run_are_one_line(model_args, message):
    with pytest.raises(UserError, match=f"upernet_convnext_tiny cannot be built with model_args=.*{message}"):
        seg_config("demo", [f"model_args={model_args}"])


@pytest.mark.parametrize("label", [7, 255])  # outside --num-classes; every pixel ignored
def test_a_training_set_without_usable_masks_stops_instead_of_training_on_nothing(tmp_path, label):
    """Issue 21 (attacker trial): every training mask unusable or fully ignored gave "train loss 0.0000" at
    every iteration and exit 0."""
    data = _scenes(tmp_path / "data")
    for mask in (data / "train" / "masks").iterdir():
        Image.fromarray(np.full((48, 48), label, np.uint8)).save(mask)
    with pytest.raises(UserError, match=r"4 of the 4 training samples could not be used \(e\.g\. "):
        train_segmentation(_config(data / "train", tmp_path / "run", val_data=str(data / "val")), log=lambda _: None)


def test_a_folder_holding_another_tasks_run_is_named_as_such(tmp_path):
    """Attacker trial: a classification run folder given to `segment train` was read as a segmentation run
    (its settings printed as kept, then "other classes")."""
    from convnext.tasks.classification.config import resolve_config
    from convnext.tasks.classification.train import train

    classes = tmp_path / "classes"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (classes / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(classes / split / name / f"{i}.png")
    settings = ['model_args={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}', "epochs=1", "batch_size=4"]
    train(resolve_config("demo", settings, output=str(tmp_path / "run"), data=str(classes)), log=lambda _: None)
    said = []
    with pytest.raises(UserError, match=r"holds a classification run \(convnext_atto\), not a segmentation one"):
        train_segmentation(_config(_scenes(tmp_path / "data"), tmp_path / "run"), log=said.append)
    assert not any("resume" in line for line in said)
