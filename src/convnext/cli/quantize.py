"""`convnext quantize`: post-training static INT8 of a trained or released model, with its accuracy cost."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from torch import nn

from ..deploy.quantize import (
    BACKENDS,
    DEFAULT_SAMPLES,
    SUFFIX,
    calibration_images,
    compare,
    load_quantized,
    quantize,
    report_lines,
    require_backend,
    save_quantized,
)
from ..errors import UserError
from ..tasks.classification.evaluate import evaluate_model
from ..tasks.loading import load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    what = ("post-training static INT8 for CPUs (OpenVINO, calibrated with NNCF on your images); prints how far "
            "it strays from the float model, and the top-1 drop with --val")
    p = sub.add_parser("quantize", help=what, description=what)
    p.add_argument("--checkpoint", metavar="CKPT", help="weights of any supported layout (a `convnext train` "
                   "checkpoint names its model)")
    p.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                   help="released weights of --model instead (the default tag when TAG is left out)")
    p.add_argument("--model", help="model name (not needed with a `convnext train` checkpoint)")
    p.add_argument("--calibrate", required=True, metavar="DIR",
                   help="folder of images to measure activation ranges on (searched recursively)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"calibration images used, spread over the folder (default {DEFAULT_SAMPLES})")
    p.add_argument("--val", metavar="DIR", help="class-folder images (DIR/val when present) to score float32 "
                   "and INT8 top-1 on")
    p.add_argument("--out", required=True, metavar=f"FILE{SUFFIX}", help=f"the INT8 model: FILE{SUFFIX} and "
                   "FILE.bin (OpenVINO IR, with class names and preprocessing inside)")
    p.add_argument("--backend", default="openvino", help=f"quantization toolchain: {', '.join(BACKENDS)} "
                   "(default openvino)")
    p.add_argument("--int8-head", action="store_true", help="quantize the classifier head too (default: float)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _float_model(args: argparse.Namespace) -> nn.Module:
    """The model to quantize, after every check that needs no work."""
    require_backend(args.backend)
    out = Path(args.out)
    if out.suffix != SUFFIX or not out.parent.is_dir():
        raise UserError(f"--out must be FILE{SUFFIX} in an existing folder, got {out}")
    if args.checkpoint is None and not args.pretrained:
        raise UserError("give --checkpoint CKPT, or --model with --pretrained [TAG]")
    if Path(args.checkpoint or "").suffix == SUFFIX:
        raise UserError(f"{args.checkpoint} is already an INT8 model; quantize its float checkpoint")
    return load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = _float_model(args)
    config = {k: v for k, v in model.pretrained_cfg.items() if k != "label_names"}
    images, skipped = calibration_images(args.calibrate, config, samples=args.samples)
    for problem in skipped:
        print(f"convnext quantize: skipped: {problem}", file=sys.stderr)
    float_val = evaluate_model(model, args.val) if args.val else None  # a bad --val stops here, before any work
    print(f"{model.model_name}: calibrating on {len(images)} images of {args.calibrate} ({args.backend})",
          file=sys.stderr)
    quantized = quantize(model, images, backend=args.backend, keep_head_float=not args.int8_head)
    report = dict(model=model.model_name, out=args.out, calibration=compare(model, quantized, images),
                  skipped=len(skipped))
    accuracy = None
    if float_val is not None:
        accuracy = [("float32", float_val), ("int8", evaluate_model(quantized, args.val))]
        report["val"] = {name: {k: m[k] for k in ("top1", "top5", "count")} for name, m in accuracy}
        report["val"]["drop"] = accuracy[0][1]["top1"] - accuracy[1][1]["top1"]
    out = save_quantized(quantized, args.out)  # written once everything has passed
    check = compare(quantized, load_quantized(out), images[:8])
    if check["max_logit_diff"] > 0:
        raise UserError(f"{out} read back gives other logits than the model written (max diff "
                        f"{check['max_logit_diff']:.2e})")
    report["bytes"] = out.stat().st_size + out.with_suffix(".bin").stat().st_size
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for line in report_lines(report["calibration"], accuracy):
        print(line)
    print(f"wrote {out} + {out.with_suffix('.bin').name} ({report['bytes'] / 2**20:.1f} MB) in "
          f"{time.perf_counter() - start:.0f}s; run it with `convnext predict --checkpoint {out} IMAGES`")
    return 0
