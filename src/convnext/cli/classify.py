"""`convnext demo` (run by `cli.demo`), `train`, `evaluate` and `predict`: image classification."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import Commands, add_device, add_output, add_settings, add_weights, parse_device, workers_within_cores

DEMO_TARGET = 97.0


def add_train(sub: Commands) -> None:
    sub.add("train", _train_args, help="train or fine-tune a model (rerunning the same command resumes it)")


def _train_args(p: argparse.ArgumentParser) -> None:
    from ..tasks.classification.config import RECIPES

    p.add_argument("--model", help="registered model name (default: the recipe's, convnext_tiny for in1k)")
    p.add_argument("--data", metavar="DIR", help="image folder, one sub-folder per class; DIR/train and DIR/val "
                   "are used when present (default: the built-in handwritten digits)")
    p.add_argument("--val-data", metavar="DIR", help="validation image folder (default: DIR/val when present)")
    add_output(p, "run folder for checkpoints, metrics.jsonl, summary.json and curves.png (default: "
               "runs/<recipe>-<model>)")
    p.add_argument("--recipe", choices=list(RECIPES), help="preset of the paper's settings (default: demo "
                   "without --data, finetune with --finetune, else in1k)")
    p.add_argument("--finetune", metavar="CKPT", help="start from these weights (any layout `load_checkpoint` "
                   "reads; a head with another class count starts fresh)")
    add_settings(p, "other settings of convnext.tasks.classification.config.TrainConfig, e.g. --set "
                 "layer_decay=0.8 ema=false (several after one --set; --set may repeat)")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the recipe's; may grow on resume)")
    p.add_argument("--batch-size", type=int, help="images per device per step")
    p.add_argument("--lr", type=float, help="peak learning rate at the recipe's reference batch (lr_batch), "
                   "scaled to the effective batch by lr_scaling (linear in the paper's recipes; a run fitted "
                   "to a small data set may use it as given: the run prints which)")
    p.add_argument("--res", type=int, help="training and evaluation resolution")
    p.add_argument("--seed", type=int, help="seed of the initial weights, data order and augmentation")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    add_device(p, "auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision: bf16, or fp16 with loss "
                   "scaling on GPUs without bf16")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--restart", action="store_true", help="start over even if RUN_DIR holds a checkpoint")
    p.set_defaults(func=_train, resumes=True)


def _train(args: argparse.Namespace) -> int:
    from ..tasks.classification.config import resolve_config
    from ..tasks.classification.train import train

    recipe = args.recipe or ("finetune" if args.finetune else "in1k" if args.data else "demo")
    fit = {"fit_to_run": True} if args.recipe is None and recipe != "demo" else None  # chosen for, not by, the user
    # the device goes to the run's configuration as given: the runtime resolves it (auto, cuda:LOCAL_RANK)
    config = resolve_config(recipe, args.settings, command_defaults=fit, model=args.model, data=args.data,
                            val_data=args.val_data, output=args.output, finetune=args.finetune, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, res=args.res, seed=args.seed,
                            workers=args.workers, device=args.device, amp=args.amp, compile=args.compile)
    train(config, resume=not args.restart)
    return 0


def add_evaluate(sub: Commands) -> None:
    sub.add("evaluate", _evaluate_args, help="top-1, top-5, loss and per-class accuracy of a checkpoint")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="weights of any supported layout")
    p.add_argument("--model", help="model the checkpoint holds (not needed for `convnext train` checkpoints, "
                   "which record it)")
    p.add_argument("--data", metavar="DIR", help="image folder, one sub-folder per class (DIR/val when present; "
                   "default: the held-out built-in digits)")
    p.add_argument("--ema", action="store_true", help="score the checkpoint's EMA weights")
    p.add_argument("--res", type=int, help="resolution (default: the training run's, else 224)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    add_device(p)
    _add_dtype(p, also="; scored beside the float32 model, with how often and how far the two disagree")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_evaluate)


def _print_metrics(metrics: dict) -> None:
    from ..tasks.classification.evaluate import describe_agreement

    print(f"{metrics['model']} ({metrics['checkpoint']}{', EMA' if metrics['ema'] else ''}) at "
          f"{metrics['res']}px, crop {metrics['crop_pct']}, {metrics['dtype']}: {metrics['count']} images")
    top5 = f"top-5 {metrics['top5']:.2f}%   " if len(metrics["classes"]) > 5 else ""  # with <= 5 classes: 100%
    print(f"  top-1 {metrics['top1']:.2f}%   {top5}loss {metrics['loss']:.4f}")
    if "agreement" in metrics:  # a bf16 evaluation: what the cast cost, image by image
        print(f"  {metrics['dtype']} against fp32: {describe_agreement(metrics['agreement'])}")
    if metrics["skipped"]:
        print(f"  {metrics['skipped']} unreadable images left out")
    print("  per-class top-1:")
    for name, acc in zip(metrics["classes"], metrics["per_class"], strict=True):
        print(f"    {name:<24} {'-' if acc is None else f'{acc:6.2f}%'}")


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from ..tasks.classification.evaluate import evaluate_checkpoint

    workers = workers_within_cores(args.workers)  # a negative count passes through, to be refused in one line
    metrics = evaluate_checkpoint(args.model, args.checkpoint, args.data, ema=args.ema, res=args.res,
                                  batch_size=args.batch_size, workers=workers,
                                  device=parse_device(args.device), dtype=getattr(torch, FLOAT_DTYPES[args.dtype]))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)
    return 0


def _check_demo_folder(folder: Path) -> None:
    """The demo always starts over, so it may replace only an earlier demo's run (built-in digits, demo recipe)."""
    from ..engine.checkpoints import LOCK_NAME
    from ..files import is_temp

    if not folder.is_dir() or all(p.name == LOCK_NAME or is_temp(p) for p in folder.iterdir()):
        return  # nothing, or what a killed demo left before its first file
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        ours = config.get("recipe") == "demo" and config.get("data") is None
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"{folder} holds something other than an earlier demo run, which the demo would replace: "
                        "name another --output")


