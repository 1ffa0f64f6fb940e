import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convnext.engine.checkpoints as checkpoints
from convnext.data.augment import BatchMix
from convnext.engine.optim import layer_ids, lr_at, param_groups
from convnext.errors import UserError
from convnext.models import build_model, register_model
from convnext.models import convnext as registry
from convnext.tasks.classification.config import resolve_config
from convnext.tasks.classification.train import train
from convnext.weights import load_checkpoint

TINY = 'model_args={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}'


def meta(name, **kw):
    with torch.device("meta"):
        return build_model(name, **kw)


def make_folder(root, per_class=24, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 4)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def config(tmp_path, *settings, **kw):
    return resolve_config("demo", [TINY, *settings], output=str(tmp_path / "run"), **kw)


def test_schedule_by_hand():
    # base 1, floor 0.1, 10 steps, 2 of warm-up
    lrs = [lr_at(s, 1.0, 0.1, 10, 2) for s in range(11)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # half-way down: 0.55
    assert lrs[10] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(0, 2.0, 0.0, 4, 0) == 2.0


def test_no_weight_decay_on_biases_and_1d_parameters():
    model = meta("convnext_atto")
    groups = param_groups(model, 0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1 and not name.endswith(".bias")), name
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_official_layer_decay_map_for_3_3_27_3():
    ids, top = layer_ids(meta("convnext_small"))
    assert top == 13
    expected = {"downsample_layers.0.0.weight": 0, "downsample_layers.0.1.bias": 0, "stages.0.2.gamma": 1,
                "downsample_layers.1.1.weight": 2, "stages.1.0.dwconv.weight": 2, "downsample_layers.2.0.weight": 3,
                "stages.2.0.pwconv1.weight": 3, "stages.2.5.norm.weight": 4, "stages.2.26.pwconv2.bias": 11,
                "downsample_layers.3.1.weight": 12, "stages.3.2.gamma": 12, "norm.weight": 13, "head.bias": 13}
    assert {k: ids[k] for k in expected} == expected
    groups = param_groups(meta("convnext_small"), 0.05, layer_decay=0.8)
    scale = {g["name"]: g["lr_scale"] for g in groups}
    assert scale["layer_0_decay"] == pytest.approx(0.8 ** 13)
    assert scale["layer_3_no_decay"] == pytest.approx(0.8 ** 10)
    assert scale["layer_13_decay"] == 1.0 and len(groups) == 2 * 14


def test_layer_decay_generalises_to_tiny_and_isotropic():
    ids, top = layer_ids(meta("convnext_tiny"))
    assert top == 7 and ids["stages.2.8.dwconv.weight"] == 5 and ids["stages.3.0.gamma"] == 6
    assert ids["downsample_layers.3.1.bias"] == 6 and ids["head.weight"] == 7
    ids, top = layer_ids(meta("convnext_isotropic_small"))
    assert top == 19 and ids["stem.weight"] == 0 and ids["blocks.17.pwconv1.weight"] == 18 and ids["norm.bias"] == 19


class HeadFirst(nn.Module):
    """A registered model of another shape, whose modules are registered out of forward order."""

    def __init__(self, num_classes=3, in_chans=3):
        super().__init__()
        self.head = nn.Linear(4, num_classes)
        self.layers = nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3))
        self.in_chans = in_chans

    def forward(self, x):
        return self.head(self.layers(x).mean((2, 3)))


def test_layer_decay_for_any_model_follows_the_forward_pass(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))  # the registration ends with the test
    register_model("test_head_first", HeadFirst)
    ids, top = layer_ids(build_model("test_head_first"), res=16)
    assert ids["layers.0.weight"] == 0 and ids["layers.2.bias"] == 1 and ids["head.weight"] == top == 2


