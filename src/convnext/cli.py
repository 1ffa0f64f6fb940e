"""The `convnext` command line: one sub-command per task, user errors printed without a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

import torch

from .complexity import model_info
from .errors import UserError
from .models import build_model, list_models
from .weights import list_pretrained


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
    p.add_argument("--res", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    model = _meta_model(args.model, num_classes=args.num_classes)
    info = dict(model=args.model, **model_info(model, args.res))
    info["pretrained"] = [
        dict(tag=w.tag, res=w.res, num_classes=w.num_classes, top1=w.top1, crop_pct=w.data_config["crop_pct"],
             interpolation=w.data_config["interpolation"], url=w.url, hf_hub_id=w.hf_hub_id)
        for w in list_pretrained(args.model)
    ]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model} at {args.res}x{args.res}")
    print(f"  parameters   {info['params']:,}")
    print(f"  GMACs        {info['gmacs']:.2f}")
    print(f"  activations  {info['activations_m']:.2f} M")
    if info["pretrained"]:
        print("  pretrained weights (ImageNet-1K top-1):")
        for w in info["pretrained"]:
            top1 = f"{w['top1']:.1f}" if w["top1"] is not None else "  - "
            print(f"    {w['tag']:<20} {w['res']}px  {top1}  {w['num_classes']} classes  crop {w['crop_pct']}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on built-in data")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    for name in list_models("convnext_*"):
        info = model_info(_meta_model(name))
        print(f"{name:<28} {info['params'] / 1e6:8.2f}M params  {info['gmacs']:6.2f} GMACs at 224")
    return 0


COMMANDS = [_add_models, _add_info, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt models: build, train, evaluate, "
                                     "benchmark and export (A ConvNet for the 2020s).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
