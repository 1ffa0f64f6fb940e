"""From stored top-1 errors to what a reader wants: Table 8's columns, per-corruption detail, JSON, a plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...files import atomic_write_text
from ...plots import save_figure
from .corruptions import COMMON, EXTRA
from .metrics import corruption_errors, error_by_severity, mean_ce, mean_error
from .suites import CBAR, SUITE_NAMES


def _suite_scores(scores: dict[str, dict], suite: str) -> dict[str, dict[str, dict]]:
    """corruption -> severity key -> score, for one suite, from the runner's "suite/corruption/severity" keys."""
    found: dict[str, dict[str, dict]] = {}
    for key, score in scores.items():
        name, corruption, severity = key.split("/")
        if name == suite:
            found.setdefault(corruption, {})[severity] = score
    return found


def _corruption_summary(scores: dict[str, dict[str, dict]], suite: str, imagenet: bool) -> dict:
    order = list(CBAR) if suite == "cbar" else [c for c in COMMON + EXTRA if c in scores]
    errors = {c: [scores[c][s]["error"] for s in sorted(scores[c], key=int)] for c in order if c in scores}
    severities = sorted({int(s) for c in order if c in scores for s in scores[c]})
    summary = dict(errors=errors, severities=severities, mean_error=mean_error(errors),
                   error_by_severity=error_by_severity(errors), images=_images(scores),
                   unreadable=_unreadable(scores))
    if "clean" in scores:
        summary["clean_error"] = scores["clean"]["clean"]["error"]
    if suite == "c" and imagenet and severities == [1, 2, 3, 4, 5]:
        summary["ce"] = corruption_errors(errors)
        summary["mce"] = mean_ce(summary["ce"])
    return summary


def _images(scores: dict[str, dict[str, dict]]) -> int:
    return max((score["count"] for by_severity in scores.values() for score in by_severity.values()), default=0)


def _unreadable(scores: dict[str, dict[str, dict]]) -> int:
    """Images of the folder that could not be read and were left out of every score (scores stored before
    this was counted say 0)."""
    return max((score.get("skipped", 0) for by_severity in scores.values() for score in by_severity.values()),
               default=0)


def summarise(results: dict[str, dict[str, dict]], *, imagenet_suites: set[str] = frozenset(),
              baseline: str | None = None) -> dict:
    """Per model label and suite: top-1 (clean, A, R, Sketch) or errors per corruption and severity with
    mCE (ImageNet only, normalised by AlexNet), the unnormalised mean, and CE relative to ``baseline``."""
    summary: dict[str, dict] = {}
    for label, scores in results.items():
        suites = {key.split("/")[0] for key in scores}
        summary[label] = {}
        for suite in sorted(suites, key=list(SUITE_NAMES).index):
            by_corruption = _suite_scores(scores, suite)
            if suite in ("c", "cbar"):
                summary[label][suite] = _corruption_summary(by_corruption, suite, suite in imagenet_suites)
            else:
                score = by_corruption["clean"]["clean"]
                summary[label][suite] = dict(top1=score["top1"], error=score["error"], images=score["count"],
                                             unreadable=score.get("skipped", 0))
    if baseline is not None:
        for label, suites in summary.items():
            for suite, entry in suites.items():
                reference = summary[baseline].get(suite, {}).get("errors")
                if label != baseline and "errors" in entry and reference is not None:
                    entry["relative_ce"] = corruption_errors(entry["errors"], reference)
                    ce = entry["relative_ce"]
                    entry["relative_mce"] = 100 * sum(ce.values()) / len(ce)
    return summary


def _cell(value: float | None, width: int = 8) -> str:
    return ("-" if value is None else f"{value:.1f}").rjust(width)


COLUMNS = ("clean", "C mCE", "C err", "C relCE", "C-bar", "A", "R", "Sketch")


