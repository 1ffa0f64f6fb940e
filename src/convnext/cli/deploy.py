"""`convnext export`, `benchmark` and `quantize`: taking a model out of training."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import Commands, add_device, add_output, add_weights, comma_list, cores_and_load, parse_device


def add_export(sub: Commands) -> None:
    sub.add("export", _export_args, help="write a model as ONNX, TorchScript, a torch.export program or "
            "safetensors, and check the file against PyTorch")


def _export_args(p: argparse.ArgumentParser) -> None:
    from ..deploy import export

    add_weights(p)
    p.add_argument("--format", required=True, choices=export.FORMATS,
                   help="onnx (opset >= 18), torchscript, pt2 (torch.export) or "
                   "safetensors (weights + metadata)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (atomically)")
    p.add_argument("--res", type=int, help="input resolution of the exported graph (default: the weights')")
    p.add_argument("--opset", type=int,
                   help=f"ONNX opset, at least {export.MIN_ONNX_OPSET} (default {export.ONNX_OPSET})")
    p.add_argument("--layer-norms", choices=("native", "channels"), default=None,
                   help="ONNX: native LayerNormalization between transposes (default; ONNX Runtime) or reductions "
                   "over the channel axis without transposes (channels; OpenVINO runs it faster: see README)")
    p.add_argument("--script", action="store_true", help="TorchScript: script instead of trace")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                   help="export the inference-fused model (LayerNorm affine and layer scale folded into the "
                   "pointwise weights; default) or the model as trained; safetensors is never fused")
    p.add_argument("--dtype", default="fp32", choices=list(export.EXPORT_DTYPES),
                   help="weights and input dtype of the graph: bf16 (torchscript, pt2) casts the weights once, "
                   "for CPUs with AMX/AVX-512-BF16 and GPUs (default fp32)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..deploy import export
    from ..tasks.loading import load_model

    fmt = args.format
    unused = [flag for flag, given, used in (
        ("--opset", args.opset is not None, fmt == "onnx"), ("--script", args.script, fmt == "torchscript"),
        ("--layer-norms", args.layer_norms is not None, fmt == "onnx"),
        ("--res", args.res is not None, fmt != "safetensors"),
        ("--fuse/--no-fuse", args.fuse is not None, fmt != "safetensors")) if given and not used]
    if unused:
        verb, them = ("mean", "them") if len(unused) > 1 else ("means", "it")
        raise UserError(f"{' and '.join(unused)} {verb} nothing for --format {fmt}: leave {them} out")
    model = load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained)
    args.opset = export.ONNX_OPSET if args.opset is None else args.opset
    report = export.export_model(model, args.out, args.format, res=args.res, opset=args.opset, script=args.script,
                                 fuse=args.fuse is not False, dtype=args.dtype,
                                 norms_over_channels=args.layer_norms == "channels")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["passed"] else 1
    what = {"onnx": f"ONNX opset {args.opset}, {report.get('layer_norm_nodes')} LayerNormalization nodes",
            "torchscript": f"TorchScript ({report.get('torchscript')})", "pt2": "torch.export program",
            "safetensors": "weights and metadata"}[args.format]
    if args.format != "safetensors":
        what += f", {'fused' if report['fused'] else 'unfused'}, {args.dtype} input (batch, {model.in_chans}, " \
                f"{report['res']}, {report['res']})"
    print(f"wrote {args.out} ({report['bytes'] / 1e6:.1f} MB): {report['model']}, {what}")
    runtime = "onnxruntime" if args.format == "onnx" else "reloaded file"
    print(f"check: {runtime} vs PyTorch on a batch of {report['check_batch']}: max abs difference "
          f"{report['max_abs_diff']:.2e} against float32 PyTorch (tolerance {report['tolerance']:.1e}) "
          f"{'OK' if report['passed'] else 'FAILED'}")
    return 0 if report["passed"] else 1


def add_benchmark(sub: Commands) -> None:
    sub.add("benchmark", _benchmark_args, help="images/s of our models against Hugging Face, timm and torchvision, "
            "measured side by side in one process; --table 12: the paper's comparison with Swin")


def _benchmark_args(p: argparse.ArgumentParser) -> None:
    from ..deploy import benchmark

    p.add_argument("--table", metavar="12", help="the paper's Table 12: ConvNeXt against timm's Swin at 224 and "
                   "384, beside the paper's A100 figures; writes table12.md and table12.json to --output")
    p.add_argument("--model", help="one or more models, comma-separated (e.g. the family, for --plot); with "
                   "--table 12, sizes: tiny,small,base,large,xlarge (default all)")
    p.add_argument("--batch", help="batch sizes, comma-separated (default 1,32; 16 with --train); with --table 12 "
                   "one size (default 1 on CPU, 64 on CUDA)")
    p.add_argument("--res", help="input resolution (default 224); with --table 12, 224 and/or 384, comma-separated "
                   "(default 224 on CPU, both on CUDA)")
    p.add_argument("--dtype", choices=list(benchmark.DTYPES),
                   help="fp32; bf16/fp16 (inference: every model's weights and input cast; training: autocast); or "
                   "int8 (our INT8 model; default fp32)")
    p.add_argument("--int8-model", metavar="FILE.xml", help="with --dtype int8: time this `convnext quantize` "
                   "file (default: --model quantized on random images)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last models and inputs for every implementation (ours always runs so)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile every implementation (optionally a mode, e.g. max-autotune)")
    p.add_argument("--train", action="store_true", help="time training steps (forward, backward, AdamW) "
                   "instead of inference")
    p.add_argument("--peers", help="comma-separated peers, or none (default hf,timm,torchvision,onnxruntime,"
                   "openvino: the last two run our exported ONNX graph; absent ones are skipped)")
    p.add_argument("--rounds", type=int, help="timed rounds per implementation (default 5; with --table 12, 5 on "
                   "CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 2; with --table 12, 2 on CPU, 50 on "
                   "CUDA)")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, one per core)")
    p.set_defaults(own_threads=True)
    add_device(p, "default: cuda when available", choices=["cpu", "cuda"])
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc malloc keeps freed memory (no page faults on big tensors) for every implementation")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--plot", metavar="FILE", help="draw images/s against GMACs per model (.png, .pdf or .svg)")
    add_output(p, "with --table 12: the folder for table12.md and table12.json (default runs/table12)",
               metavar="DIR")
    p.set_defaults(func=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    from ..deploy import benchmark

    if args.table is not None:
        return _table(args)
    if args.model is None:
        raise UserError("give --model (one or more, comma-separated), or --table 12")
    if args.output is not None:
        raise UserError("--output is where --table 12 writes its files: add --table 12, or leave it out")
    models = comma_list(args.model, "--model")
    dtype = args.dtype or "fp32"
    if args.int8_model and dtype != "int8":
        raise UserError("--int8-model times an INT8 file: add --dtype int8")
    if args.plot:
        from ..plots import check_figure_name

        check_figure_name(args.plot)  # before the minutes of measuring, not after them
    peers_text = args.peers or ",".join(benchmark.PEERS + benchmark.RUNTIMES)
    peers = [] if peers_text.strip() == "none" else [p.strip() for p in peers_text.split(",") if p.strip()]
    batches = benchmark.parse_batches(args.batch or ("16" if args.train else "1,32"))
    try:
        res = int(args.res or 224)
    except ValueError:
        raise UserError(f"--res must be one whole number (without --table 12), got {args.res!r}") from None
    kept, busy = _machine_settings(args)
    device = args.device or parse_device(None).type  # cuda without CUDA: run_benchmark says so, in its turn
    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    report = benchmark.run_benchmark(models, batches=batches, res=res, dtype=dtype, train=args.train,
                                     peers=peers, channels_last=args.channels_last, compile_mode=args.compile,
                                     rounds=5 if args.rounds is None else args.rounds,
                                     warmup=2 if args.warmup is None else args.warmup, device=device,
                                     progress=progress, int8_file=args.int8_model)
    report["settings"]["keep_freed_memory"] = kept
    if args.plot:
        benchmark.plot_throughput(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(benchmark.format_report(report))
        if args.plot:
            print(f"wrote {args.plot}")
    _say_busy(busy)
    return 0


def _machine_settings(args: argparse.Namespace) -> tuple[bool, str | None]:
    """--threads and --keep-freed-memory, process-wide; whether freed memory is kept, and a note (said after the
    results, so that an error stays one line) when other work already holds the cores the threads need."""
    import torch

    from ..deploy.allocator import keep_freed_memory

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.keep_freed_memory and not kept:
        print("convnext benchmark: --keep-freed-memory needs glibc; running with the default allocator",
              file=sys.stderr)
    return kept, busy_note(torch.get_num_threads(), *cores_and_load())


def _say_busy(busy: str | None) -> None:
    if busy:
        print(f"convnext benchmark: note: {busy}", file=sys.stderr)


def busy_note(threads: int, cores: int, load: float) -> str | None:
    """A warning when other work already occupies the cores this benchmark's threads need: unlike the other
    commands it keeps its thread count (every contender gets the same), and threads that wait on each other on
    busy cores run several times slower."""
    if load < 0.5 or threads + load <= cores + 0.5:
        return None
    return (f"the load average is {load:.1f} on {cores} cores before we start: images/s will be lower and noisier "
            f"than on a quiet machine (ratios, measured in the same rounds, hold better); --threads "
            f"{max(1, round(cores - load))} suffers less")


# What --table 12 would not use: it times inference in float32 (TF32 on CUDA) against Swin, eager and channels_last.
NOT_WITH_TABLE = {"dtype": "--dtype", "int8_model": "--int8-model", "compile": "--compile", "train": "--train",
                  "peers": "--peers", "plot": "--plot"}


def _table(args: argparse.Namespace) -> int:
    """`convnext benchmark --table 12`: the paper's comparison with Swin, printed and written to --output."""
    from ..deploy import table12

    if args.table.strip() != "12":
        raise UserError(f"--table takes 12 (the paper's inference-throughput comparison with Swin), got "
                        f"{args.table!r}")
    refused = [flag for dest, flag in NOT_WITH_TABLE.items() if getattr(args, dest) not in (None, False)]
    if refused:
        raise UserError(f"--table 12 times float32 inference of ConvNeXt against Swin (channels_last, TF32 on "
                        f"CUDA): leave out {', '.join(refused)}")
    if args.batch is not None and not args.batch.strip().isdigit():
        raise UserError(f"--table 12 takes one --batch size, a positive whole number; got {args.batch!r}")
    device = args.device or parse_device(None).type
    sizes = table12.parse_sizes(args.model)
    resolutions = table12.parse_resolutions(args.res, table12.DEFAULTS["cuda" if device == "cuda" else "cpu"]["res"])
    kept, busy = _machine_settings(args)
    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    report = table12.run_table12(sizes, resolutions, batch=None if args.batch is None else int(args.batch),
                                 rounds=args.rounds, warmup=args.warmup, device=device, progress=progress)
    report["settings"]["keep_freed_memory"] = kept
    markdown, data = table12.write_table12(report, args.output or table12.DEFAULT_OUTPUT)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table12.format_table12(report), end="")
    print(f"wrote {markdown} and {data}", file=sys.stderr if args.json else sys.stdout)
    _say_busy(busy)
    return 0


