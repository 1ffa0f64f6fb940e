"""The README's performance table: ConvNeXt-T against its peers, each setting in a fresh process.

Every setting runs `convnext.deploy.benchmark.run_benchmark` in its own Python process, so that process-wide
switches (threads, the glibc allocator setting) apply to all implementations of that setting alike and to
nothing else. Peers: Hugging Face transformers, timm and torchvision where they import, and
`official_layout` (the official repository's permute + Linear block). Writes a markdown table and the raw
JSON reports, with the machine, library versions and date they were measured on.

    .venv/bin/python benchmarks/perf_table.py --rounds 8     # -> results/performance.{md,json}
    .venv/bin/python benchmarks/perf_table.py --rounds 8 --allocator both --settings "inference fp32,training fp32" \
        --out benchmarks/results/performance_fp32              # the glibc setting's effect

On a CUDA machine the GPU settings run instead (untested here: no GPU was available when this was written).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from convnext.deploy.benchmark import DTYPES
from convnext.deploy.table12 import PAPER_TABLE_12

HERE = Path(__file__).resolve().parent
CPU_SETTINGS = {
    "inference fp32": dict(batches=[1, 32], train=False, dtype="fp32"),
    "training fp32": dict(batches=[16], train=True, dtype="fp32"),
    # bf16 inference: every PyTorch model with its weights cast to bf16 (what a deploying user does)
    "inference bf16": dict(batches=[1, 32], train=False, dtype="bf16"),
    "training bf16": dict(batches=[16], train=True, dtype="bf16"),
    # Every PyTorch model through torch.compile (Inductor, weights frozen into the graph): each one's other mode.
    "inference fp32 compiled": dict(batches=[32], train=False, dtype="fp32", compile_mode="default", freezing=True),
    "inference bf16 compiled": dict(batches=[32], train=False, dtype="bf16", compile_mode="default", freezing=True),
    "training fp32 compiled": dict(batches=[16], train=True, dtype="fp32", compile_mode="default"),
    "training bf16 compiled": dict(batches=[16], train=True, dtype="bf16", compile_mode="default"),
    # Our INT8 model (`convnext quantize`) against our float32 eager model and OpenVINO's / ONNX Runtime's INT8.
    "inference int8": dict(batches=[32], train=False, dtype="int8"),
    # One thread, timed by the CPU time it used: what a shared machine's other load cannot inflate.
    "inference fp32 / 1 thread / CPU time": dict(batches=[1, 32], train=False, dtype="fp32", threads=1,
                                               clock="thread_time"),
    "training fp32 / 1 thread / CPU time": dict(batches=[16], train=True, dtype="fp32", threads=1,
                                              clock="thread_time"),
}
# The GPU protocol: bf16, channels_last and torch.compile for every implementation.
CUDA_SETTINGS = {
    "inference bf16 compiled": dict(batches=[256], train=False, dtype="bf16", channels_last=True,
                                    compile_mode="default", device="cuda"),
    "training bf16 compiled": dict(batches=[128], train=True, dtype="bf16", channels_last=True,
                                   compile_mode="default", device="cuda"),
    # The paper's Table 12 protocol (TF32, channels_last): TF32 for matmuls too, or the peers' Linears
    # would run in full fp32 while every convolution uses TF32 (PyTorch's default for cuDNN).
    "inference tf32": dict(batches=[256], train=False, dtype="fp32", channels_last=True, device="cuda",
                           tf32=True),
}
# img/s, Table 12: ConvNeXt-T, TF32, channels_last, PyTorch 1.10 (`convnext benchmark --table 12` has the whole table)
PAPER_A100_TINY = next(row.img_s for row in PAPER_TABLE_12 if row.convnext == "convnext_tiny" and row.res == 224)


def child(args: argparse.Namespace) -> None:
    """Run one setting and print its report as JSON (in a fresh process)."""
    sys.path.insert(0, str(HERE))
    from official_layout import official_layout

    from convnext.deploy.allocator import keep_freed_memory
    from convnext.deploy.benchmark import run_benchmark

    spec = json.loads(args.child)
    torch.set_num_threads(spec.pop("threads"))
    kept = keep_freed_memory() if spec.pop("keep_freed_memory") else False
    clock = getattr(time, spec.pop("clock", "perf_counter"))
    torch.backends.cuda.matmul.allow_tf32 = spec.pop("tf32", False)
    import torch._inductor.config as inductor

    inductor.freezing = spec.pop("freezing", False)  # CPU inference: weights as constants, prepacked for oneDNN
    report = run_benchmark([spec.pop("model")], **spec, extra_peers={"official": official_layout}, clock=clock)
    report["settings"]["keep_freed_memory"] = kept
    report["gemm_tflops"] = gemm_rate(spec.get("device", "cpu"), clock, report["settings"]["dtype"])
    print(json.dumps(report))


# ConvNeXt-T's stages: (width, side at 224 px, blocks); each block's MLP is a (w -> 4w) and a (4w -> w) product.
TINY_STAGES = ((96, 56, 3), (192, 28, 3), (384, 14, 9), (768, 7, 3))


def gemm_rate(device: str, clock, dtype: str = "fp32", rounds: int = 5, batch: int = 32) -> float:
    """TFLOP/s of ConvNeXt-T's pointwise layers at ``batch`` run alone as plain matrix products in ``dtype``
    (no bias, no GELU, no residual: on CPUs oneDNN/MKL, AMX for bf16 where the CPU has it; int8: PyTorch's
    quantized oneDNN 1x1 convolution), best of ``rounds`` per layer, summed over the blocks: the ceiling the
    model's rows approach, since the pointwise layers hold nearly all of its multiply-adds."""
    flops = seconds = 0.0
    for width, side, blocks in TINY_STAGES:
        for c_in, c_out in ((width, 4 * width), (4 * width, width)):
            pixels = batch * side * side
            layer, x = _pointwise_layer(device, dtype, pixels, c_in, c_out)
            flops += blocks * 2 * pixels * c_in * c_out
            seconds += blocks * _best_time(layer, x, device, clock, rounds)
    return flops / seconds / 1e12


