"""benchmarks/gpu_check.py runs its every check on a CPU (small), so the script a GPU session runs is known to
work before the GPU is there; on CUDA it runs as is."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_check_passes_on_the_cpu_and_writes_one_table(tmp_path, capsys):
    gpu_check = load()
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "gpu")]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())
    checks = [r["check"] for r in rows]
    assert sum(c.startswith("parity") for c in checks) == len(gpu_check.QUICK_VARIANTS)
    assert [c for c in checks if "train step" in c] == [
        "bf16 train step, classification", "bf16 train step, segmentation", "bf16 train step, detection (cascade)"]
    assert any(c.startswith("Table 12") for c in checks) and "bf16 inference convnext-fused" in checks
    assert checks[-1] == "DDP step (gloo, 1 process)" and all(r["ok"] for r in rows)
    assert "| DDP step (gloo, 1 process) |" in (tmp_path / "gpu.md").read_text()


def test_without_cuda_it_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load().main([]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