def _row(suites: dict) -> list[float | None]:
    c, cbar = suites.get("c", {}), suites.get("cbar", {})
    clean = suites.get("clean", {}).get("top1")
    if clean is None and "clean_error" in c:
        clean = 100 - c["clean_error"]
    return [clean, c.get("mce"), c.get("mean_error"), c.get("relative_mce"), cbar.get("mean_error"),
            *(suites.get(s, {}).get("top1") for s in ("a", "r", "sketch"))]


def format_table(summary: dict) -> str:
    """Table 8's layout: clean top-1, ImageNet-C mCE (or, off ImageNet, the mean error and the CE relative
    to the baseline), C-bar error, and A / R / Sketch top-1 -- the columns some model has a value in; then the
    error of each corruption and severity."""
    rows = {label: _row(suites) for label, suites in summary.items()}
    shown = [i for i in range(len(COLUMNS)) if any(row[i] is not None for row in rows.values())]
    width = max([12, *map(len, rows)])  # timm names run long: the label column grows to the longest
    lines = [f"{'model':<{width}} " + " ".join(f"{COLUMNS[i]:>8}" for i in shown)]
    lines += [f"{label:<{width}} " + " ".join(_cell(row[i]) for i in shown) for label, row in rows.items()]
    lines.append("clean, A, R, Sketch: top-1 %; C mCE: % of AlexNet's error (ImageNet only); C err, C-bar: mean "
                 "top-1 error %; C relCE: mean CE as % of the baseline's (lower is more robust)")
    lines += [f"{label}, {SUITE_NAMES[suite]}: {entry['unreadable']} unreadable image(s) left out of the scores"
              for label, suites in summary.items() for suite, entry in suites.items() if entry.get("unreadable")]
    for label, suites in summary.items():
        for suite in ("c", "cbar"):
            if suite in suites:
                lines += ["", _detail(label, suite, suites[suite])]
    return "\n".join(lines)


def _detail(label: str, suite: str, entry: dict) -> str:
    severities = entry["severities"]
    left_out = f", {entry['unreadable']} unreadable left out" if entry.get("unreadable") else ""
    head = (f"{SUITE_NAMES[suite]} corruptions, {label}: top-1 error % per severity ({entry['images']} images "
            f"each{left_out})")
    lines = [head, f"  {'corruption':<27}" + "".join(f"{s:>7}" for s in severities)
             + f"{'mean':>7}{'CE':>7}{'relCE':>7}"]
    for name, values in entry["errors"].items():
        ce = entry.get("ce", {}).get(name)
        rel = entry.get("relative_ce", {}).get(name)
        lines.append(f"  {name:<27}" + "".join(f"{v:>7.1f}" for v in values) + f"{sum(values) / len(values):>7.1f}"
                     + _cell(None if ce is None else 100 * ce, 7) + _cell(None if rel is None else 100 * rel, 7))
    by_severity = entry["error_by_severity"]
    lines.append(f"  {'mean over corruptions':<27}" + "".join(f"{v:>7.1f}" for v in by_severity)
                 + f"{entry['mean_error']:>7.1f}")
    if "clean_error" in entry:
        lines.append(f"  clean images: {entry['clean_error']:.1f}% error")
    return "\n".join(lines)


def write_json(value: dict, path: str | os.PathLike) -> None:
    atomic_write_text(Path(path), json.dumps(value, indent=2))  # creates the folder


def plot_severity(summary: dict, path: str | os.PathLike, suite: str = "c") -> None:
    """Top-1 error against severity, one panel per corruption (severity 0: clean images), a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = {label: suites[suite] for label, suites in summary.items() if suite in suites}
    names = list(next(iter(entries.values()))["errors"])
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for label, entry in entries.items():
            xs, ys = list(entry["severities"]), list(entry["errors"][name])
            if "clean_error" in entry:
                xs, ys = [0, *xs], [entry["clean_error"], *ys]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("top-1 error (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{SUITE_NAMES[suite]}: error against severity (0 = clean)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
