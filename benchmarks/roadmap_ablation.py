"""Rerun the paper's roadmap ablation (Fig. 2) on the built-in digits: every step, one short schedule.

Each ``roadmap_<step>`` trains with the ``demo`` recipe (32 px, no Mixup/CutMix/EMA) at 1/``--width-divisor``
of its width, through the same `convnext.tasks.classification.train.train` that ``convnext train`` runs. The measured
validation top-1 is written beside the paper's ImageNet-1K top-1, to JSON and to a markdown table.

Digits are 8x8 scans with 359 validation images (one image = 0.28 points), so a step's measured effect is
within seed noise unless ``--seeds`` shows otherwise: this checks that every step trains and lands where a
small convnet should, not the paper's ranking, which needs ImageNet and 300 epochs.

    .venv/bin/python benchmarks/roadmap_ablation.py --epochs 6 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from convnext.models import build_model
from convnext.models.complexity import count_macs_and_activations, count_params
from convnext.models.roadmap import STEPS
from convnext.tasks.classification.config import resolve_config
from convnext.tasks.classification.train import train


def run_step(step, args, seed: int) -> dict:
    dims = [d // args.width_divisor for d in step.config.dims]
    config = resolve_config("demo", model=step.model_name, model_args={"dims": dims}, epochs=args.epochs,
                            seed=seed, output=str(Path(args.runs) / f"{step.name}_seed{seed}"))
    summary = train(config, log=lambda text: None)  # a rerun resumes, or returns at once if finished
    model = build_model(step.model_name, dims=dims, num_classes=10)
    macs, _ = count_macs_and_activations(model, config.res)
    return dict(params=count_params(model), mmacs=macs / 1e6, top1=summary["final"]["val_top1"],
                time_s=summary["time_s"])


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"# Roadmap ablation on the built-in digits ({args.epochs} epochs, 32 px, width / "
             f"{args.width_divisor}, seeds {args.seeds})", "",
             "| step | change | params | MMACs | digits top-1 (ours) | paper IN-1K top-1 | train s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = f" ± {r['top1_std']:.1f}" if r["top1_std"] is not None else ""
        lines.append(f"| {r['model']} | {r['change']} | {r['params'] / 1e6:.2f}M | {r['mmacs']:.1f} | "
                     f"{r['top1']:.1f}{spread} | {r['paper_top1']:.1f} | {r['time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--width-divisor", type=int, default=4, help="train each step at dims / N (default 4)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per step; mean and std are reported")
    parser.add_argument("--steps", nargs="*", help="step names (default: all)")
    parser.add_argument("--runs", default="runs/roadmap_ablation", help="run folders (resumable)")
    parser.add_argument("--out", default="benchmarks/results/roadmap_ablation", help="writes OUT.json, OUT.md")
    args = parser.parse_args()
    steps = [s for s in STEPS if not args.steps or s.name in args.steps]
    rows = []
    for step in steps:
        start = time.perf_counter()
        runs = [run_step(step, args, seed) for seed in range(args.seeds)]
        top1 = [r["top1"] for r in runs]
        rows.append(dict(step=step.name, model=step.model_name, change=step.label, params=runs[0]["params"],
                         mmacs=runs[0]["mmacs"], top1=statistics.mean(top1), top1_runs=top1,
                         top1_std=statistics.stdev(top1) if len(top1) > 1 else None,
                         paper_top1=step.paper_top1, time_s=sum(r["time_s"] for r in runs)))
        print(f"{step.model_name:<32} digits top-1 {rows[-1]['top1']:5.1f}  paper {step.paper_top1:.1f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(epochs=args.epochs, width_divisor=args.width_divisor, seeds=args.seeds, recipe="demo", res=32)
    out.with_suffix(".json").write_text(json.dumps(dict(settings=settings, steps=rows), indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, args))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