def add_quantize(sub: Commands) -> None:
    what = ("post-training static INT8 for CPUs (OpenVINO, calibrated with NNCF on your images); prints how far "
            "it strays from the float model, and the top-1 drop with --val")
    sub.add("quantize", _quantize_args, help=what, description=what)


def _quantize_args(p: argparse.ArgumentParser) -> None:
    from ..deploy.quantize import BACKENDS, DEFAULT_SAMPLES, SUFFIX

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
    p.set_defaults(func=_quantize)


def _float_model(args: argparse.Namespace):
    """The model to quantize, after every check that needs no work."""
    from ..deploy.quantize import SUFFIX, require_backend
    from ..tasks.loading import load_model

    require_backend(args.backend)
    out = Path(args.out)
    if out.suffix != SUFFIX:
        raise UserError(f"--out must be FILE{SUFFIX}, got {out}")
    if args.checkpoint is None and not args.pretrained:
        raise UserError("give --checkpoint CKPT, or --model with --pretrained [TAG]")
    if Path(args.checkpoint or "").suffix == SUFFIX:
        raise UserError(f"{args.checkpoint} is already an INT8 model; quantize its float checkpoint")
    return load_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained)


def _quantize(args: argparse.Namespace) -> int:
    from ..deploy.quantize import calibration_images, compare, quantize, report_lines
    from ..tasks.classification.evaluate import evaluate_model

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
    out = _save_checked(quantized, args.out, images, report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for line in report_lines(report["calibration"], accuracy):
        print(line)
    print(f"wrote {out} + {out.with_suffix('.bin').name} ({report['bytes'] / 2**20:.1f} MB) in "
          f"{time.perf_counter() - start:.0f}s; run it with `convnext predict --checkpoint {out} IMAGES`")
    return 0


def _save_checked(quantized, path: str, images, report: dict) -> Path:
    """Write the INT8 model (once everything has passed), read it back, and check it gives the same logits."""
    from ..deploy.quantize import compare, load_quantized, save_quantized

    out = save_quantized(quantized, path)
    check = compare(quantized, load_quantized(out), images[:8])
    if check["max_logit_diff"] > 0:
        raise UserError(f"{out} read back gives other logits than the model written (max diff "
                        f"{check['max_logit_diff']:.2e})")
    report["bytes"] = out.stat().st_size + out.with_suffix(".bin").stat().st_size
    return out
