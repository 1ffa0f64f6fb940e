"""The paper's Table 12 on the machine at hand: ConvNeXt against Swin Transformer, inference images/s at 224 and
384, printed beside the paper's own A100 figures so a user sees whether their hardware tells the same story.

Swin is timm's (torchvision's where timm lacks the variant), never a copy of our own. Each ConvNeXt and its Swin
pair are timed by the interleaved rounds of `convnext.deploy.benchmark`: they take turns, so drift in machine load
hits both, and the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write_text, make_folder
from ..models.complexity import model_info
from ..models.convnext import build_model
from . import benchmark

DEFAULT_OUTPUT = "runs/table12"
SHORT = {"tiny": "T", "small": "S", "base": "B", "large": "L", "xlarge": "XL"}


@dataclass(frozen=True)
class PaperRow:
    """One ConvNeXt row of the paper's Table 12 and the Swin row printed above it (none for ConvNeXt-XL)."""

    convnext: str
    res: int
    flops: float  # the paper's "FLOPs", in G: multiply-accumulates, as fvcore counts them
    img_s: float  # images/s on an A100
    swin: str | None = None  # timm's name of the Swin the paper compares with
    swin_flops: float | None = None
    swin_img_s: float | None = None

    @property
    def size(self) -> str:
        return self.convnext.removeprefix("convnext_")


# Source: the paper, Table 12 ("Inference throughput comparisons on an A100 GPU"; appendix: TF32, channels_last,
# PyTorch 1.10). Swin-L and ConvNeXt-XL are its ImageNet-22K models; the paper has no Swin beside ConvNeXt-XL.
PAPER_TABLE_12 = (
    PaperRow("convnext_tiny", 224, 4.5, 1943.5, "swin_tiny_patch4_window7_224", 4.5, 1325.6),
    PaperRow("convnext_small", 224, 8.7, 1275.3, "swin_small_patch4_window7_224", 8.7, 857.3),
    PaperRow("convnext_base", 224, 15.4, 969.0, "swin_base_patch4_window7_224", 15.4, 662.8),
    PaperRow("convnext_base", 384, 45.0, 336.6, "swin_base_patch4_window12_384", 47.1, 242.5),
    PaperRow("convnext_large", 224, 34.4, 611.5, "swin_large_patch4_window7_224", 34.5, 435.9),
    PaperRow("convnext_large", 384, 101.0, 211.4, "swin_large_patch4_window12_384", 103.9, 157.9),
    PaperRow("convnext_xlarge", 224, 60.9, 424.4),
    PaperRow("convnext_xlarge", 384, 179.0, 147.4),
)
ROWS: Sequence[PaperRow] = PAPER_TABLE_12  # the rows measured (tests shrink it)
# torchvision's Swin (the same V1 architecture) where timm does not import or lacks the variant: 224 px only
TORCHVISION_SWIN = {"swin_tiny_patch4_window7_224": "swin_t", "swin_small_patch4_window7_224": "swin_s",
                    "swin_base_patch4_window7_224": "swin_b"}
# CPU: short enough for a few minutes on two busy cores; CUDA: the paper's protocol as far as it is written
# (Swin's --throughput: batch 64, 50 warm-up forwards), in rounds of about half a second.
DEFAULTS = {"cpu": dict(batch=1, rounds=5, warmup=2, res=(224,)),
            "cuda": dict(batch=64, rounds=10, warmup=50, res=(224, 384))}


def _short(model: str) -> str:
    """``convnext_tiny`` or ``tiny`` -> ``T``, as the paper names its rows."""
    size = model.removeprefix("convnext_")
    return SHORT.get(size, size)


def parse_sizes(text: str | None) -> list[str]:
    """``"tiny,small"`` (or ``convnext_tiny,...``) -> the sizes; None -> every size of the table."""
    known = list(dict.fromkeys(row.size for row in ROWS))
    if text is None:
        return known
    sizes = [s.strip().lower().removeprefix("convnext_") for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in known]
    if unknown or not sizes:
        raise UserError(f"--model with --table 12 takes sizes from {', '.join(known)} (comma-separated); "
                        f"got {text!r}")
    return sizes


def parse_resolutions(text: str | None, default: Sequence[int]) -> list[int]:
    """``"224,384"`` -> ``[224, 384]``: only the resolutions the paper's table has."""
    known = sorted({row.res for row in ROWS})
    if text is None:
        return list(default)
    try:
        resolutions = [int(r) for r in text.split(",")]
    except ValueError:
        resolutions = []
    if not resolutions or any(r not in known for r in resolutions):
        raise UserError(f"--res with --table 12 takes {' and/or '.join(map(str, known))} (the paper's rows), "
                        f"comma-separated; got {text!r}")
    return resolutions


