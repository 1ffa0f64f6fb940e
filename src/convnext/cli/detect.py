"""`convnext detect`: Mask R-CNN / Faster R-CNN with a ConvNeXt backbone on COCO-format data (train, evaluate,
predict, and a built-in demo)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import Commands, add_device, add_output, add_settings, commands, parse_device


def add_parser(sub: Commands) -> None:
    what = "object detection and instance segmentation: Mask R-CNN with a ConvNeXt backbone on COCO-format data"
    sub.add("detect", _tasks, help=what, description=what)


def _tasks(p: argparse.ArgumentParser) -> None:
    tasks = commands(p, dest="task", metavar="TASK")
    tasks.add("train", _train_args, help="train a detector (rerunning the same command resumes it)",
              description="Train Mask R-CNN / Faster R-CNN with a ConvNeXt backbone on COCO-format data "
              "(DIR/images + DIR/instances_*.json). Without --data: the built-in demo set.")
    tasks.add("evaluate", _evaluate_args, help="COCO box and mask AP of a detector checkpoint")
    tasks.add("predict", _predict_args, help="detect objects in images: drawn pictures and COCO-format results json")
    tasks.add("demo", _demo_args, help="same as `convnext demo detect`: train a small Mask R-CNN (or Cascade "
              "Mask R-CNN beside it) on real "
              "handwritten digits pasted on real photos (minutes on a CPU), score it and draw its predictions")


def _train_args(p: argparse.ArgumentParser) -> None:
    from ..tasks.detection.config import RECIPES

    p.add_argument("--data", metavar="DIR", help="COCO-format training set: a folder or its instances json")
    p.add_argument("--val-data", metavar="DIR", help="COCO-format validation set (box and mask AP every epoch)")
    p.add_argument("--recipe", choices=list(RECIPES), help="coco_3x (default with --data), coco_1x, or demo "
                   "(default without --data)")
    p.add_argument("--model", help="maskrcnn_convnext_{tiny,small,base}, fasterrcnn_convnext_* or "
                   "cascade_mask_rcnn_convnext_{tiny,small,base,large,xlarge} (default: the recipe's, "
                   "maskrcnn_convnext_tiny)")
    p.add_argument("--backbone", metavar="CKPT", help="classification weights for the backbone, any layout "
                   "(the official detection code starts from the non-EMA ImageNet-1K weights)")
    p.add_argument("--backbone-key", metavar="KEY", help="entry of CKPT to read, e.g. model_ema (default: model)")
    add_output(p, "run folder (default runs/detect-<recipe>-<model>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per device and step")
    p.add_argument("--lr", type=float)
    p.add_argument("--workers", type=int)
    add_device(p, "auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--fit-to-run", action=argparse.BooleanOptionalAction, default=None,
                   help="fit the lr steps and warm-up to a run of other length than the recipe's (default on; "
                   "only settings you do not give change, and every change is printed)")
    add_settings(p, "any other setting, e.g. drop_path=0.2, layer_decay=0.9, model_args='{\"dims\": [...]}' "
                 "(several after one --set; --set may repeat)")
    p.add_argument("--restart", action="store_true", help="replace the run in the output folder")
    p.set_defaults(func=_train, resumes=True)


def _train(args: argparse.Namespace) -> int:
    from ..tasks.detection.config import resolve_detect_config
    from ..tasks.detection.train import train_detector

    recipe = args.recipe or ("coco_3x" if args.data else "demo")
    # the device goes to the run's configuration as given: the runtime resolves it (auto, cuda:LOCAL_RANK)
    config = resolve_detect_config(recipe, args.settings, command_defaults={"fit_to_run": True}, model=args.model,
                                   data=args.data, val_data=args.val_data, output=args.output,
                                   backbone=args.backbone, backbone_key=args.backbone_key, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, workers=args.workers,
                                   device=args.device, fit_to_run=args.fit_to_run)
    summary = train_detector(config, resume=not args.restart)
    return 0 if summary["final"] is not None else 1


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint of `convnext detect train`")
    p.add_argument("--data", required=True, metavar="DIR", help="COCO-format folder or instances json")
    p.add_argument("--batch-size", type=int, default=2)
    add_device(p, "cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ..tasks.detection.data import CocoData
    from ..tasks.detection.evaluate import evaluate_detector, format_scores
    from ..tasks.detection.predict import load_detector

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = parse_device(args.device)
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
        print(f"skipped: {_why_skipped(data, name)}", file=sys.stderr)
    return 0


def _why_skipped(data, name: str) -> str:
    """The reason an evaluation image was left out (unreadable, or not the size the json gives), in its words."""
    for index in range(len(data)):
        if data.describe(index) == name:
            try:
                data.load(index)
            except UserError as err:
                return str(err)
    return name


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint of `convnext detect train`")
    add_output(p, "write <name>.pred.png for each image here", metavar="DIR")
    p.add_argument("--score", type=float, default=0.5, help="lowest score kept (default 0.5)")
    p.add_argument("--annotations", metavar="JSON", help="a COCO json listing the images: its image ids are used")
    add_device(p, "cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", metavar="FILE", help="write the detections in COCO results format ('-': stdout)")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from ..files import atomic_write_text
    from ..tasks.classification.predict import find_images
    from ..tasks.detection.data import read_json
    from ..tasks.detection.predict import load_detector, predict_files

    if not 0 <= args.score <= 1:
        raise UserError(f"--score must be in [0, 1], got {args.score}")
    files = find_images(args.inputs)
    image_ids = None
    if args.annotations:
        image_ids = {Path(i["file_name"]).name: i["id"] for i in read_json(Path(args.annotations))["images"]}
    device = parse_device(args.device)
    model, classes, cat_ids = load_detector(args.checkpoint)
    records, skipped = predict_files(model.to(device), files, classes, cat_ids,
                                     out_dir=Path(args.output) if args.output else None, score=args.score,
                                     image_ids=image_ids)
    for line in skipped.values():
        print(f"convnext detect predict: skipped: {line}", file=sys.stderr)
    text = json.dumps(records) + "\n"
    if args.json == "-":
        sys.stdout.write(text)
    elif args.json:
        atomic_write_text(args.json, text)
    if args.json != "-":
        for position, path in enumerate(files, start=1):
            if path in skipped:  # said above, on stderr
                continue
            found = [r for r in records if r["image_id"] == (image_ids or {}).get(path.name, position)]
            names = ", ".join(f"{classes[cat_ids.index(r['category_id'])]} {r['score']:.2f}" for r in found)
            print(f"{path}: {len(found)} objects" + (f" ({names})" if names else ""))
        if args.output:
            print(f"pictures in {args.output}")
    return 1 if skipped else 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEMO_MODEL, help=f"the detector to train: {DEMO_MODEL} (default) or "
                   "cascade_mask_rcnn_convnext_tiny (then Mask R-CNN is trained too, on the same data, and the two "
                   "are scored side by side)")
    add_output(p, "run folder (default runs/detect-demo, runs/detect-demo-cascade for the cascade)", metavar="DIR")
    p.add_argument("--restart", action="store_true")
    p.set_defaults(func=run_demo)


DEMO_MODEL = "maskrcnn_convnext_tiny"


def run_demo(args: argparse.Namespace) -> int:
    from ..tasks.detection.demo import COUNTS, draw_demo
    from ..tasks.detection.predict import load_detector

    if args.model not in (DEMO_MODEL, "cascade_mask_rcnn_convnext_tiny"):
        raise UserError(f"--model {args.model}: the demo trains {DEMO_MODEL} or cascade_mask_rcnn_convnext_tiny")
    start = time.perf_counter()
    output = Path(args.output or ("runs/detect-demo" if args.model == DEMO_MODEL else "runs/detect-demo-cascade"))
    results = _demo_runs(output, args.model, restart=args.restart)
    model, classes, _ = load_detector(output / "best.pt" if (output / "best.pt").is_file() else output / "last.pt")
    figure = draw_demo(output, model, classes)
    print(f"demo: on {COUNTS['val']} held-out images (synthetic composites, not COCO); predictions drawn in {figure}; "
          f"{time.perf_counter() - start:.0f}s")
    for name, final in results:
        print(f"  {name:<34} box AP {final['box_ap']:5.1f}  (AP50 {final['box_ap50']:5.1f})  mask AP "
              f"{final.get('mask_ap', 0):5.1f}")
    return 0 if results[0][1]["box_ap"] > 5 else 1


def _demo_runs(output: Path, model: str, *, restart: bool) -> list[tuple[str, dict]]:
    """The demo's runs: the backbone pre-trained once, the chosen detector in ``output``, and for the cascade
    Mask R-CNN in ``output/maskrcnn`` on the same images with the same recipe; each run's final scores."""
    from ..tasks.detection.config import resolve_detect_config
    from ..tasks.detection.demo import demo_data, pretrain_backbone
    from ..tasks.detection.train import train_detector

    backbone = pretrain_backbone(output / "backbone", print)
    config = resolve_detect_config("demo", output=str(output), backbone=str(backbone), model=model)
    results = [(model, train_detector(config, resume=not restart)["final"])]
    if model != DEMO_MODEL:
        train, val = demo_data(output / "data", print)
        print(f"demo: {DEMO_MODEL} on the same images with the same recipe, for comparison ({output / 'maskrcnn'})")
        config = resolve_detect_config("demo", output=str(output / "maskrcnn"), backbone=str(backbone),
                                       data=str(train), val_data=str(val))
        results.append((DEMO_MODEL, train_detector(config, resume=not restart)["final"]))
    return results
