import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convnext.cli import main
from convnext.errors import UserError
from convnext.tasks.classification.config import resolve_config
from convnext.tasks.classification.evaluate import Agreement, evaluate, evaluate_checkpoint
from convnext.tasks.classification.train import train

TINY = 'model_args={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}'


class Fixed(nn.Module):
    """Returns the logits it is fed: images are (N, K) logits here."""

    def forward(self, x):
        return x


def test_metrics_by_hand():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6], [9.0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([0, 2, 0, -1])  # hit; top-5 only; miss (top-6); unreadable image
    m = evaluate(Fixed(), [(logits, labels)], 6, channels_last=False)
    assert m["count"] == 3 and m["skipped"] == 1
    assert m["top1"] == pytest.approx(100 / 3) and m["top5"] == pytest.approx(200 / 3)
    expected = torch.nn.functional.cross_entropy(logits[:3], labels[:3]).item()
    assert m["loss"] == pytest.approx(expected)
    assert m["per_class"] == [pytest.approx(50.0), None, 0.0, None, None, None]


def make_folder(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for name in ("a", "b", "c"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (34, 34, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_folder(root / "data")
    config = resolve_config("demo", [TINY, "epochs=1", "batch_size=8", "ema=true"], data=str(data),
                            output=str(root / "run"))
    train(config, log=lambda text: None)
    return data, root / "run"


def test_evaluate_checkpoint_uses_the_runs_preprocessing(trained):
    data, run = trained
    m = evaluate_checkpoint("convnext_atto", run / "last.pt", data)
    assert m["count"] == 9 and m["classes"] == ["a", "b", "c"] and m["res"] == 32 and m["crop_pct"] == 1.0
    history = torch.load(run / "last.pt", weights_only=True)["history"]
    assert m["top1"] == pytest.approx(history[-1]["val_top1"])
    ema = evaluate_checkpoint("convnext_atto", run / "last.pt", data, ema=True)
    assert ema["top1"] == pytest.approx(history[-1]["ema_top1"])


def test_cli_evaluate_json_and_text(trained, capsys):
    data, run = trained
    assert main(["evaluate", "--model", "convnext_atto", "--checkpoint", str(run / "last.pt"), "--data", str(data),
                 "--workers", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"top1", "top5", "loss", "per_class", "classes"} and len(out["per_class"]) == 3
    assert main(["evaluate", "--model", "convnext_atto", "--checkpoint", str(run / "last.pt"), "--data", str(data),
                 "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "per-class top-1" in text and "    c " in text
    assert "top-5" not in text  # always 100% with 3 classes


def test_evaluate_keeps_its_workers_within_the_cores_and_says_so(trained, capsys, monkeypatch):
    data, run = trained
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--workers", "64",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["count"] == 9
    assert err.strip() == "DataLoader workers 64 -> 1: no more than this process's CPU cores"


def test_bf16_evaluation_scores_the_cast_model_and_says_what_the_cast_cost(trained, capsys):
    data, run = trained
    fp32 = evaluate_checkpoint("convnext_atto", run / "last.pt", data)
    bf16 = evaluate_checkpoint("convnext_atto", run / "last.pt", data, dtype=torch.bfloat16)
    assert "agreement" not in fp32 and fp32["dtype"] == "fp32" and bf16["dtype"] == "bf16"
    agreement = bf16["agreement"]
    assert agreement["count"] == bf16["count"] == 9
    # the cast moves logits by bf16 rounding: a little, not nothing, and far less than their range
    assert 0 < agreement["max_logit_diff"] < 0.05 * agreement["max_abs_logit"]
    assert agreement["top1_agreement"] >= 100 * 8 / 9 and abs(bf16["top1"] - fp32["top1"]) <= 100 / 9 + 1e-6
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--workers", "0",
                 "--dtype", "bf16"]) == 0
    text = capsys.readouterr().out
    assert "bf16: 9 images" in text and "bf16 against fp32: top-1 agreement" in text
    with pytest.raises(UserError, match="float32 or bfloat16, not torch.float16"):
        evaluate_checkpoint("convnext_atto", run / "last.pt", data, dtype=torch.float16)


def test_agreement_by_hand():
    reference = Fixed()
    agreement = Agreement(reference, torch.device("cpu"))
    images = torch.tensor([[3.0, 1.0], [0.0, -4.0]])
    agreement.add(images, torch.tensor([[2.5, 1.0], [0.0, 1.0]]))  # first keeps its class, second flips
    expected = dict(top1_agreement=50.0, max_logit_diff=5.0, max_abs_logit=4.0, count=2)
    assert agreement.result() == expected and agreement.result() == expected  # asking twice changes nothing


AGREEMENT_ON_TWO_RANKS = """
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from convnext.tasks.classification.evaluate import Agreement, evaluate

class Same(nn.Module):
    def forward(self, x):
        return x

def run(rank, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    agreement = Agreement(Same(), torch.device("cpu"))
    agreement.add(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.5 + rank]]))  # rank 1's image flips
    first, second = agreement.result(), agreement.result()
    batches = [(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))] if rank == 0 else []  # rank 1 scores nothing
    metrics = evaluate(Same(), batches, 2, channels_last=False, reference=Same())
    same = first == second == dict(top1_agreement=50.0, max_logit_diff=1.5, max_abs_logit=1.0, count=2)
    with open(os.path.join(folder, f"{rank}.txt"), "w") as f:  # one file per rank: stdout would interleave
        f.write(f"{same} {metrics['count']} {metrics['agreement']['count']}")
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_agreement_sums_and_maxes_over_ranks(tmp_path):
    script = tmp_path / "agreement.py"
    script.write_text(AGREEMENT_ON_TWO_RANKS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    result = subprocess.run([sys.executable, str(script), port, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [(tmp_path / f"{rank}.txt").read_text() for rank in (0, 1)] == ["True 1 1", "True 1 1"]


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "/no/such/folder", "--output", "{tmp}/r"], "data folder not found"),
    (["train", "--data", "{tmp}/empty_class", "--output", "{tmp}/r"], "has no images"),
    (["train", "--set", "bogus=1", "--output", "{tmp}/r"], "unknown setting 'bogus'"),
    (["train", "--model", "convnext_nope", "--output", "{tmp}/r"], "unknown model"),
    (["evaluate", "--model", "convnext_atto", "--checkpoint", "{tmp}/missing.pt"], "not found"),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys, argv, message):
    (tmp_path / "empty_class" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "empty_class" / "a" / "x.png")
    (tmp_path / "empty_class" / "b").mkdir()
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluate_without_model_rebuilds_a_run_without_layer_scale(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    config = resolve_config("demo", [TINY, "epochs=1", "batch_size=8", "layer_scale_init=0"], data=str(data),
                            output=str(tmp_path / "run"))
    train(config, log=lambda text: None)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"] == "convnext_atto" and metrics["count"] == 9
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(data),
                 "--model", "convnext_femto"]) == 2
    assert "holds a convnext_atto" in capsys.readouterr().err


def test_other_class_folders_are_named(trained, tmp_path):
    _, run = trained
    for name in ("a", "b", "zebra"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((34, 34, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    with pytest.raises(UserError, match=r"missing \[c\], extra \[zebra\]$"):
        evaluate_checkpoint(None, run / "best.pt", tmp_path)
    with pytest.raises(UserError, match=r"without --data the built-in digits are scored: pass --data DIR$"):
        evaluate_checkpoint(None, run / "best.pt")
