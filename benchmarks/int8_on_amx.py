"""Can an INT8 ConvNeXt-T beat our bf16 path by 1.3x on an AMX CPU? Every INT8 toolchain at hand, one process.

It reuses `convnext.deploy.benchmark`'s private timing helpers on purpose: the same rounds and ratios as the
README's performance table. Contenders, timed in interleaved rounds (batch 32, the process's threads, glibc
keeping freed memory):
- ``bf16 fused``: ``fuse_for_inference(torch.bfloat16)``, the reference every ratio is taken against;
- ``INT8 OpenVINO``: what `convnext quantize` writes (NNCF, transformer mode, head float), calibrated here on
  random images (speed does not depend on the ranges);
- ``INT8 PT2E``: PyTorch's own flow, torchao's x86 Inductor quantizer over ``as_linears(model)`` (every
  pointwise layer, stem and downsampling convolution quantized; the depthwise convolutions stay float),
  run under bf16 autocast ("int8-mixed-bf16") through ``torch.compile`` with frozen weights. Needs ``torchao``
  (not a dependency of this package: ``pip install torchao``); skipped with the reason without it.
Then where the PT2E model's time goes (profiler, by operator): the INT8 matrix products with their
post-ops against everything around them, which INT8 does not make cheaper.

    .venv/bin/python benchmarks/int8_on_amx.py --rounds 5 --out benchmarks/results/int8_on_amx.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from convnext import as_linears, create_model
from convnext.deploy.allocator import keep_freed_memory
from convnext.deploy.benchmark import _calibration, _interleaved_rounds, _our_int8, _spread, machine_info, round_ratios

BATCH, RES, MODEL = 32, 224, "convnext_tiny"


def pt2e_int8(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None] | str:
    """The PT2E INT8 model, compiled, as a step over ``x``; or why it cannot run here."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed"
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(as_linears(model), (x,)).module(), quantizer)
        prepared(_calibration(RES)[:BATCH].contiguous(memory_format=torch.channels_last))  # the graph's batch
        compiled = torch.compile(convert_pt2e(prepared))

    def step() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            compiled(x)
    return step


def operator_shares(step: Callable[[], None]) -> list[tuple[str, float]]:
    """Each operator's share of the step's own CPU time (profiler, two steps), largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(t for _, t in events)
    return sorted(((key, 100 * t / total) for key, t in events), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    keep_freed_memory()
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=1000).eval()
    x = torch.randn(BATCH, 3, RES, RES).contiguous(memory_format=torch.channels_last)
    fused, x16 = model.fuse_for_inference(torch.bfloat16), x.to(torch.bfloat16)
    openvino = _our_int8(MODEL, RES)
    candidates = {"INT8 OpenVINO": openvino if isinstance(openvino, str) else lambda: openvino(x),
                  "INT8 PT2E": pt2e_int8(model, x)}
    steps: dict[str, Callable[[], None]] = {"bf16 fused": lambda: fused(x16)}
    steps |= {name: step for name, step in candidates.items() if not isinstance(step, str)}
    skipped = {name: why for name, why in candidates.items() if isinstance(why, str)}
    with torch.inference_mode():
        speeds = _interleaved_rounds(steps, "INT8 on AMX", BATCH, args.rounds, 2, torch.device("cpu"),
                                     time.perf_counter, lambda line: print(line, file=sys.stderr))
        shares = operator_shares(steps["INT8 PT2E"]) if "INT8 PT2E" in steps else None
    lines = _markdown(speeds, skipped, args.rounds)
    if shares:
        lines += ["", "Where INT8 PT2E's time goes (self CPU time, two steps):", ""]
        lines += [f"- {key}: {share:.1f}%" for key, share in shares[:5]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


def _markdown(speeds: dict[str, list[float]], skipped: dict[str, str], rounds: int) -> list[str]:
    info = machine_info(torch.device("cpu"))
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {info['cpu']}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; {MODEL} batch {BATCH} at {RES} px; "
             f"{rounds} interleaved rounds, images/s as median [min - max], ratios as medians of per-round ratios.",
             "", "| implementation | images/s | / bf16 fused |", "|---|---|---|"]
    for name, values in speeds.items():
        ratio = round_ratios(values, speeds["bf16 fused"])
        speed = _spread(values)
        lines.append(f"| {name} | {speed['median']:.1f} [{speed['min']:.1f} - {speed['max']:.1f}] | "
                     f"{ratio['median']:.2f}x [{ratio['min']:.2f} - {ratio['max']:.2f}] |")
    lines += [f"| {name} | skipped: {why} | |" for name, why in skipped.items()]
    return lines


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
