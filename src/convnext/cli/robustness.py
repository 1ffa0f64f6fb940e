"""`convnext robustness`: the paper's Table 8 (ImageNet-C mCE, C-bar, A, R, Sketch) for any model and data."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import Commands, add_device, add_output, comma_list, parse_device, workers_within_cores


def add_parser(sub: Commands) -> None:
    what = ("ImageNet-C mCE, C-bar, A, R and Sketch (the paper's Table 8) for any model; corruptions made on the "
            "fly for any data set; --demo on the digits")
    sub.add("robustness", _args, help=what, description=what)


def _args(p: argparse.ArgumentParser) -> None:
    from ..tasks.robustness.suites import SUITES

    p.add_argument("--checkpoint", metavar="CKPT", help="weights of any supported layout; for a timm model a "
                   "state dict of timm's layout (.safetensors, .pth, .bin); `random`: untrained, for smoke tests")
    p.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                   help="released ConvNeXt weights of --model instead (the default tag when TAG is left out)")
    p.add_argument("--model", help="model name, or timm:NAME for any timm classifier, preprocessed as timm does "
                   "(default: the one a `convnext train` checkpoint names)")
    p.add_argument("--contender", action="append", default=[], metavar="NAME=WEIGHTS",
                   help="another model scored on the same images, a row of its own (repeatable): timm:NAME=FILE, "
                   "CONVNEXT_NAME=FILE, a released CONVNEXT_NAME.TAG, a `convnext train` checkpoint FILE; "
                   "WEIGHTS `random` for a smoke test. Without --checkpoint/--model the contenders are the rows")
    p.add_argument("--suite", default="c", help=f"comma-separated, from {','.join(SUITES)} (default c)")
    p.add_argument("--data", action="append", default=[], metavar="SUITE=DIR",
                   help="data folder of a suite (repeatable; a bare DIR serves the only suite). c: an ImageNet-C "
                   "tree, or any clean folder of class sub-folders to corrupt on the fly; without one, c and "
                   "clean use the held-out built-in digits")
    p.add_argument("--baseline", metavar="CKPT", help="the baseline's weights (as --checkpoint): CE relative to "
                   "it for every model")
    p.add_argument("--baseline-model", metavar="M", help="the baseline's model name (timm:NAME for timm's), when "
                   "its file does not say")
    add_output(p, "results folder, reused when rerun (default runs/robustness, runs/robustness-demo with --demo)",
               metavar="DIR")
    p.add_argument("--restart", action="store_true", help="ignore results stored in the output folder")
    add_device(p)
    add_run_options(p)
    p.set_defaults(**RUN_DEFAULTS)
    p.add_argument("--demo", action="store_true", help="same as `convnext demo robustness`: train the digits "
                   "demo's ConvNeXt and ResNet baseline (once), then corrupt the held-out digits")
    p.set_defaults(func=run)


RUN_DEFAULTS = {"seed": 0, "batch_size": 64, "workers": 0}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How the scoring runs and what it writes: options `convnext demo robustness` shares. No defaults here
    (`RUN_DEFAULTS`), so that a demo of another task can tell given from left out."""
    p.add_argument("--corruptions", help="comma-separated subset of ImageNet-C corruptions (default: the 15 of "
                   "mCE; speckle_noise, gaussian_blur, spatter, saturate may be added)")
    p.add_argument("--severities", help="comma-separated, 1-5 (default all)")
    p.add_argument("--seed", type=int, help="seed of the on-the-fly corruptions (default 0)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.add_argument("--plot", metavar="FILE", help="error against severity per corruption (.png, .pdf, .svg)")


def run_demo(args: argparse.Namespace) -> int:
    """`convnext demo robustness`: `run` with the demo's models and no weights or data of the user's."""
    for dest, value in RUN_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    args.demo, args.checkpoint, args.pretrained, args.baseline, args.data, args.contender = (True, None, False,
                                                                                             None, [], [])
    return run(args)


def _list(text: str | None, kind=str, flag: str = "the list") -> list | None:
    if text is None:
        return None
    items = comma_list(text, flag)
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise UserError(f"expected a comma-separated list of numbers, got {text!r}") from None


def _suites(args: argparse.Namespace) -> dict[str, str | None]:
    from ..tasks.robustness.suites import SUITES

    names = _list(args.suite, flag="--suite")
    unknown = [name for name in names if name not in SUITES]
    if unknown or not names:
        raise UserError(f"unknown suite {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITES)}")
    data: dict[str, str | None] = dict.fromkeys(names)
    for item in args.data:
        suite, sep, folder = item.partition("=")
        if not sep and len(names) == 1:
            suite, folder = names[0], item
        elif not sep or suite not in names:
            raise UserError(f"--data {item}: expected SUITE=DIR with SUITE among --suite {','.join(names)}")
        data[suite] = folder
    return data


def run(args: argparse.Namespace) -> int:
    from ..tasks.robustness import SEVERITIES, evaluate_robustness, format_table, plot_severity, write_json

    start = time.perf_counter()
    if args.batch_size < 1 or args.workers < 0:
        raise UserError(f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size} and "
                        f"{args.workers}")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be from 0 to 2**32 - 1, got {args.seed}")
    args.workers = workers_within_cores(args.workers)
    if args.plot:
        from ..plots import check_figure_name

        check_figure_name(args.plot)
    quiet = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    output, suites, subjects, baseline = _demo(args, quiet) if args.demo else _given(args)
    corruptions = _list(args.corruptions, flag="--corruptions")
    severities = tuple(_list(args.severities, int, "--severities") or SEVERITIES)
    report = evaluate_robustness(subjects[0], suites, baseline=baseline, contenders=subjects[1:],
                                 output=output / "results", corruptions=corruptions, severities=severities,
                                 seed=args.seed, batch_size=args.batch_size, workers=args.workers,
                                 device=parse_device(args.device), restart=args.restart)
    write_json(report, output / "robustness.json")
    plot = args.plot or (output / "severity.png" if args.demo else None)
    if plot:
        plot_severity(report["summary"], plot, suite="c" if "c" in suites else "cbar")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report["summary"]))
        print(f"\nreport: {output / 'robustness.json'}" + (f"; plot: {plot}" if plot else ""))
    return _demo_verdict(report, time.perf_counter() - start, quiet) if args.demo else 0


