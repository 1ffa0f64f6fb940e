"""The `convnext` command line: one sub-command per task, user errors printed without a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ..deploy import benchmark, export
from ..deploy.allocator import keep_freed_memory
from ..errors import UserError
from ..models.complexity import model_info
from ..models.convnext import build_model, list_models
from ..models.roadmap import measure_steps, plot_roadmap
from ..tasks.classification.config import RECIPES, resolve_config
from ..tasks.classification.evaluate import evaluate_checkpoint
from ..tasks.classification.predict import class_labels, find_images, format_prediction, predict, prediction_record
from ..tasks.classification.train import train
from ..tasks.loading import load_model
from ..weights import list_pretrained
from . import detect as cli_detect
from . import quantize as cli_quantize
from . import robustness as cli_robustness
from . import segment as cli_segment


def _meta_model(name: str, **overrides) -> torch.nn.Module:
    """Build an architecture without allocating weights: enough to count parameters and MACs."""
    with torch.device("meta"):
        return build_model(name, **overrides)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models and their released weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext_*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(args.pattern):
        params = sum(p.numel() for p in _meta_model(name).parameters())
        rows.append(dict(model=name, params=params, pretrained=[w.tag for w in list_pretrained(name)]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<36} {'params':>9}  pretrained tags")
    for row in rows:
        print(f"{row['model']:<36} {row['params'] / 1e6:>8.2f}M  {', '.join(row['pretrained']) or '-'}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters, GMACs, activations and released weights of a model")
    p.add_argument("model")
    p.add_argument("--res", type=_resolution, help="input resolution, a side or HxW (default 224; 512x2048 for "
                   "segmentation models, the paper's Table 4; detectors: their test size 1280x800)")
    p.add_argument("--num-classes", type=int, help="classes of the head (default 1000; 150 for segmentation, "
                   "91 for detectors)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)


def _resolution(text: str) -> int | tuple[int, int]:
    """``224`` or ``512x2048``."""
    try:
        sides = [int(side) for side in text.lower().split("x")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 32:
        raise argparse.ArgumentTypeError(f"expected a side or HxW of at least 32, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def _info(args: argparse.Namespace) -> int:
    dense = args.model.startswith("upernet_")  # the paper counts segmentation FLOPs at 512x2048, 150 classes
    args.res = args.res or ((512, 2048) if dense else 224)
    classes = args.num_classes or (150 if dense else None)
    model = _meta_model(args.model, **({} if classes is None else {"num_classes": classes}))
    # a detector counts itself at its own test size (1280x800), on a real forward
    info = dict(model=args.model, **(model.complexity() if hasattr(model, "complexity") else
                                     model_info(model, args.res)))
    info["pretrained"] = [
        dict(tag=w.tag, res=w.res, num_classes=w.num_classes, top1=w.top1, crop_pct=w.data_config["crop_pct"],
             interpolation=w.data_config["interpolation"], url=w.url, hf_hub_id=w.hf_hub_id)
        for w in list_pretrained(args.model)
    ]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    res = info["res"]
    size = res if isinstance(res, str) else "x".join(map(str, (res, res) if isinstance(res, int) else res))
    print(f"{args.model} at {size}")
    print(f"  parameters   {info['params']:,}")
    print(f"  GMACs        {info['gmacs']:.2f}  (what the paper's tables call FLOPs)")
    if "activations_m" in info:
        print(f"  activations  {info['activations_m']:.2f} M")
    if info["pretrained"]:
        print(f"  pretrained weights{' (ADE20K)' if dense else ' (ImageNet-1K top-1)'}:")
        for w in info["pretrained"]:
            top1 = "" if dense else (f"{w['top1']:.1f}  " if w["top1"] is not None else "  -   ")
            print(f"    {w['tag']:<20} {w['res']}px  {top1}{w['num_classes']} classes  crop {w['crop_pct']}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model (rerunning the same command resumes it)")
    p.add_argument("--model", help="registered model name (default: the recipe's, convnext_tiny for in1k)")
    p.add_argument("--data", metavar="DIR", help="image folder, one sub-folder per class; DIR/train and DIR/val "
                   "are used when present (default: the built-in handwritten digits)")
    p.add_argument("--val-data", metavar="DIR", help="validation image folder (default: DIR/val when present)")
    p.add_argument("--output", metavar="RUN_DIR", help="run folder for checkpoints, metrics.jsonl, summary.json "
                   "and curves.png (default: runs/<recipe>-<model>)")
    p.add_argument("--recipe", choices=list(RECIPES), help="preset of the paper's settings (default: demo "
                   "without --data, finetune with --finetune, else in1k)")
    p.add_argument("--finetune", metavar="CKPT", help="start from these weights (any layout `load_checkpoint` "
                   "reads; a head with another class count starts fresh)")
    p.add_argument("--set", dest="settings", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="other settings of convnext.tasks.classification.config.TrainConfig, e.g. --set "
                   "layer_decay=0.8 ema=false "
                   "(several after one --set; --set may repeat)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per device per step")
    p.add_argument("--lr", type=float, help="peak learning rate at the recipe's reference batch (lr_batch); "
                   "scaled linearly to the effective batch")
    p.add_argument("--res", type=int, help="training and evaluation resolution")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision: bf16, or fp16 with loss "
                   "scaling on GPUs without bf16")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--restart", action="store_true", help="start over even if RUN_DIR holds a checkpoint")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    recipe = args.recipe or ("finetune" if args.finetune else "in1k" if args.data else "demo")
    fit = ["fit_to_run=true"] if args.recipe is None and recipe != "demo" else []
    config = resolve_config(recipe, fit + args.settings, model=args.model, data=args.data, val_data=args.val_data,
                            output=args.output, finetune=args.finetune, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, res=args.res, seed=args.seed,
                            workers=args.workers, device=args.device, amp=args.amp, compile=args.compile)
    train(config, resume=not args.restart)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1, top-5, loss and per-class accuracy of a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="weights of any supported layout")
    p.add_argument("--model", help="model the checkpoint holds (not needed for `convnext train` checkpoints, "
                   "which record it)")
    p.add_argument("--data", metavar="DIR", help="image folder, one sub-folder per class (DIR/val when present; "
                   "default: the held-out built-in digits)")
    p.add_argument("--ema", action="store_true", help="score the checkpoint's EMA weights")
    p.add_argument("--res", type=int, help="resolution (default: the training run's, else 224)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_evaluate)


def _print_metrics(metrics: dict) -> None:
    print(f"{metrics['model']} ({metrics['checkpoint']}{', EMA' if metrics['ema'] else ''}) at "
          f"{metrics['res']}px, crop {metrics['crop_pct']}: {metrics['count']} images")
    top5 = f"top-5 {metrics['top5']:.2f}%   " if len(metrics["classes"]) > 5 else ""  # with <= 5 classes: 100%
    print(f"  top-1 {metrics['top1']:.2f}%   {top5}loss {metrics['loss']:.4f}")
    if metrics["skipped"]:
        print(f"  {metrics['skipped']} unreadable images left out")
    print("  per-class top-1:")
    for name, acc in zip(metrics["classes"], metrics["per_class"], strict=True):
        print(f"    {name:<24} {'-' if acc is None else f'{acc:6.2f}%'}")


def _evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_checkpoint(args.model, args.checkpoint, args.data, ema=args.ema, res=args.res,
                                  batch_size=args.batch_size, workers=args.workers,
                                  device=_parse_device(args.device))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small ConvNeXt on the built-in handwritten digits, then evaluate it")
    p.add_argument("--output", default="runs/demo", metavar="RUN_DIR", help="run folder (default runs/demo; "
                   "the demo always starts over)")
    p.set_defaults(func=_demo)


DEMO_TARGET = 97.0


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    config = resolve_config("demo", output=args.output)
    train(config, resume=False)
    metrics = evaluate_checkpoint(None, Path(args.output) / "last.pt")
    _print_metrics(metrics)
    ok = metrics["top1"] >= DEMO_TARGET
    print(f"demo: held-out top-1 {metrics['top1']:.2f}% on {metrics['count']} digit scans never trained on "
          f"(target >= {DEMO_TARGET:.0f}%: {'met' if ok else 'MISSED'}), {time.perf_counter() - start:.0f}s in all; "
          f"curves in {Path(args.output) / 'curves.png'}")
    return 0 if ok else 1


def _add_weights(p: argparse.ArgumentParser) -> None:
    """--model and where its weights come from, as `predict.load_model` takes them."""
    p.add_argument("--model", help="model name, e.g. convnext_tiny or convnext_tiny.in22k_ft_in1k (not needed "
                   "with a checkpoint `convnext train` wrote: it records its model)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", metavar="CKPT", help="weights file of any supported layout; its head "
                         "decides the number of classes")
    weights.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                         help="released weights (the model's default tag when TAG is left out)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files or folders of images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders (searched recursively)")
    _add_weights(p)
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line in index order (default: "
                   "the names of released weights' label set, else class indices)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_predict)


def _parse_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"invalid --device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def _predict(args: argparse.Namespace) -> int:
    files = find_images(args.inputs)
    device = _parse_device(args.device)
    model = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained).fuse_for_inference()
    model.to(device)
    cfg = model.pretrained_cfg
    labels = class_labels(model.num_classes, args.classes, cfg.get("label_names"), cfg.get("label_set"))
    weights = args.checkpoint or f"pretrained {cfg.get('tag', args.pretrained)}"
    if not args.json:
        print(f"{model.model_name} ({weights}) | {cfg['input_size'][-1]}px, crop {cfg['crop_pct']}, "
              f"{cfg['interpolation']} | {device} | {len(files)} file{'s' * (len(files) != 1)}\n")
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
    if args.json:
        preprocessing = {k: v for k, v in cfg.items() if k != "label_names"}
        print(json.dumps(dict(model=model.model_name, weights=str(weights), num_classes=model.num_classes,
                              preprocessing=preprocessing, results=results, errors=errors), indent=2))
    if errors:
        print(f"convnext predict: {len(errors)} of {len(files)} files could not be read", file=sys.stderr)
        return 1
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model as ONNX, TorchScript, a torch.export program or "
                       "safetensors, and check the file against PyTorch")
    _add_weights(p)
    p.add_argument("--format", required=True, choices=export.FORMATS,
                   help="onnx (opset >= 17, native LayerNormalization), torchscript, pt2 (torch.export) or "
                   "safetensors (weights + metadata)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (atomically)")
    p.add_argument("--res", type=int, help="input resolution of the exported graph (default: the weights')")
    p.add_argument("--opset", type=int, default=export.ONNX_OPSET,
                   help=f"ONNX opset, at least {export.MIN_ONNX_OPSET} (default {export.ONNX_OPSET})")
    p.add_argument("--script", action="store_true", help="TorchScript: script instead of trace")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                   help="export the inference-fused model (LayerNorm affine and layer scale folded into the "
                   "pointwise weights; default) or the model as trained; safetensors is never fused")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    model = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained)
    report = export.export_model(model, args.out, args.format, res=args.res, opset=args.opset, script=args.script,
                                 fuse=args.fuse)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        what = {"onnx": f"ONNX opset {args.opset}, {report.get('layer_norm_nodes')} LayerNormalization nodes",
                "torchscript": f"TorchScript ({report.get('torchscript')})", "pt2": "torch.export program",
                "safetensors": "weights and metadata"}[args.format]
        if args.format != "safetensors":
            what += f", {'fused' if report['fused'] else 'unfused'}, input (batch, {model.in_chans}, " \
                    f"{report['res']}, {report['res']})"
        print(f"wrote {args.out} ({report['bytes'] / 1e6:.1f} MB): {report['model']}, {what}")
        runtime = "onnxruntime" if args.format == "onnx" else "reloaded file"
        print(f"check: {runtime} vs PyTorch on a batch of {report['check_batch']}: max abs difference "
              f"{report['max_abs_diff']:.2e} (float32; tolerance {export.TOLERANCE:.0e}) "
              f"{'OK' if report['passed'] else 'FAILED'}")
    return 0 if report["passed"] else 1


def _add_roadmap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("roadmap", help="the paper's ResNet-50 -> ConvNeXt-T steps: parameters, GMACs, paper "
                       "accuracy, and its Figure 2")
    p.add_argument("--res", type=int, default=224, help="input resolution for our GMACs (default 224)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE", help="draw the Figure-2-style bar chart (.png, .pdf or .svg)")
    p.set_defaults(func=_roadmap)


def _roadmap(args: argparse.Namespace) -> int:
    if args.res < 32:
        raise UserError(f"--res must be at least 32 (the networks downsample 32x), got {args.res}")
    rows = measure_steps(args.res)
    if args.plot:
        plot_roadmap(rows, args.plot)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<32} {'change':<26} {'params':>8} {'GMACs':>6}  {'paper GFLOPs':>12} {'paper top-1':>11}")
    for row in rows:
        paper = f"{row['paper_gflops']:.1f}" if row["paper_gflops"] is not None else "-"
        print(f"{row['model']:<32} {row['change']:<26} {row['params'] / 1e6:>7.2f}M {row['gmacs']:>6.2f}  "
              f"{paper:>12} {row['paper_top1']:>11.1f}")
    print(f"GMACs: ours at {args.res}x{args.res}; GFLOPs (multiply-adds at 224) and ImageNet-1K top-1: the paper's.")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="images/s of our models against Hugging Face, timm and torchvision, "
                       "measured side by side in one process")
    p.add_argument("--model", required=True, help="one or more models, comma-separated (e.g. the family, "
                   "for --plot)")
    p.add_argument("--batch", help="batch sizes, comma-separated (default 1,32; 16 with --train)")
    p.add_argument("--res", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--dtype", choices=list(benchmark.DTYPES), default="fp32",
                   help="fp32, bf16/fp16 autocast, or int8 (our INT8 model; default fp32)")
    p.add_argument("--int8-model", metavar="FILE.xml", help="with --dtype int8: time this `convnext quantize` "
                   "file (default: --model quantized on random images)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last models and inputs for every implementation (ours always runs so)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile every implementation (optionally a mode, e.g. max-autotune)")
    p.add_argument("--train", action="store_true", help="time training steps (forward, backward, AdamW) "
                   "instead of inference")
    p.add_argument("--peers", default=",".join(benchmark.PEERS + benchmark.RUNTIMES),
                   help="comma-separated peers, or none (default hf,timm,torchvision,onnxruntime,openvino: the "
                   "last two run our exported ONNX graph; absent ones are skipped)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per implementation (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc malloc keeps freed memory (no page faults on big tensors) for every implementation")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--plot", metavar="FILE", help="draw images/s against GMACs per model (.png, .pdf or .svg)")
    p.set_defaults(func=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    models = [name.strip() for name in args.model.split(",") if name.strip()]
    if args.int8_model and args.dtype != "int8":
        raise UserError("--int8-model times an INT8 file: add --dtype int8")
    peers = [] if args.peers.strip() == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    batches = benchmark.parse_batches(args.batch or ("16" if args.train else "1,32"))
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.keep_freed_memory and not kept:
        print("convnext benchmark: --keep-freed-memory needs glibc; running with the default allocator",
              file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    report = benchmark.run_benchmark(models, batches=batches, res=args.res, dtype=args.dtype, train=args.train,
                                     peers=peers, channels_last=args.channels_last, compile_mode=args.compile,
                                     rounds=args.rounds, warmup=args.warmup, device=device, progress=progress,
                                     int8_file=args.int8_model)
    report["settings"]["keep_freed_memory"] = kept
    if args.plot:
        benchmark.plot_throughput(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(benchmark.format_report(report))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


COMMANDS = [_add_models, _add_info, _add_demo, _add_train, _add_evaluate, _add_predict, _add_export, _add_roadmap,
            _add_benchmark, cli_robustness.add_parser, cli_segment.add_parser, cli_detect.add_parser,
            cli_quantize.add_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt models: build, train, evaluate, "
                                     "benchmark and export (A ConvNet for the 2020s).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _tolerant_output() -> None:
    """Characters the terminal's encoding lacks (a unicode file name under LANG=C) print as escapes, not as a
    crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_output()
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.func(args)
    except UserError as err:
        print(f"convnext {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convnext {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `convnext ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
