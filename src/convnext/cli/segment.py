"""`convnext segment train|evaluate|predict`: UperNet semantic segmentation with the paper's ADE20K protocol."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import Commands, add_device, add_output, add_settings, commands, parse_device


def add_parser(sub: Commands) -> None:
    what = "semantic segmentation: UperNet on ConvNeXt, the paper's ADE20K protocol (train, evaluate, predict)"
    sub.add("segment", _actions, help=what, description=what)


def _actions(p: argparse.ArgumentParser) -> None:
    actions = commands(p, dest="action", metavar="ACTION")
    actions.add("train", _train_args, help="train UperNet (rerunning the same command resumes it)")
    actions.add("evaluate", _evaluate_args, help="mIoU, mAcc, aAcc and per-class IoU on a labelled folder")
    actions.add("predict", _predict_args, help="label maps (PNG) and colour overlays for images")


def _weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="CKPT", help="a `segment train` checkpoint, an official (mmseg) ADE20K "
                   "file, or a Hugging Face UperNet folder/file")
    p.add_argument("--model", help="e.g. upernet_convnext_tiny (needed for files that do not name it)")
    p.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                   help="released ADE20K weights of --model (ade20k, ade20k_in22k)")
    p.add_argument("--num-classes", type=int, help="classes (default: the checkpoint's)")
    p.add_argument("--multi-scale", action="store_true", help="also ratios 0.5-1.75 with flips (the paper's MS)")
    add_device(p, "cpu, cuda, cuda:1, ... (default cpu)", default="cpu")


def _train_args(p: argparse.ArgumentParser) -> None:
    from ..tasks.segmentation.config import SEG_RECIPES

    p.add_argument("--data", metavar="DIR", help="an ADE20K tree (images/training, annotations/training, ...) or "
                   "a folder with images/ and masks/ (optionally under train/ and val/)")
    p.add_argument("--val-data", metavar="DIR", help="validation folder (default: the validation split of --data)")
    p.add_argument("--recipe", choices=list(SEG_RECIPES), help="ade20k (default), ade20k_640 (22K models), demo")
    p.add_argument("--model", help="upernet_convnext_{tiny,small,base,large,xlarge} (default tiny)")
    p.add_argument("--pretrained", metavar="TAG|FILE", help="ImageNet weights for the backbone: a tag of the "
                   "backbone's released weights (in1k, in22k, ...) or a checkpoint file")
    p.add_argument("--num-classes", type=int, help="classes of the masks (default 150, ADE20K)")
    p.add_argument("--iters", type=int, help="iterations (default 160000; a shorter run fits warm-up and "
                   "evaluation to its length and says so)")
    p.add_argument("--batch-size", type=int, help="images per step and process (default 16)")
    p.add_argument("--lr", type=float, help="peak lr (default 1e-4)")
    add_output(p, "run folder (default runs/segment-<recipe>)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 4)")
    add_device(p, "cpu, cuda, ... (default: cuda when available)")
    add_settings(p, "other settings of convnext.tasks.segmentation.config.SegConfig, e.g. --set crop=640 "
                 "aux_weight=0.4")
    p.add_argument("--restart", action="store_true", help="replace the run in the output folder")
    p.add_argument("--demo", action="store_true", help="same as `convnext demo segment`: scenes cut from real "
                   "photos, a small UperNet trained from scratch on the CPU, then evaluated single- and multi-scale")
    p.set_defaults(func=_train, resumes=True)


def _train(args: argparse.Namespace) -> int:
    if args.demo:
        ignored = [f"--{name.replace('_', '-')}" for name in ("data", "val_data", "recipe", "model", "pretrained",
                                                              "num_classes", "batch_size", "lr", "workers")
                   if getattr(args, name) is not None] + (["--set"] if args.settings else [])
        if ignored:
            raise UserError(f"--demo trains the built-in demo as it is (--iters, --output, --device and --restart "
                            f"apply): leave out {', '.join(ignored)}, or train the demo recipe on your data with "
                            "--recipe demo --data DIR")
        return run_demo(args)
    from ..tasks.segmentation.config import seg_config
    from ..tasks.segmentation.train import train_segmentation

    # the device goes to the run's configuration as given: the runtime resolves it (auto, cuda:LOCAL_RANK)
    config = seg_config(args.recipe or "ade20k", args.settings, data=args.data, val_data=args.val_data,
                        model=args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                        iters=args.iters, batch_size=args.batch_size, lr=args.lr, output=args.output,
                        workers=args.workers, device=args.device)
    summary = train_segmentation(config, resume=not args.restart)
    if summary["best_miou"] is not None:
        print(f"best validation mIoU {summary['best_miou']:.2f} (iteration {summary['best_iter']}); run folder "
              f"{config.output}")
    else:
        print(f"done: no validation set, so no best.pt; the trained model is {Path(config.output) / 'last.pt'}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """`convnext demo segment` (and `segment train --demo`): the built-in demo, with --iters, --output, --device
    and --restart."""
    from ..tasks.segmentation.demo import run_demo as run

    return run(args.output or "runs/segment-demo", restart=args.restart, device=args.device or "cpu",
               iters=args.iters)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    _weights_args(p)
    p.add_argument("--data", metavar="DIR", required=True, help="ADE20K tree or images/ + masks/ folder")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split of --data (default val)")
    p.add_argument("--mode", choices=("slide", "whole"), default="slide",
                   help="sliding window (default: crop 512, stride 341) or the whole resized image")
    p.add_argument("--json", action="store_true", help="machine-readable results, per-class IoU included")
    p.set_defaults(func=_evaluate)


def _score_line(label: str, scores: dict) -> str:
    from ..tasks.segmentation.metrics import score_text

    line = "  ".join(f"{name} {score_text(scores[key], 6)}" for name, key in
                     (("mIoU", "miou"), ("mAcc", "macc"), ("aAcc", "aacc")))
    return f"{label:<28} {line}" + ("  (every mask pixel is ignored: no labelled pixel to score)"
                                   if scores["miou"] is None else "")


def _evaluate(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.data import segmentation_folder
    from ..tasks.segmentation.evaluate import evaluate_segmentation
    from ..tasks.segmentation.predict import load_segmentation_model

    source = segmentation_folder(args.data, args.split)  # a wrong folder fails before any download
    device = parse_device(args.device)
    model, settings = load_segmentation_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                                              num_classes=args.num_classes)
    settings.mode = args.mode
    model.to(device)
    results = {}
    for multi in (False, True) if args.multi_scale else (False,):
        start = time.perf_counter()
        results["multi_scale" if multi else "single_scale"] = scores = evaluate_segmentation(
            model, source, model.num_classes, settings=settings, multi_scale=multi, device=device)
        scores["time_s"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{len(source)} images, {model.num_classes} classes, {settings.mode} (crop {settings.crop}, stride "
          f"{settings.stride}, scale {settings.scale[0]}x{settings.scale[1]})")
    _print_scores(results)
    return 0


def _print_scores(results: dict) -> None:
    for key, scores in results.items():
        label = "single-scale" if key == "single_scale" else "multi-scale 0.5-1.75 + flip"
        print(_score_line(label, scores) + f"  ({scores['time_s']:.1f}s)")
    ious = results["single_scale"]["iou"]
    print("per-class IoU (single-scale): " + ", ".join(f"{k}: {v:.1f}" for k, v in enumerate(ious) if v is not None))
    skipped = results["single_scale"]["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} unreadable file{'s' * (len(skipped) != 1)}: " + "; ".join(skipped[:5]))


def _predict_args(p: argparse.ArgumentParser) -> None:
    _weights_args(p)
    p.add_argument("inputs", nargs="+", help="images or folders of images")
    add_output(p, "where to write (default predictions/)", metavar="DIR", default="predictions")
    p.set_defaults(func=_predict)


def _images(inputs: list[str]) -> list[Path]:
    from ..files import natural_key
    from ..tasks.segmentation.data import IMAGE_SUFFIXES

    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted((p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        elif item.is_file():
            found.append(item)
        else:
            raise UserError(f"not found: {item}")
    if not found:
        raise UserError(f"no images in {', '.join(inputs)}")
    return found


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.segmentation.predict import load_segmentation_model, predict_folder

    images = _images(args.inputs)
    device = parse_device(args.device)
    model, settings = load_segmentation_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
                                              num_classes=args.num_classes)
    model.to(device)
    results = predict_folder(model, images, args.output, settings, num_classes=model.num_classes,
                             multi_scale=args.multi_scale, device=device)
    failed = [row for row in results if "error" in row]
    for row in results:
        if "error" in row:
            print(f"convnext segment predict: skipped {row['image']}: {row['error']}", file=sys.stderr)
        else:
            print(f"{row['image']} -> {row['overlay']}")
    print(f"wrote label maps and overlays of {len(results) - len(failed)} images to {args.output}")
    if failed:  # as classification's predict: a run that could not read everything says so in its status
        print(f"convnext segment predict: {len(failed)} of {len(results)} files could not be read", file=sys.stderr)
        return 1
    return 0