def select_rows(sizes: Sequence[str], resolutions: Sequence[int]) -> list[PaperRow]:
    """The paper's rows for these sizes and resolutions, in the paper's order; one line if a pair has none."""
    rows = [row for row in ROWS if row.size in sizes and row.res in resolutions]
    for size in sizes:
        if not any(row.size == size for row in rows):
            have = [row.res for row in ROWS if row.size == size]
            raise UserError(f"the paper's Table 12 has ConvNeXt-{_short(size)} at "
                            f"{', '.join(map(str, have))} only, not at {', '.join(map(str, resolutions))}")
    return rows


def build_swin(name: str) -> nn.Module | str:
    """timm's Swin ``name`` with random weights, else torchvision's, else why neither has it."""
    built = benchmark.PEER_BUILDERS["timm"](name)
    if isinstance(built, str) and name in TORCHVISION_SWIN:
        fallback = benchmark.PEER_BUILDERS["torchvision"](TORCHVISION_SWIN[name])
        return fallback if not isinstance(fallback, str) else f"{built}; {fallback}"
    return built


@contextlib.contextmanager
def paper_settings(device: torch.device) -> Iterator[None]:
    """On CUDA the paper's math for the block: TF32 matrix products and convolutions, and cuDNN autotuning (as
    Swin's benchmark sets it); the previous settings come back afterwards, since they are process-wide."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = torch.get_float32_matmul_precision(), cudnn.allow_tf32, cudnn.benchmark
    torch.set_float32_matmul_precision("high")
    cudnn.allow_tf32, cudnn.benchmark = True, True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        cudnn.allow_tf32, cudnn.benchmark = saved[1:]


def _entry(name: str, model_on_meta: nn.Module, res: int) -> dict:
    info = model_info(model_on_meta, res)
    return dict(model=name, params=info["params"], gmacs=info["gmacs"])


def _pair(row: PaperRow, measured: dict) -> dict[str, nn.Module]:
    """The row's ConvNeXt and Swin with random weights; their sizes (counted on the meta device) go in
    ``measured``, or why there is no Swin."""
    measured["convnext"] = _entry(row.convnext, benchmark._meta(row.convnext), row.res)
    models = {"convnext": build_model(row.convnext, num_classes=benchmark.NUM_CLASSES)}
    swin = build_swin(row.swin) if row.swin is not None else None
    if isinstance(swin, str):
        measured["skipped"] = swin
    elif swin is not None:
        source = row.swin if type(swin).__module__.startswith("timm") else \
            f"torchvision {TORCHVISION_SWIN[row.swin]}"
        with torch.device("meta"):
            measured["swin"] = _entry(source, build_swin(row.swin), row.res)
        models["swin"] = swin
    return models


def _measure(row: PaperRow, batch: int, rounds: int, warmup: int, device: torch.device,
             say: Callable[[str], None], clock: Callable[[], float]) -> dict:
    """One row of the table: the paper's figures, our sizes, and speeds from the interleaved rounds."""
    measured = dict(res=row.res, convnext=None, swin=None, ratio=None, paper=asdict(row))
    if row.swin_img_s is not None:
        measured["paper"]["ratio"] = row.img_s / row.swin_img_s
    models = _pair(row, measured)
    x = torch.randn(batch, 3, row.res, row.res, generator=torch.Generator().manual_seed(0))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    steps = {impl: benchmark._make_step(benchmark._prepare(model, device, True, None), x, train=False,
                                        dtype=torch.float32) for impl, model in models.items()}
    what = f"ConvNeXt-{_short(row.convnext)} at {row.res}"
    speeds = benchmark._interleaved_rounds(steps, what, batch, rounds, warmup, device, clock, say)
    for impl, values in speeds.items():
        measured[impl]["img_s"] = benchmark._spread(values)
    if "swin" in speeds:
        measured["ratio"] = benchmark.round_ratios(speeds["convnext"], speeds["swin"])
    return measured