def test_a_short_run_learns_and_writes_its_files(tmp_path):
    cfg = config(tmp_path, "epochs=2", 'model_args={"dims": [16, 32, 64, 128], "depths": [1, 1, 2, 1]}',
                 "ema=true", "ema_decay=0.9", "save_every=2")
    summary = train(cfg, log=lambda text: None)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary["best_top1"] > 50  # ten classes: chance is 10%
    assert rows[-1]["ema_top1"] is not None and rows[-1]["val_top5"] >= rows[-1]["val_top1"]
    for name in ("config.json", "summary.json", "curves.png", "last.pt", "best.pt", "best_ema.pt", "checkpoint-2.pt"):
        assert (run / name).is_file(), name
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["classes"] == [str(d) for d in range(10)]
    model = build_model(cfg.model, num_classes=10, **cfg.model_args)
    load_checkpoint(model, run / "last.pt")
    assert torch.equal(model.head.weight, state["model"]["head.weight"])
    load_checkpoint(model, run / "best_ema.pt")


def test_resume_after_interruption_is_bitwise_exact(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data")
    # every random step on: per-image crops, RandAugment, erasing, Mixup/CutMix, drop path, EMA
    settings = ["epochs=2", "batch_size=8", "save_every_steps=2", "randaug_n=2", "reprob=0.5", "mixup=0.8",
                "cutmix=1.0", "drop_path=0.1", "ema=true", "ema_decay=0.9", "hflip=0.5"]
    whole = train(config(tmp_path / "whole", *settings, data=str(data)), log=lambda text: None)

    saves, real_save = [], checkpoints.save_state

    def save_then_die(state, path):
        real_save(state, path)
        saves.append(path.name)
        if saves.count("last.pt") == 4:  # epoch 2, step 2 of 6
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_state", save_then_die)
    cfg = config(tmp_path / "cut", *settings, data=str(data))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda text: None)
    monkeypatch.setattr(checkpoints, "save_state", real_save)
    logs = []
    resumed = train(cfg, log=logs.append)
    assert any("resuming" in line and "epoch 2, step 2" in line for line in logs)

    a = torch.load(tmp_path / "whole" / "run" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "run" / "last.pt", weights_only=True)
    for key in ("model", "model_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(a["optimizer"]["state"][i]["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])
               for i in a["optimizer"]["state"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert resumed["best_top1"] == whole["best_top1"]


def test_non_finite_loss_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data")
    calls, real_call = [], BatchMix.__call__

    def poisoned(self, images, labels):
        x, t = real_call(self, images, labels)
        calls.append(1)
        return (x * float("nan") if len(calls) == 5 else x), t  # call 1 draws augment.png

    monkeypatch.setattr(BatchMix, "__call__", poisoned)
    cfg = config(tmp_path, "epochs=1", "batch_size=8", "save_every_steps=1", data=str(data))
    with pytest.raises(UserError, match=r"loss became nan at epoch 1, step 4.*last good checkpoint"):
        train(cfg, log=lambda text: None)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step_in_epoch"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_corrupt_images_are_skipped_counted_and_reported(tmp_path):
    data = make_folder(tmp_path / "data")
    (data / "train" / "a" / "zz_broken.png").write_bytes(b"garbage")
    (data / "val" / "b" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff")
    logs = []
    summary = train(config(tmp_path, "epochs=1", "batch_size=7", data=str(data)), log=logs.append)
    assert summary["skipped_images"] == [str(data / "train" / "a" / "zz_broken.png")]
    assert any("skipped 1 unusable training sample" in line for line in logs)
    assert any("(1 unreadable validation images left out)" in line for line in logs)
    assert summary["final"]["val_top1"] is not None


@pytest.mark.parametrize(("readable", "message"), [(3, r"5 of the 8 training samples could not be used \(e\.g\. "),
                                                  (0, "no image of the training set could be read")])
def test_a_mostly_unreadable_training_set_stops_the_run_in_one_line(tmp_path, readable, message):
    """Issue 21: each unreadable image is replaced by the next readable one, so a set of mostly broken files
    trained on its few good images over and over while the run looked healthy."""
    data = make_folder(tmp_path / "data", per_class=4)
    for i, image in enumerate(sorted((data / "train").glob("*/*.png"))[readable:]):
        image.write_bytes(b"garbage" * i)
    with pytest.raises(UserError, match=message):
        train(config(tmp_path, "epochs=2", "batch_size=2", "workers=2", data=str(data)), log=lambda text: None)


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    data = make_folder(tmp_path / "data", per_class=16)
    common = ["--data", str(data), "--recipe", "demo", "--set", TINY, "--epochs", "2", "--workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "convnext", "train", *common, "--batch-size", "4", "--output", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    train(config(tmp_path / "one", "epochs=2", "batch_size=8", data=str(data)), log=lambda text: None)
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "run" / "last.pt", weights_only=True)
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"] == 8
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)
    assert [r["val_top1"] for r in a["history"]] == [r["val_top1"] for r in b["history"]]


def test_finetune_starts_from_a_checkpoint_with_a_new_head(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8, classes=("a", "b", "c"))
    source = build_model("convnext_atto", num_classes=5, dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    torch.save({"model": source.state_dict()}, tmp_path / "pretrained.pth")
    logs = []
    cfg = resolve_config("finetune", [TINY, "epochs=1", "batch_size=8", "res=32", "workers=0"],
                         model="convnext_atto", data=str(data), finetune=str(tmp_path / "pretrained.pth"),
                         output=str(tmp_path / "ft"))
    with pytest.warns(UserWarning, match="checkpoint head has 5 classes"):
        train(cfg, log=logs.append)
    assert any("fine-tuning from" in line for line in logs)
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    start = source.state_dict()
    # lr 5e-5 x 8/512 with layer decay 0.8: the body barely moves; the new head is tiny (head_init_scale 0.001)
    assert (tuned["stages.0.0.dwconv.weight"] - start["stages.0.0.dwconv.weight"]).abs().max() < 1e-5
    assert tuned["head.weight"].shape == (3, 64) and tuned["head.weight"].abs().max() < 1e-3


HOLD_LOCK = """
import sys
from pathlib import Path
from convnext.engine.checkpoints import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_one_run_per_folder_and_a_killed_holder_leaves_no_lock(tmp_path):
    folder = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"{folder} is in use by another run \(process {holder.pid}\)"):
            train(config(tmp_path), log=lambda text: None)
    finally:
        holder.kill()  # like kill -9: no clean-up code runs
        holder.wait()
    lock = checkpoints.RunLock(folder).acquire()
    assert (folder / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(UserError, match="in use by another run"):  # one holder, even within a process
        checkpoints.RunLock(folder).acquire()
    lock.release()


def test_a_resume_continues_the_same_run_or_refuses(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8)
    cfg = config(tmp_path, "epochs=1", "batch_size=8", "save_every=1", data=str(data))
    train(cfg, log=lambda text: None)
    run = tmp_path / "run"
    before = (run / "last.pt").read_bytes()
    # a changed lr was printed and then ignored: now it is refused, naming the way to start over
    said = []
    with pytest.raises(UserError, match=r"other settings \(lr 0.004 -> 0.002\).*--restart"):
        train(config(tmp_path, "epochs=1", "batch_size=8", "save_every=1", data=str(data), lr=0.002), log=said.append)
    assert not any("lr" in line for line in said)  # nothing said as if the run went ahead with the new value
    other = make_folder(tmp_path / "other", per_class=8, classes=("a", "b", "c"))
    with pytest.raises(UserError, match="holds a run on other classes.*--restart"):
        train(config(tmp_path, "epochs=1", "batch_size=8", "save_every=1", data=str(other)))
    assert (run / "last.pt").read_bytes() == before
    # settings a resume applies as given: more epochs
    logs = []
    train(config(tmp_path, "epochs=2", "batch_size=8", "save_every=1", data=str(data)), log=logs.append)
    assert any("resuming" in line for line in logs) and (run / "checkpoint-2.pt").is_file()
    # a restart replaces the folder's run: nothing of the old one is left to pass for the new one
    train(config(tmp_path, "epochs=1", "batch_size=8", data=str(data), lr=0.002), resume=False,
          log=lambda text: None)
    assert not list(run.glob("checkpoint-*.pt"))
    assert torch.load(run / "last.pt", weights_only=True)["config"]["lr"] == 0.002


def test_more_epochs_resume_a_fitted_run_with_the_values_it_was_fitted_to(tmp_path):
    """Issue 21: the warm-up a short run was fitted to is derived from its epochs; a resume with more epochs
    keeps it (the run goes on as it started) instead of refusing a value the user never set."""
    data = make_folder(tmp_path / "data", per_class=4)
    first = config(tmp_path, "epochs=1", "batch_size=8", "fit_to_run=true", data=str(data))
    train(first, log=lambda text: None)
    fitted = first.warmup_epochs
    logs = []
    more = config(tmp_path, "epochs=2", "batch_size=8", "fit_to_run=true", data=str(data))
    train(more, log=logs.append)
    assert fitted < 1 and more.warmup_epochs == fitted and any("resuming" in line for line in logs)
    assert any(f"warmup_epochs={fitted}: kept as this run started" in line for line in logs), logs
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("content,message", [
    (b"", r"the file is empty \(0 bytes\); it may be damaged: --restart"),
    (b"PK\x03\x04 torn", "it may be damaged: --restart"),
    ("weights", r"not a checkpoint a training run wrote \(no optimizer.*--restart"),
])
def test_a_last_pt_that_cannot_be_resumed_says_how_to_start_over(tmp_path, content, message):
    (tmp_path / "run").mkdir()
    if content == "weights":
        torch.save({"model": build_model("convnext_atto", num_classes=10).state_dict()}, tmp_path / "run" / "last.pt")
    else:
        (tmp_path / "run" / "last.pt").write_bytes(content)
    with pytest.raises(UserError, match=message):
        train(config(tmp_path), log=lambda text: None)


def test_divergence_before_any_checkpoint_does_not_promise_one(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "data", per_class=8)
    calls, real_call = [], BatchMix.__call__

    def poisoned(self, images, labels):
        x, t = real_call(self, images, labels)
        calls.append(1)
        return (x * float("nan") if len(calls) == 2 else x), t  # call 1 draws augment.png

    monkeypatch.setattr(BatchMix, "__call__", poisoned)
    with pytest.raises(UserError, match="step 1: training stopped; no checkpoint was written yet") as err:
        train(config(tmp_path, "epochs=1", "batch_size=8", data=str(data)), log=lambda text: None)
    assert "intact" not in str(err.value)


def test_a_single_class_is_refused(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8, classes=("only",))
    with pytest.raises(UserError, match="holds one class"):
        train(config(tmp_path, data=str(data)), log=lambda text: None)


def test_a_run_without_validation_says_where_its_model_is(tmp_path):
    data = make_folder(tmp_path / "data", per_class=4) / "train"  # class folders only: no val/ split
    logs = []
    train(config(tmp_path, "epochs=1", "batch_size=8", data=str(data)), log=logs.append)
    assert logs[-1].startswith("done: no validation set, so no best.pt; the trained model is")
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "run" / "best.pt").exists()


def test_a_rerun_without_the_flags_it_started_with_goes_on_as_the_run_started(tmp_path, capsys):
    """A rerun without --data or --epochs resolves another recipe's defaults (the digits' demo: 12 epochs, no
    workers); settings free on resume still keep the run's own values unless given again."""
    from convnext.cli import main

    data, out = make_folder(tmp_path / "data", per_class=4), str(tmp_path / "run")
    assert main(["train", "--data", str(data), "--recipe", "demo", "--set", TINY, "--epochs", "1",
                 "--batch-size", "8", "--workers", "1", "--output", out]) == 0
    capsys.readouterr()
    assert main(["train", "--output", out]) == 0
    said = capsys.readouterr().out
    assert "resume: epochs=1: kept as this run started" in said and "workers=1: kept as this run started" in said
    assert "already holds a finished" in said
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["workers"] == 1 and saved["data"] == str(data)