def _pointwise_layer(device: str, dtype: str, pixels: int, c_in: int, c_out: int):
    """A (pixels, c_in) @ (c_in, c_out) product as the row's dtype runs it, and its input."""
    x, w = torch.randn(pixels, c_in, device=device), torch.randn(c_out, c_in, device=device)
    if dtype != "int8":
        x, w = x.to(DTYPES[dtype]), w.to(DTYPES[dtype])
        return (lambda x: torch.nn.functional.linear(x, w)), x
    torch.backends.quantized.engine = "onednn"
    layer = torch.ao.nn.quantized.Conv2d(c_in, c_out, 1)
    layer.set_weight_bias(torch.quantize_per_tensor(w[:, :, None, None], 0.01, 0, torch.qint8), None)
    images = x.abs().view(1, pixels, 1, c_in).permute(0, 3, 1, 2)  # channels_last, as the model's activations
    return layer, torch.quantize_per_tensor(images, 0.01, 0, torch.quint8)


def _best_time(layer, x, device: str, clock, rounds: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        layer(x)
        for _ in range(rounds):
            start = clock()
            layer(x)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, clock() - start)
    return best


def run_setting(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"setting {spec} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def markdown(reports: list[tuple[str, dict]]) -> str:
    machine = reports[0][1]["machine"]
    where = machine["gpu"] or (f"{machine['cpu']} ({machine['cpu_isa']}, {machine['cpu_cores']} cores), "
                               f"{machine['threads']} threads unless the setting says otherwise")
    versions = ", ".join(f"{k} {machine[k]}" for k in ("torch", "transformers", "timm", "torchvision") if k in machine)
    lines = [f"Measured {machine['date']} on {where}; Python {machine['python']}, {versions}.",
             f"{reports[0][1]['settings']['rounds']} timed rounds per implementation, interleaved; images/s as "
             "median [min - max]; ratios are medians of per-round ratios.", "",
             "| setting | glibc keeps freed memory | batch | implementation | images/s | TFLOP/s | peak MB | "
             "ours / peer |", "|---|---|---|---|---|---|---|---|"]
    for title, report in reports:
        for row in report["results"]:
            speed, ratio = row["img_s"], row.get("ratio", {})
            ratios = ", ".join(f"{peer} {r['median']:.2f}x [{r['min']:.2f} - {r['max']:.2f}]"
                               for peer, r in ratio.items())
            lines.append(f"| {title} | {'yes' if report['settings']['keep_freed_memory'] else 'no'} | {row['batch']} "
                         f"| {row['impl']} | {speed['median']:.2f} [{speed['min']:.2f} - {speed['max']:.2f}] | "
                         f"{row['tflops']:.3f} | {row['peak_mem_mb']:.0f} | {ratios} |")
    lines += ["", "Fraction of the GEMM rate of the row's dtype (`gemm_rate`: ConvNeXt-T's pointwise layers at "
              "batch 32 alone as plain matrix products, measured in the same process; int8: PyTorch's quantized "
              "oneDNN convolution) that our rows reach:", ""]
    for title, report in reports:
        ours = [f"{row['impl']} batch {row['batch']}: {row['tflops'] / report['gemm_tflops']:.0%}"
                for row in report["results"] if "ratio" in row]
        lines.append(f"- {title}: GEMM {report['gemm_tflops']:.3f} TFLOP/s; {', '.join(ours)}")
    if machine["gpu"]:
        lines.append(f"\nPaper (Table 12, A100, TF32): ConvNeXt-T {PAPER_A100_TINY} images/s.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--allocator", choices=["keep", "default", "both"], default="keep",
                        help="glibc keeps freed memory (keep), the default allocator, or both, one after the other")
    parser.add_argument("--settings", help="comma-separated subset of the settings' names")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "performance")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    settings = CUDA_SETTINGS if torch.cuda.is_available() else CPU_SETTINGS
    if args.settings:
        unknown = set(args.settings.split(",")) - set(settings)
        if unknown:
            raise SystemExit(f"unknown setting(s) {sorted(unknown)}; choose from {list(settings)}")
        settings = {name: settings[name] for name in args.settings.split(",")}
    allocators = {"keep": [True], "default": [False], "both": [False, True]}[args.allocator]
    reports = []
    for title, setting in settings.items():
        for keep in allocators:
            spec = dict(dict(threads=args.threads) | setting, model=args.model, rounds=args.rounds,
                        warmup=args.warmup, keep_freed_memory=keep)
            print(f"{title}, keep freed memory: {keep} ...", file=sys.stderr, flush=True)
            reports.append((title, run_setting(spec)))
            rows = markdown(reports[-1:]).splitlines()[-len(reports[-1][1]["results"]):]
            print("\n".join(rows), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(reports)
    args.out.with_suffix(".md").write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps([dict(setting=t, **r) for t, r in reports], indent=2))
    print(table)


if __name__ == "__main__":
    main()
