"""`convnext detect`: Mask R-CNN / Faster R-CNN with a ConvNeXt backbone on COCO-format data (train, evaluate,
predict, and a built-in demo)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..tasks.detection.config import RECIPES, resolve_detect_config


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector (rerunning the same command resumes it)",
                       description="Train Mask R-CNN / Faster R-CNN with a ConvNeXt backbone on COCO-format data "
                       "(DIR/images + DIR/instances_*.json). Without --data: the built-in demo set.")
    p.add_argument("--data", metavar="DIR", help="COCO-format training set: a folder or its instances json")
    p.add_argument("--val-data", metavar="DIR", help="COCO-format validation set (box and mask AP every epoch)")
    p.add_argument("--recipe", choices=list(RECIPES), help="coco_3x (default with --data), coco_1x, or demo "
                   "(default without --data)")
    p.add_argument("--model", help="maskrcnn_convnext_{tiny,small,base} or fasterrcnn_convnext_* (default: the "
                   "recipe's, maskrcnn_convnext_tiny)")
    p.add_argument("--backbone", metavar="CKPT", help="classification weights for the backbone, any layout "
                   "(the official detection code starts from the non-EMA ImageNet-1K weights)")
    p.add_argument("--backbone-key", metavar="KEY", help="entry of CKPT to read, e.g. model_ema (default: model)")
    p.add_argument("--output", metavar="RUN_DIR", help="run folder (default runs/detect-<recipe>-<model>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per device and step")
    p.add_argument("--lr", type=float)
    p.add_argument("--workers", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--fit-to-run", action="store_true", help="fit the lr steps and warm-up to a run of other "
                   "length than the recipe's (every change is printed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting, e.g. "
                   "drop_path=0.2, layer_decay=0.9, model_args='{\"dims\": [...]}' (repeatable)")
    p.add_argument("--restart", action="store_true", help="replace the run in the output folder")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from ..tasks.detection.train import train_detector

    recipe = args.recipe or ("coco_3x" if args.data else "demo")
    config = resolve_detect_config(recipe, args.set, model=args.model, data=args.data, val_data=args.val_data,
                                   output=args.output, backbone=args.backbone, backbone_key=args.backbone_key,
                                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   workers=args.workers, device=args.device, fit_to_run=args.fit_to_run or None)
    summary = train_detector(config, resume=not args.restart)
    return 0 if summary["final"] is not None else 1


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO box and mask AP of a detector checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint of `convnext detect train`")
    p.add_argument("--data", required=True, metavar="DIR", help="COCO-format folder or instances json")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ..tasks.detection.data import CocoData
    from ..tasks.detection.evaluate import evaluate_detector, format_scores
    from ..tasks.detection.predict import load_detector
    from .root import _parse_device

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = _parse_device(args.device)
    model, classes, cat_ids = load_detector(args.checkpoint)
    data = CocoData(args.data, train=False)
    if data.cat_ids != cat_ids:
        raise UserError(f"{data.json_path} lists other categories ({data.cat_ids[:6]}) than the model was trained "
                        f"on ({cat_ids[:6]})")
    for line in data.notes():
        print(f"data: {line}", file=sys.stderr)
    metrics = evaluate_detector(model.to(device), data, device=device, batch_size=args.batch_size, progress=True)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"{args.checkpoint} on {data.json_path}: {metrics['images']} images, {metrics['detections']} detections")
    print(format_scores(metrics))
    for name in metrics["unreadable"]:
        print(f"skipped (unreadable): {name}", file=sys.stderr)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images: drawn pictures and COCO-format results json")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint of `convnext detect train`")
    p.add_argument("--output", metavar="DIR", help="write <name>.pred.png for each image here")
    p.add_argument("--score", type=float, default=0.5, help="lowest score kept (default 0.5)")
    p.add_argument("--annotations", metavar="JSON", help="a COCO json listing the images: its image ids are used")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="write the detections in COCO results format ('-': stdout)")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from ..files import atomic_write_text
    from ..tasks.classification.predict import find_images
    from ..tasks.detection.data import read_json
    from ..tasks.detection.predict import load_detector, predict_files
    from .root import _parse_device

    if not 0 <= args.score <= 1:
        raise UserError(f"--score must be in [0, 1], got {args.score}")
    files = find_images(args.inputs)
    image_ids = None
    if args.annotations:
        image_ids = {Path(i["file_name"]).name: i["id"] for i in read_json(Path(args.annotations))["images"]}
    device = _parse_device(args.device)
    model, classes, cat_ids = load_detector(args.checkpoint)
    records, errors = predict_files(model.to(device), files, classes, cat_ids,
                                    out_dir=Path(args.output) if args.output else None, score=args.score,
                                    image_ids=image_ids)
    for line in errors:
        print(f"convnext detect predict: skipped: {line}", file=sys.stderr)
    text = json.dumps(records) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    elif args.json:
        atomic_write_text(args.json, text)
    if args.json != "-":
        for position, path in enumerate(files, start=1):
            found = [r for r in records if r["image_id"] == (image_ids or {}).get(path.name, position)]
            names = ", ".join(f"{classes[cat_ids.index(r['category_id'])]} {r['score']:.2f}" for r in found)
            print(f"{path}: {len(found)} objects" + (f" ({names})" if names else ""))
        if args.output:
            print(f"pictures in {args.output}")
    return 1 if errors else 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small Mask R-CNN on real handwritten digits pasted on real photos "
                       "(a few minutes on a CPU), score it and draw its predictions")
    p.add_argument("--output", metavar="DIR", default="runs/detect-demo")
    p.add_argument("--restart", action="store_true")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..tasks.detection.demo import COUNTS, draw_demo, pretrain_backbone
    from ..tasks.detection.train import train_detector

    start = time.perf_counter()
    backbone = pretrain_backbone(Path(args.output) / "backbone", print)
    config = resolve_detect_config("demo", output=args.output, backbone=str(backbone))
    summary = train_detector(config, resume=not args.restart)
    figure = draw_demo(Path(args.output))
    ap = summary["final"]["box_ap"]
    print(f"demo: box AP {ap:.1f}, mask AP {summary['final'].get('mask_ap', 0):.1f} on {COUNTS['val']} held-out images "
          f"(synthetic composites, not COCO); predictions drawn in {figure}; {time.perf_counter() - start:.0f}s")
    return 0 if ap > 5 else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    what = "object detection and instance segmentation: Mask R-CNN with a ConvNeXt backbone on COCO-format data"
    p = sub.add_parser("detect", help=what, description=what)
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    for add in (_add_train, _add_evaluate, _add_predict, _add_demo):
        add(tasks)
