"""Run folders written by an earlier version of this package (tests/fixtures/legacy, made at the commit its
README names) keep evaluating and resuming.

Only the stable public surfaces are used: the command line (`python -m convnext ...`) and the top-level
`convnext.load_model` / `convnext.load_checkpoint`; nothing here imports a module inside the package, so these
tests hold across a restructuring of it. Each test copies its fixture folder into tmp_path and runs there the
very command the fixture was made with (README), from that folder: the runs stored their data paths as given
(relative), and a resume refuses any other spelling of them.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"

pytestmark = pytest.mark.usefixtures("one_thread")

# The fixtures' commands (tests/fixtures/legacy/README.md), run in a copy of their task's folder.
CLASSIFY_ARGS = ["--device", "cpu", "--workers", "0", "--set",
                 'model_args={"dims": [8, 8, 16, 16], "depths": [1, 1, 1, 1]}']
CLASSIFY_RUN = ["train", "--output", "run", "--epochs", "1", *CLASSIFY_ARGS]  # resumed with --epochs 2
CLASSIFY_MID_EPOCH = ["train", "--output", "midepoch", "--epochs", "1", *CLASSIFY_ARGS, "save_every_steps=10"]
SEGMENT_RUN = ["segment", "train", "--recipe", "demo", "--data", "data", "--output", "run", "--num-classes", "3",
               "--iters", "4", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--set", "crop=32",
               "scale=[64,32]", "eval_every=2", "warmup_iters=1",
               'model_args={"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16], "channels": 8, "aux_channels": 8}']
DETECT_RUN = ["detect", "train", "--recipe", "demo", "--data", "data/train", "--val-data", "data/val", "--output",
              "run", "--epochs", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--set",
              'model_args={"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16], "fpn_channels": 8, "head_width": 16, '
              '"rois_per_image": 16, "proposals": 50}', "--set", "lr_steps=[]", "--set", "warmup_iters=2",
              "--set", "min_sizes=[64]", "--set", "test_size=64", "--set", "max_size=128"]


def _copy(task: str, tmp_path: Path) -> Path:
    """A private copy of the fixture folder of ``task`` (a run may only change the copy)."""
    return Path(shutil.copytree(LEGACY / task, tmp_path / task))


def _convnext(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m convnext ARGS` in ``cwd``, on one thread, with this environment (PYTHONPATH included, made
    absolute: the command runs elsewhere)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    proc = subprocess.run([sys.executable, "-m", "convnext", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"convnext {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _resume_line(out: str) -> str:
    # "resuming ... at epoch N" (a "resume: X kept as this run started" line may come first)
    lines = [line for line in out.splitlines() if re.search(r"\bresuming\b", line, re.IGNORECASE)]
    assert lines, f"the rerun does not say it resumes:\n{out}"
    return lines[0]


def _keeps_old_rows(old: list[dict], new: list[dict], added: int) -> None:
    """metrics.jsonl after the resume: the saved rows as they were, then ``added`` new ones."""
    assert len(new) == len(old) + added, (old, new)
    for before, after in zip(old, new, strict=False):
        assert {k: after.get(k) for k in before} == before


# --- classification ----------------------------------------------------------------------------------------


def test_classification_checkpoint_evaluates(tmp_path):
    folder = _copy("classify", tmp_path)
    recorded = _rows(folder / "run" / "metrics.jsonl")[0]["val_top1"]
    proc = _convnext(["evaluate", "--checkpoint", "run/best.pt", "--device", "cpu", "--workers", "0", "--json"],
                     folder)
    metrics = json.loads(proc.stdout)
    assert metrics["count"] == 359  # the held-out built-in digits
    assert metrics["top1"] == pytest.approx(recorded, abs=0.6)  # within two images of what the run measured
    assert metrics["top1"] > 40  # ten classes: chance is 10%


def test_classification_run_resumes_into_a_second_epoch(tmp_path):
    folder = _copy("classify", tmp_path)
    old = _rows(folder / "run" / "metrics.jsonl")
    args = list(CLASSIFY_RUN)
    args[args.index("--epochs") + 1] = "2"  # epochs may change on resume: the one-epoch run goes on to two
    proc = _convnext(args, folder)
    assert re.search(r"\bepoch 2\b", _resume_line(proc.stdout))
    new = _rows(folder / "run" / "metrics.jsonl")
    _keeps_old_rows(old, new, added=1)
    assert new[-1]["epoch"] == 2


def test_classification_mid_epoch_checkpoint_resumes_at_its_step(tmp_path):
    folder = _copy("classify", tmp_path)
    assert not (folder / "midepoch" / "metrics.jsonl").exists()  # stopped at step 10 of epoch 1, before its end
    proc = _convnext(CLASSIFY_MID_EPOCH, folder)
    assert re.search(r"\bstep 10\b", _resume_line(proc.stdout))
    [row] = _rows(folder / "midepoch" / "metrics.jsonl")
    # run/ is the same run left uninterrupted: the resumed epoch ends where it ended (its loss sums the 10 saved
    # steps too, which alone would move the mean by several percent)
    whole = _rows(folder / "run" / "metrics.jsonl")[0]
    assert row["epoch"] == 1
    assert row["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-2)
    assert row["val_top1"] == pytest.approx(whole["val_top1"], abs=1.0)


def test_load_model_rebuilds_the_classifier(tmp_path):
    import convnext

    checkpoint = _copy("classify", tmp_path) / "run" / "best.pt"
    model = convnext.load_model(checkpoint=checkpoint)
    assert model.num_classes == 10
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert list(model.pretrained_cfg["label_names"]) == [str(d) for d in range(10)]
    same = convnext.build_model("convnext_atto", num_classes=10, dims=[8, 8, 16, 16], depths=[1, 1, 1, 1])
    convnext.load_checkpoint(same, checkpoint)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), same.eval()(x), atol=1e-5)


# --- segmentation ------------------------------------------------------------------------------------------


def test_segmentation_checkpoint_evaluates(tmp_path):
    folder = _copy("segment", tmp_path)
    recorded = _rows(folder / "run" / "metrics.jsonl")[0]["val_miou"]
    proc = _convnext(["segment", "evaluate", "--checkpoint", "run/best.pt", "--data", "data", "--json"], folder)
    scores = json.loads(proc.stdout)["single_scale"]
    assert len(scores["iou"]) == 3 and scores["images"] == 2
    assert scores["miou"] == pytest.approx(recorded, abs=0.5)


def test_segmentation_run_resumes_to_its_end(tmp_path):
    folder = _copy("segment", tmp_path)
    old = _rows(folder / "run" / "metrics.jsonl")
    assert [row["iter"] for row in old] == [2]  # stopped after the first of two validation intervals
    proc = _convnext(SEGMENT_RUN, folder)
    _resume_line(proc.stdout)
    new = _rows(folder / "run" / "metrics.jsonl")
    _keeps_old_rows(old, new, added=1)
    assert new[-1]["iter"] == 4 and "val_miou" in new[-1]


# --- detection ---------------------------------------------------------------------------------------------


def test_detection_checkpoint_evaluates(tmp_path):
    folder = _copy("detect", tmp_path)
    recorded = _rows(folder / "run" / "metrics.jsonl")[0]["box_ap"]
    proc = _convnext(["detect", "evaluate", "--checkpoint", "run/best.pt", "--data", "data/val", "--device", "cpu",
                      "--json"], folder)
    metrics = json.loads(proc.stdout)
    assert metrics["images"] == 2 and "AP" in metrics["segm"]
    # two images and a one-epoch model: near-tied scores may rank differently on another CPU
    assert metrics["bbox"]["AP"] == pytest.approx(recorded, abs=5.0)


def test_detection_run_resumes_into_its_second_epoch(tmp_path):
    folder = _copy("detect", tmp_path)
    old = _rows(folder / "run" / "metrics.jsonl")
    assert [row["epoch"] for row in old] == [1]  # stopped after epoch 1 of 2
    proc = _convnext(DETECT_RUN, folder)
    assert re.search(r"\bepoch 2\b", _resume_line(proc.stdout))
    new = _rows(folder / "run" / "metrics.jsonl")
    _keeps_old_rows(old, new, added=1)
    assert new[-1]["epoch"] == 2 and "box_ap" in new[-1]