def _demo(args: argparse.Namespace, say) -> tuple[Path, dict[str, str | None], list, object]:
    """--demo: the output folder, the suites and the two models the demo trains (once) and scores."""
    from ..tasks.robustness.demo import DEMO_MODELS, demo_subjects

    if args.checkpoint or args.pretrained or args.baseline or args.data or args.contender:
        raise UserError("--demo trains and scores its own two models on the digits: leave out the weights, "
                        "--contender and --data")
    output = Path(args.output or "runs/robustness-demo")
    say(f"demo: training {' and '.join(DEMO_MODELS)} on the digits (once; kept in {output})")
    model, baseline = demo_subjects(output, log=lambda text: None)
    return output, {"c": None}, [model], baseline


def _given(args: argparse.Namespace) -> tuple[Path, dict[str, str | None], list, object]:
    """The output folder, the suites, the models the command line names (--model first, then each
    --contender) and the baseline (or None)."""
    from ..tasks.robustness import load_subject

    output = Path(args.output or "runs/robustness")
    suites = _suites(args)
    if not {"c", "cbar"} & set(suites):
        given = [flag for flag, value in (("--plot", args.plot), ("--corruptions", args.corruptions),
                                          ("--severities", args.severities)) if value]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise UserError(f"{' and '.join(given)} {verb} to the corruption suites: it needs suite c or cbar")
    named = args.checkpoint or args.model or args.pretrained
    if not named and not args.contender:
        raise UserError("give --checkpoint CKPT, --model with --pretrained [TAG], or --contender NAME=WEIGHTS "
                        "(or --demo)")
    subjects = [load_subject("model", args.model, args.checkpoint, args.pretrained)] if named else []
    subjects += _contenders(args.contender, taken={"model", "baseline"})
    baseline = None
    if args.baseline:
        baseline = load_subject("baseline", args.baseline_model, args.baseline)
    elif args.baseline_model:
        raise UserError("--baseline-model names the model of --baseline WEIGHTS: give that too")
    return output, suites, subjects, baseline


_WEIGHT_FILES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".xml")


def _contenders(specs: list[str], taken: set[str]) -> list:
    """One model per ``--contender NAME[=WEIGHTS]`` (a bare FILE: a checkpoint that names its model), each
    labelled by its model's name; a second use of a name takes its weights file's stem, then a number."""
    from ..tasks.robustness.subjects import RANDOM, TIMM, load_subject

    subjects, taken = [], set(taken)
    for spec in specs:
        name, sep, weights = spec.partition("=")
        if not sep and not name.startswith(TIMM) and (Path(name).exists() or Path(name).suffix in _WEIGHT_FILES):
            name, weights = None, spec  # a checkpoint that records its model
        subject = load_subject("contender", name, weights or None)
        label = subject.identity["model"].removeprefix(TIMM)
        if label in taken and weights and weights != RANDOM:
            label = f"{label}-{Path(weights).stem}"
        base, count = label, 1
        while label in taken:
            count += 1
            label = f"{base}-{count}"
        subject.label = label
        taken.add(label)
        subjects.append(subject)
    return subjects


def _demo_verdict(report: dict, seconds: float, say) -> int:
    """The demo's check: for every model, the mean error rises from each severity to the next."""
    ok = True
    for label, suites in report["summary"].items():
        curve = suites["c"]["error_by_severity"]
        rising = all(b > a for a, b in zip(curve, curve[1:], strict=False))
        ok &= rising
        say(f"demo: {label} mean error by severity {' < '.join(f'{v:.1f}' for v in curve)}% "
            f"({'rises' if rising else 'does NOT rise'})")
    say(f"demo: {seconds:.0f}s in all")
    return 0 if ok else 1