def run_table12(sizes: Sequence[str] | None = None, resolutions: Sequence[int] | None = None, *,
                batch: int | None = None, rounds: int | None = None, warmup: int | None = None,
                device: str | torch.device = "cpu", progress: Callable[[str], None] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> dict:
    """Measure the paper's Table 12 rows for ``sizes`` at ``resolutions``; what is not given takes the device's
    default (``DEFAULTS``). Every model and input runs channels_last in float32 (TF32 on CUDA), inference mode."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but PyTorch sees no CUDA device here")
    default = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    batch, rounds, warmup = (default[k] if v is None else v for k, v in
                             (("batch", batch), ("rounds", rounds), ("warmup", warmup)))
    if batch < 1 or rounds < 1 or warmup < 0:
        raise UserError(f"need a positive batch and round count and a non-negative warm-up, got {batch}, {rounds} "
                        f"and {warmup}")
    rows = select_rows(sizes or parse_sizes(None), resolutions or default["res"])
    say = progress or (lambda message: None)
    start = time.perf_counter()
    report = dict(machine=benchmark.machine_info(device), settings=dict(
        table=12, batch=batch, rounds=rounds, warmup=warmup, res=sorted({row.res for row in rows}),
        math="tf32" if device.type == "cuda" else "fp32", channels_last=True, clock=clock.__name__), rows=[])
    with paper_settings(device):
        for row in rows:
            report["rows"].append(_measure(row, batch, rounds, warmup, device, say, clock))
            gc.collect()  # the largest pairs hold gigabytes: free one before the next is built
    report["seconds"] = time.perf_counter() - start
    return report


def _speed(entry: dict) -> str:
    s = entry["img_s"]
    return f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}]"


def _line(label: str, entry: dict, res: int, paper_flops: float, paper_img_s: float, ratio: str,
          paper_ratio: str) -> str:
    return (f"| {label} | {res}² | {entry['gmacs']:.2f} ({paper_flops:g}) | {entry['params'] / 1e6:.1f}M | "
            f"{_speed(entry)} | {ratio} | {paper_img_s:.1f} | {paper_ratio} |")


def _heading(report: dict) -> str:
    """Where and how the figures were measured, and how long it took."""
    m, s = report["machine"], report["settings"]
    where = m["gpu"] or f"{m['cpu']}, {m['threads']} thread{'s' * (m['threads'] != 1)}"
    rounds = f"{s['rounds']} interleaved round{'s' * (s['rounds'] != 1)}"
    kept = ", glibc keeping freed memory" if s.get("keep_freed_memory") else ""
    return (f"Table 12 (ConvNeXt vs Swin, inference) on {where}: batch {s['batch']}, {s['math']}, channels_last, "
            f"{rounds}{kept}; torch {m['torch']}, timm {m.get('timm', '-')}; {m['date']}; "
            f"{report['seconds']:.0f} s in all. The paper's figures: A100, TF32, channels_last, PyTorch 1.10.")


def format_table12(report: dict) -> str:
    """The report as markdown: the paper's layout (each Swin row above its ConvNeXt), our figures beside its own."""
    lines = [_heading(report), "",
             "| model | image size | GMACs here (paper's \"FLOPs\", G) | params | images/s here, median [min–max] | "
             "ConvNeXt / Swin here, median [min–max] of rounds | paper A100 images/s | paper ConvNeXt / Swin |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        paper, short = row["paper"], _short(row["paper"]["convnext"])
        if row["swin"] is not None:
            lines.append(_line(f"Swin-{short} ({row['swin']['model']})", row["swin"], row["res"],
                               paper["swin_flops"], paper["swin_img_s"], "", ""))
        ratio = row["ratio"]
        here = f"{ratio['median']:.2f}× [{ratio['min']:.2f}–{ratio['max']:.2f}]" if ratio else ""
        there = f"{paper['ratio']:.2f}×" if "ratio" in paper else ""
        lines.append(_line(f"ConvNeXt-{short}", row["convnext"], row["res"], paper["flops"], paper["img_s"],
                           here, there))
    lines += [f"\nSwin-{_short(r['paper']['convnext'])} at {r['res']} not measured: {r['skipped']}"
              for r in report["rows"] if "skipped" in r]
    return "\n".join(lines) + "\n"


def write_table12(report: dict, output: str | os.PathLike = DEFAULT_OUTPUT) -> tuple[Path, Path]:
    """``table12.md`` and ``table12.json`` in ``output`` (created), each written atomically."""
    folder = Path(output)
    make_folder(folder)
    markdown = atomic_write_text(folder / "table12.md", format_table12(report))
    return markdown, atomic_write_text(folder / "table12.json", json.dumps(report, indent=2) + "\n")
