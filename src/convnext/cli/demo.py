"""`convnext demo [TASK]`: every task's built-in demo under one spelling.

One parser holds the options of all four demos; an option a demo has no use for is refused in one line rather
than ignored. The older spellings (`segment train --demo`, `detect demo`, `robustness --demo`) still run the same
code, so scripts written against them keep working.
"""

from __future__ import annotations

import argparse
import textwrap

from ..errors import UserError
from .classify import run_demo as run_classify_demo
from .common import Commands, add_device, add_output
from .detect import DEMO_MODEL
from .detect import run_demo as run_detect_demo
from .robustness import add_run_options
from .robustness import run_demo as run_robustness_demo
from .segment import run_demo as run_segment_demo

# The options each demo reads (dests); the rest of the parser's options are refused for it.
DEMO_OPTIONS = {
    "classify": ("output",),
    "segment": ("output", "restart", "iters", "device"),
    "detect": ("output", "restart", "model"),
    "robustness": ("output", "restart", "device", "batch_size", "workers", "json", "plot", "corruptions",
                   "severities", "seed"),
}
WHAT = {
    "classify": "a slim ConvNeXt trained on the built-in handwritten digits, then evaluated (the default)",
    "segment": "a small UperNet trained from scratch on scenes cut from real photos, evaluated single- and "
               "multi-scale",
    "detect": "a slim Mask R-CNN (or Cascade Mask R-CNN beside it) trained on real digits pasted on real photos",
    "robustness": "the digits demo's ConvNeXt and a ResNet baseline scored on corrupted held-out digits (mCE)",
}


def add_demo(sub: Commands) -> None:
    what = "run a task's built-in demo on real data: " + ", ".join(DEMO_OPTIONS) + " (default classify)"
    tasks = "\n".join(textwrap.fill(f"{name:<11} {text}; options: {_flags(name)}", 100, initial_indent="  ",
                                     subsequent_indent=" " * 14) for name, text in WHAT.items())
    sub.add("demo", _args, help=what, description=f"{what}\n\n{tasks}",
            formatter_class=argparse.RawDescriptionHelpFormatter)


def _flags(task: str) -> str:
    return " ".join(f"--{dest.replace('_', '-')}" for dest in DEMO_OPTIONS[task])


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", nargs="?", default="classify", choices=list(DEMO_OPTIONS), metavar="TASK",
                   help="classify (default), segment, detect or robustness")
    add_output(p, "run folder (default runs/demo, runs/segment-demo, runs/detect-demo[-cascade], "
               "runs/robustness-demo)", metavar="DIR")
    p.add_argument("--restart", action="store_true", help="start over instead of reusing what the folder holds "
                   "(segment, detect, robustness; classify always starts over)")
    p.add_argument("--iters", type=int, help="segment: training iterations (default: the demo's 400)")
    add_device(p, "segment, robustness: cpu, cuda, ... (default cpu for segment)")
    p.add_argument("--model", help=f"detect: {DEMO_MODEL} (default) or cascade_mask_rcnn_convnext_tiny")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = [dest for dest in ("output", "restart", "iters", "device", "model", "batch_size", "workers", "json",
                               "plot", "corruptions", "severities", "seed")
             if (value := getattr(args, dest)) is not None and value is not False
             and dest not in DEMO_OPTIONS[args.task]]
    if given:
        flags = ", ".join(f"--{dest.replace('_', '-')}" for dest in given)
        raise UserError(f"the {args.task} demo has no use for {flags} (its options: {_flags(args.task)})")
    if args.task == "classify":
        args.output = args.output or "runs/demo"
        return run_classify_demo(args)
    if args.task == "segment":
        return run_segment_demo(args)
    if args.task == "detect":
        args.model = args.model or DEMO_MODEL
        return run_detect_demo(args)
    return run_robustness_demo(args)
