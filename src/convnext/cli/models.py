"""`convnext models`, `convnext info` and `convnext roadmap`: the registered architectures, their sizes and weights."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .common import Commands


def _meta_model(name: str, **overrides):
    """Build an architecture without allocating weights: enough to count parameters and MACs."""
    import torch

    from ..models.convnext import build_model

    with torch.device("meta"):
        return build_model(name, **overrides)


def add_models(sub: Commands) -> None:
    sub.add("models", _models_args, help="list the registered models and their released weights")


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext_*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from ..models.convnext import list_models
    from ..weights import list_pretrained

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


def add_info(sub: Commands) -> None:
    sub.add("info", _info_args, help="parameters, GMACs, activations and released weights of a model")


def _info_args(p: argparse.ArgumentParser) -> None:
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
    from ..models.complexity import model_info
    from ..models.convnext import check_resolution
    from ..weights import list_pretrained

    dense = args.model.startswith("upernet_")  # the paper counts segmentation FLOPs at 512x2048, 150 classes
    args.res = args.res or ((512, 2048) if dense else 224)
    for side in (args.res,) if isinstance(args.res, int) else args.res:
        check_resolution(side)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {args.num_classes}")
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
    _print_info(args.model, info, dense)
    return 0


def _print_info(model: str, info: dict, dense: bool) -> None:
    res = info["res"]
    size = res if isinstance(res, str) else "x".join(map(str, (res, res) if isinstance(res, int) else res))
    print(f"{model} at {size}")
    print(f"  parameters   {info['params']:,}")
    print(f"  GMACs        {info['gmacs']:.2f}  (what the paper's tables call FLOPs)")
    if "activations_m" in info:
        print(f"  activations  {info['activations_m']:.2f} M")
    if info["pretrained"]:
        print(f"  pretrained weights{' (ADE20K)' if dense else ' (ImageNet-1K top-1)'}:")
        for w in info["pretrained"]:
            top1 = "" if dense else (f"{w['top1']:.1f}  " if w["top1"] is not None else "  -   ")
            print(f"    {w['tag']:<20} {w['res']}px  {top1}{w['num_classes']} classes  crop {w['crop_pct']}")


def add_roadmap(sub: Commands) -> None:
    sub.add("roadmap", _roadmap_args, help="the paper's ResNet-50 -> ConvNeXt-T steps: parameters, GMACs, paper "
            "accuracy, and its Figure 2")


def _roadmap_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=_roadmap)
    p.add_argument("--res", type=int, default=224, help="input resolution for our GMACs (default 224)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE", help="draw the Figure-2-style bar chart (.png, .pdf or .svg)")


def _roadmap(args: argparse.Namespace) -> int:
    from ..models.convnext import check_resolution
    from ..models.roadmap import measure_steps, plot_roadmap

    check_resolution(args.res)
    if args.plot:
        from ..plots import check_figure_name

        check_figure_name(args.plot)
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
