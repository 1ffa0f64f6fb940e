import json
import platform
import subprocess
import sys

import pytest
import torch

from convnext.cli import main
from convnext.deploy import benchmark
from convnext.models import build_model

SMALL = ["--model", "convnext_atto", "--res", "32", "--rounds", "1", "--warmup", "1", "--threads", "2"]


@pytest.fixture(autouse=True)
def short_rounds(monkeypatch):
    monkeypatch.setattr(benchmark, "ROUND_SECONDS", 0.01)


def run_json(capsys, *args):
    assert main(["benchmark", *SMALL, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inference_report_has_the_promised_fields(capsys):
    report = run_json(capsys, "--batch", "1,2", "--peers", "hf")
    assert {"cpu", "threads", "torch", "transformers", "date"} <= set(report["machine"])
    assert report["settings"]["mode"] == "inference" and report["settings"]["dtype"] == "fp32"
    rows = {(r["impl"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(impl, b) for impl in ("convnext", "convnext-fused", "hf") for b in (1, 2)}
    for row in rows.values():
        assert 0 < row["img_s"]["min"] <= row["img_s"]["median"] <= row["img_s"]["max"]
        assert row["tflops"] > 0 and row["peak_mem_mb"] > 0
        assert row["params"] == 3_695_520 and 0 < row["gmacs"] < 0.1
    ratio = rows["convnext", 2]["ratio"]["hf"]
    expected = rows["convnext", 2]["img_s"]["median"] / rows["hf", 2]["img_s"]["median"]
    assert ratio["median"] == pytest.approx(expected)  # one round: the per-round ratio is the ratio
    assert "ratio" not in rows["hf", 1]


def test_training_report_times_our_model_against_hf(capsys):
    report = run_json(capsys, "--batch", "2", "--peers", "hf", "--train")
    assert report["settings"]["mode"] == "train"
    assert [r["impl"] for r in report["results"]] == ["convnext", "hf"]
    assert report["results"][0]["ratio"]["hf"]["median"] > 0


def test_missing_peers_are_skipped_with_a_reason(capsys, monkeypatch):
    monkeypatch.setitem(benchmark.PEER_BUILDERS, "timm", lambda name: "timm does not import (test)")
    report = run_json(capsys, "--batch", "1", "--peers", "timm")
    assert report["skipped"] == {"convnext_atto/timm": "timm does not import (test)"}
    assert {r["impl"] for r in report["results"]} == {"convnext", "convnext-fused"}


def test_runtimes_run_our_onnx_graph_in_inference_only(capsys):
    pytest.importorskip("onnxruntime")
    report = run_json(capsys, "--batch", "2", "--peers", "onnxruntime")
    assert [r["impl"] for r in report["results"]] == ["convnext", "convnext-fused", "onnxruntime"]
    assert report["results"][0]["ratio"]["onnxruntime"]["median"] > 0
    report = run_json(capsys, "--batch", "2", "--peers", "onnxruntime", "--train")
    assert report["skipped"] == {"convnext_atto/onnxruntime": "runs our ONNX graph: CPU inference only"}


def test_int8_is_measured_against_our_float_model_and_openvino_int8(capsys):
    report = run_json(capsys, "--batch", "2", "--peers", "openvino", "--dtype", "int8")
    rows = {r["impl"]: r for r in report["results"]}
    assert list(rows) == ["convnext", "convnext-int8", "openvino"]
    assert set(rows["convnext-int8"]["ratio"]) == {"convnext", "openvino"} and "ratio" not in rows["convnext"]
    assert main(["benchmark", *SMALL, "--model", "convnext_atto", "--dtype", "int8", "--train"]) == 2
    assert "--dtype int8 measures CPU inference" in capsys.readouterr().err


def test_table_and_plot(capsys, tmp_path):
    plot = tmp_path / "throughput.png"
    assert main(["benchmark", *SMALL, "--model", "convnext_atto,convnext_femto", "--batch", "1", "--peers", "none",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "convnext_femto" in out and "img/s" in out and f"wrote {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be positive"),
    (["--batch", "a,b"], "--batch must be positive"),
    (["--res", "16"], "--res must be from 32"),
    (["--peers", "keras"], "unknown peer"),
    (["--model", "convnext_huge"], "unknown model"),
    (["--rounds", "0"], "at least one round"),
])
def test_bad_input_is_one_clear_error(capsys, args, message):
    assert main(["benchmark", *SMALL, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keep_freed_memory_applies_on_glibc():
    """In a child process: the setting is process-wide and permanent; the fused MLP then runs unsliced."""
    code = ("import sys; from convnext import keep_freed_memory; from convnext.models import kernels; "
            "assert kernels.MLP_SLICE_BYTES; sys.exit(0 if keep_freed_memory() is True and kernels.MLP_SLICE_BYTES "
            "is None else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_bf16_inference_casts_every_pytorch_model_once(capsys):
    report = run_json(capsys, "--batch", "1", "--peers", "timm", "--dtype", "bf16")
    assert report["settings"]["low_precision"] == "weights cast"
    assert {r["impl"] for r in report["results"]} == {"convnext", "convnext-fused", "timm"}
    model = build_model("convnext_atto").fuse_for_inference()
    step = benchmark._make_step(model, torch.randn(1, 3, 32, 32), train=False, dtype=torch.bfloat16, cast=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    step()  # bf16 weights take the bf16 input without autocast
    assert "inference at 32x32, bf16 (weights cast)" in benchmark.format_report(report)