def run_demo(args: argparse.Namespace) -> int:
    from ..tasks.classification.config import resolve_config
    from ..tasks.classification.evaluate import evaluate_checkpoint
    from ..tasks.classification.train import train

    start = time.perf_counter()
    _check_demo_folder(Path(args.output))
    config = resolve_config("demo", output=args.output)
    train(config, resume=False)
    metrics = evaluate_checkpoint(None, Path(args.output) / "last.pt")
    _print_metrics(metrics)
    ok = metrics["top1"] >= DEMO_TARGET
    print(f"demo: held-out top-1 {metrics['top1']:.2f}% on {metrics['count']} digit scans never trained on "
          f"(target >= {DEMO_TARGET:.0f}%: {'met' if ok else 'MISSED'}), {time.perf_counter() - start:.0f}s in all; "
          f"curves in {Path(args.output) / 'curves.png'}")
    return 0 if ok else 1


def add_predict(sub: Commands) -> None:
    sub.add("predict", _predict_args, help="classify image files or folders of images")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders (searched recursively)")
    add_weights(p)
    p.add_argument("--topk", type=int, help="classes shown per image (default 5, or all when the model has fewer)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line in index order (default: "
                   "the names of released weights' label set, else class indices)")
    add_device(p)
    _add_dtype(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_predict)


FLOAT_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _add_dtype(p: argparse.ArgumentParser, also: str = "") -> None:
    p.add_argument("--dtype", default="fp32", choices=list(FLOAT_DTYPES),
                   help="bf16: the fused model with its weights cast once to bf16, for CPUs with AMX/AVX-512-BF16 "
                   f"and GPUs{also} (default fp32)")


def _predict(args: argparse.Namespace) -> int:
    from ..tasks.classification.predict import class_labels, find_images
    from ..tasks.loading import load_model
    from ..weights.int8 import QuantizedModel

    for flag, value in (("--topk", args.topk), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    files = find_images(args.inputs)
    device = parse_device(args.device)
    import torch

    dtype = getattr(torch, FLOAT_DTYPES[args.dtype])
    model = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained).fuse_for_inference(dtype)
    model.to(device)
    precision = "int8" if isinstance(model, QuantizedModel) else args.dtype  # an INT8 file runs as it was made
    if args.topk is not None and args.topk > model.num_classes:
        raise UserError(f"--topk {args.topk}: the model has {model.num_classes} classes")
    args.topk = args.topk or min(5, model.num_classes)
    cfg = model.pretrained_cfg
    labels = class_labels(model.num_classes, args.classes, cfg.get("label_names"), cfg.get("label_set"))
    weights = args.checkpoint or f"pretrained {cfg.get('tag', args.pretrained)}"
    if not args.json:
        print(f"{model.model_name} ({weights}) | {cfg['input_size'][-1]}px, crop {cfg['crop_pct']}, "
              f"{cfg['interpolation']} | {device}, {precision} | {len(files)} file{'s' * (len(files) != 1)}\n")
    results, errors = _predictions(model, files, labels, args)
    if args.json:
        preprocessing = {k: v for k, v in cfg.items() if k != "label_names"}
        print(json.dumps(dict(model=model.model_name, weights=str(weights), num_classes=model.num_classes,
                              device=str(device), dtype=precision, preprocessing=preprocessing, results=results,
                              errors=errors), indent=2))
    if errors:
        print(f"convnext predict: {len(errors)} of {len(files)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _predictions(model, files: list[Path], labels: list[str], args: argparse.Namespace) -> tuple[list, list]:
    """Predict every file: printed as it comes (or collected for --json); unreadable files reported on stderr."""
    from tqdm import tqdm

    from ..tasks.classification.predict import format_prediction, predict, prediction_record

    unicode = (sys.stdout.encoding or "").lower().replace("-", "") in ("utf8", "utf16", "utf32")
    results, errors = [], []
    progress = tqdm(total=len(files), unit="img", file=sys.stderr, disable=None if args.json else True)
    for pred in predict(model, files, topk=args.topk, batch_size=args.batch_size):
        progress.update()
        if pred.error is not None:
            errors.append(prediction_record(pred, labels))
            print(f"convnext predict: skipped: {pred.error}", file=sys.stderr)
        elif args.json:
            results.append(prediction_record(pred, labels))
        else:
            print(format_prediction(pred, labels, unicode=unicode) + "\n", flush=True)
    progress.close()
    return results, errors
