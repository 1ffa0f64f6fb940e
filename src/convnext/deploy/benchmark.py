"""Throughput of our ConvNeXt against its peers, measured side by side in one process.

Every implementation gets the same input, warm-up and settings; the timed rounds then take turns (ours,
peer, ours, peer, ...) so that drift in machine load hits all alike, and each ratio to a peer is the median
of the per-round ratios. Peers: Hugging Face transformers, timm and torchvision, each when it imports and
has the architecture, and for CPU float32 inference ONNX Runtime and OpenVINO running the ONNX graph that
`convnext export` writes for our model; scripts may add their own (``extra_peers``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.complexity import model_info
from ..models.convnext import ConvNeXt, build_model, check_resolution
from ..plots import save_figure
from ..weights import data_config

PEERS = ("hf", "timm", "torchvision")
RUNTIMES = ("onnxruntime", "openvino")
OURS = ("convnext", "convnext-fused", "convnext-int8")
# int8: our quantized model (convnext.deploy.quantize) against our float32 eager model and the runtimes' own INT8
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
CALIBRATION_IMAGES = 32  # random images: speed does not depend on what the ranges were measured on
ROUND_SECONDS = 0.5  # a timed round repeats the step until it lasts about this long
NUM_CLASSES = 1000


class _Logits(nn.Module):
    """A Hugging Face model called like ours: images in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _hf(name: str) -> nn.Module | str:
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    meta = _meta(name)
    if not isinstance(meta, ConvNeXt):
        return f"transformers has no {name}"
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(depths=list(meta.depths), hidden_sizes=list(meta.dims), num_labels=NUM_CLASSES,
                            layer_norm_eps=1e-6)
    return _Logits(ConvNextForImageClassification(config))


def _timm(name: str) -> nn.Module | str:
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - a broken install raises anything
        return f"timm does not import ({type(err).__name__})"
    if not timm.is_model(name):
        return f"timm has no {name}"
    return timm.create_model(name, num_classes=NUM_CLASSES)


def _torchvision(name: str) -> nn.Module | str:
    try:
        import torchvision
    except Exception as err:  # noqa: BLE001 - a broken install raises anything
        return f"torchvision does not import ({type(err).__name__})"
    if name not in torchvision.models.list_models():
        return f"torchvision has no {name}"
    return torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES)


class _OnnxRunner(nn.Module):
    """Our exported ONNX graph (fused, as `convnext export` writes it) in another runtime, called like a model."""

    def __init__(self, run: Callable):
        super().__init__()
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x.numpy()))


@functools.cache
def _scratch() -> tempfile.TemporaryDirectory:
    """One folder for this process's exported graphs, removed when the process ends."""
    folder = tempfile.TemporaryDirectory(prefix="convnext-bench-")
    atexit.register(folder.cleanup)  # removed by us, before the interpreter would warn about it
    return folder


@functools.cache  # one export per graph form
def _our_onnx(name: str, res: int, norms_over_channels: bool = False) -> str:
    """Our ONNX graph in the form each runtime runs fastest: native LayerNormalization for ONNX Runtime,
    channel-axis reductions (no transposes) for OpenVINO, the form `convnext quantize` hands it too."""
    from .export import export_onnx

    model = build_model(name, num_classes=NUM_CLASSES).eval()
    path = os.path.join(_scratch().name, f"{name}-{res}{'-channels' * norms_over_channels}.onnx")
    return str(export_onnx(model.fuse_for_inference(), path, res=res, norms_over_channels=norms_over_channels))


def _calibration(res: int) -> torch.Tensor:
    return torch.randn(CALIBRATION_IMAGES, 3, res, res, generator=torch.Generator().manual_seed(1))


def _onnxruntime(name: str, res: int, dtype: str) -> nn.Module | str:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        return "onnxruntime or onnxscript is not installed"
    if dtype == "bf16":
        return "ONNX Runtime has no bf16 CPU kernels"
    import onnxruntime

    path = _our_onnx(name, res)
    if dtype == "int8":  # ONNX Runtime's own static quantization, its defaults (QDQ, per-tensor)
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"images": b.numpy()} for b in _calibration(res).split(8)])

            def get_next(self):
                return next(self.batches, None)

        path, source = path.replace(".onnx", ".ort-int8.onnx"), path
        quantize_static(source, path, Reader())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return _OnnxRunner(lambda x: session.run(None, {"images": x})[0])


def _openvino(name: str, res: int, dtype: str) -> nn.Module | str:
    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnxscript") is None:
        return "openvino or onnxscript is not installed"
    import openvino

    core = openvino.Core()
    model = core.read_model(_our_onnx(name, res, norms_over_channels=True))
    if dtype == "int8":  # OpenVINO's own INT8: NNCF with its default settings
        if importlib.util.find_spec("nncf") is None:
            return "nncf is not installed"
        import nncf

        with contextlib.redirect_stdout(sys.stderr):  # its progress bars
            model = nncf.quantize(model, nncf.Dataset([b.numpy() for b in _calibration(res).split(8)]))
    precision = {"bf16": "bf16"}.get(dtype, "f32")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                 "INFERENCE_PRECISION_HINT": precision})
    return _OnnxRunner(lambda x: compiled(x)[0])


def _our_int8(name: str, res: int, path: str | os.PathLike | None = None) -> nn.Module | str:
    """The INT8 file `convnext quantize` wrote, or ``name`` quantized here on random images."""
    if any(importlib.util.find_spec(m) is None for m in ("openvino", "nncf", "onnxscript")):
        return "openvino, nncf or onnxscript is not installed"
    from .quantize import load_quantized, quantize

    if path is not None:
        model = load_quantized(path)
        size = model.pretrained_cfg["input_size"][-1]
        if model.model_name != name or size != res:
            raise UserError(f"{path} holds a {model.model_name} at {size} px: pass --model {model.model_name} "
                            f"--res {size}")
        return model

    model = build_model(name, num_classes=NUM_CLASSES).eval()
    model.pretrained_cfg = data_config(res)
    return quantize(model, _calibration(res))


PEER_BUILDERS: dict[str, Callable[[str], nn.Module | str]] = {"hf": _hf, "timm": _timm,
                                                                "torchvision": _torchvision}
# Runtimes that run our own exported graph: CPU float32 inference only.
RUNTIME_BUILDERS: dict[str, Callable[[str, int, str], nn.Module | str]] = {"onnxruntime": _onnxruntime,
                                                                      "openvino": _openvino}


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes=NUM_CLASSES)


def parse_batches(text: str) -> list[int]:
    """``"1,32"`` -> ``[1, 32]``."""
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise UserError(f"--batch must be positive integers separated by commas, e.g. 1,32; got {text!r}")
    return batches


def machine_info(device: torch.device) -> dict:
    """What a throughput number depends on: processor, threads, accelerator, library versions, date."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = dict(cpu=cpu, cpu_cores=os.cpu_count(), threads=torch.get_num_threads(),
                cpu_isa=torch.backends.cpu.get_cpu_capability(), device=str(device),
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                python=platform.python_version(), torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    for package in ("transformers", "timm", "torchvision"):
        with contextlib.suppress(Exception):
            info[package] = __import__(package).__version__
    return info


def _make_step(model: nn.Module, x: torch.Tensor, *, train: bool, dtype: torch.dtype,
               cast: bool = False) -> Callable[[], None]:
    """One inference forward, or one training step: forward, cross-entropy, backward, fused AdamW.

    Low precision runs under autocast, or, with ``cast`` (inference), with the model's weights and the input
    cast to ``dtype`` once: what a deploying user does, and faster for every implementation than autocast.
    """
    autocast = torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32 and not cast)
    if cast:
        model, x = model.to(dtype), x.to(dtype)
    if not train:
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(x)

        return infer
    model.train()
    target = torch.randint(0, NUM_CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    target = target.to(x.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], iters: int, device: torch.device, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(iters):
        step()
    _sync(device)
    return clock() - start


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines, which bypass Python's sys.stderr."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes of tensor memory one step allocates on top of what was alive before it (weights,
    optimizer state): the CUDA allocator's statistics, or on CPUs the profiler's allocation events."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _spread(values: Sequence[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def round_ratios(ours: Sequence[float], peer: Sequence[float]) -> dict:
    """Our speed over a peer's as the median (and range) of the per-round ratios, not the ratio of medians: both
    ran in the same round, so load that slowed one round for both cancels out."""
    return _spread([a / b for a, b in zip(ours, peer, strict=True)])


def _contenders(name: str, peers: Sequence[str], extra_peers: dict[str, Callable[[str], nn.Module | str]],
                train: bool, runtimes: Sequence[str], res: int, dtype: str, skipped: dict[str, str],
                int8_file: str | os.PathLike | None = None) -> dict[str, nn.Module]:
    ours = build_model(name, num_classes=NUM_CLASSES)
    models = {"convnext": ours}
    if dtype == "int8":  # against our float model and the runtimes' INT8 only
        peers, extra_peers = [], {"convnext-int8": lambda n: _our_int8(n, res, int8_file)}
    elif not train:
        models["convnext-fused"] = ours.fuse_for_inference()
    builders = {peer: PEER_BUILDERS[peer] for peer in peers} | extra_peers
    builders |= {runtime: (lambda n, build=RUNTIME_BUILDERS[runtime]: build(n, res, dtype)) for runtime in runtimes}
    for peer, builder in builders.items():
        built = builder(name)
        if isinstance(built, str):
            skipped[f"{name}/{peer}"] = built
        else:
            models[peer] = built
    return models


def _prepare(model: nn.Module, device: torch.device, channels_last: bool, compile_mode: str | None) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    return model


def _interleaved_rounds(steps: dict[str, Callable[[], None]], what: str, batch: int, rounds: int, warmup: int,
                        device: torch.device, clock: Callable[[], float], say: Callable[[str], None]
                        ) -> dict[str, list[float]]:
    """Images/s of each step in each round; a round runs every implementation in turn, each repeated for about
    ``ROUND_SECONDS`` (as its warm-up time says), so drift on the machine hits them all alike."""
    iters = {}
    for impl, step in steps.items():
        say(f"{what}: warming up {impl}")
        try:
            seconds = min(_time(step, 1, device, clock) for _ in range(max(warmup, 1)))
        except torch.OutOfMemoryError:
            raise UserError(f"{impl} ({what}) runs out of memory; try a smaller --batch") from None
        except torch._dynamo.exc.BackendCompilerFailed as err:  # e.g. no C++ compiler for CPU code
            first = str(err).strip().splitlines()[0]
            raise UserError(f"torch.compile failed for {impl}: {first}") from None
        iters[impl] = max(1, math.ceil(ROUND_SECONDS / max(seconds, 1e-6)))
    speeds: dict[str, list[float]] = {impl: [] for impl in steps}
    for r in range(rounds):
        say(f"{what}: round {r + 1}/{rounds}")
        for impl, step in steps.items():
            speeds[impl].append(batch * iters[impl] / _time(step, iters[impl], device, clock))
    return speeds


def _with_ratios(row: dict, speeds: dict[str, list[float]], dtype: str) -> dict:
    """Our rows get their speed ratio to each peer (median, min, max of per-round ratios); INT8 is measured
    against our own float32 eager model too."""
    impl = row["impl"]
    if impl in OURS and not (dtype == "int8" and impl == "convnext"):
        baselines = [p for p in speeds if p not in OURS or (dtype == "int8" and p == "convnext")]
        row["ratio"] = {peer: round_ratios(speeds[impl], speeds[peer]) for peer in baselines if peer != impl}
    return row


def _check_settings(res: int, rounds: int, warmup: int, dtype: str, train: bool, device: str | torch.device,
                    compile_mode: str | None, peers: Sequence[str]) -> torch.device:
    """One line for the first setting `run_benchmark` cannot measure with; the device to run on."""
    check_resolution(res)
    if rounds < 1 or warmup < 0:
        raise UserError(f"need at least one round and a non-negative warm-up, got {rounds} and {warmup}")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "int8" and (train or torch.device(device).type != "cpu" or compile_mode):
        raise UserError("--dtype int8 measures CPU inference of our quantized model: leave out --train, "
                        "--device and --compile")
    unknown = [p for p in peers if p not in PEER_BUILDERS and p not in RUNTIME_BUILDERS]
    if unknown:
        raise UserError(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS + RUNTIMES)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but PyTorch sees no CUDA device here")
    return device


def _runtimes(name: str, peers: Sequence[str], excluded: bool, skipped: dict[str, str]) -> list[str]:
    """The ONNX runtimes among ``peers``: they run our exported graph, so CPU inference only (else ``excluded``,
    each noted in ``skipped``)."""
    runtimes = [r for r in peers if r in RUNTIME_BUILDERS]
    if excluded:
        skipped |= {f"{name}/{r}": "runs our ONNX graph: CPU inference only" for r in runtimes}
        return []
    return runtimes


def run_benchmark(
    models: Sequence[str],
    *,
    batches: Sequence[int] = (1, 32),
    res: int = 224,
    dtype: str = "fp32",
    train: bool = False,
    peers: Sequence[str] = PEERS + RUNTIMES,
    channels_last: bool = False,
    compile_mode: str | None = None,
    rounds: int = 5,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    extra_peers: dict[str, Callable[[str], nn.Module | str]] | None = None,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    int8_file: str | os.PathLike | None = None,
) -> dict:
    """Measure our models and their peers; returns the report that `format_report` prints.

    Each result row: model, batch, implementation, images/s (median, min, max over ``rounds``), achieved
    TFLOP/s (training counts backward as twice the forward), peak step memory (MB), parameters and GMACs
    per image, and for our rows the ratio to each peer (median, min, max of per-round ratios).
    ``channels_last`` converts every model and input (ours runs channels_last regardless). At least one
    warm-up step runs whatever ``warmup`` says: its time sets how many steps make a round. ``clock``
    ``time.thread_time`` with one CPU thread counts only the CPU time the step used, which other processes
    on a shared machine cannot inflate (wall-clock time otherwise). ``dtype="int8"`` times our INT8 model:
    ``int8_file`` (from `convnext quantize`), or the model quantized on random images. bf16/fp16 inference
    casts every PyTorch model's weights and input (ours: the fused model in bf16); training uses autocast.
    """
    device = _check_settings(res, rounds, warmup, dtype, train, device, compile_mode, peers)
    say = progress or (lambda message: None)
    low_precision = None if dtype in ("fp32", "int8") else "autocast" if train else "weights cast"
    report = dict(machine=machine_info(device), settings=dict(
        res=res, dtype=dtype, mode="train" if train else "inference", channels_last=channels_last,
        compile=compile_mode, rounds=rounds, warmup=warmup, batches=list(batches), clock=clock.__name__,
        low_precision=low_precision), results=[], skipped={})
    for name in models:
        info = model_info(_meta(name), res)
        flops_per_image = 2 * info["gmacs"] * 1e9 * (3 if train else 1)
        runtimes = _runtimes(name, peers, train or device.type != "cpu" or dtype == "fp16" or bool(compile_mode),
                             report["skipped"])
        built = _contenders(name, [p for p in peers if p in PEER_BUILDERS], extra_peers or {}, train, runtimes, res,
                            dtype, report["skipped"], int8_file)
        contenders = {impl: m if impl in RUNTIME_BUILDERS or impl == "convnext-int8"
                      else _prepare(m, device, channels_last, compile_mode) for impl, m in built.items()}
        for batch in batches:
            x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(0)).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            steps = {impl: _make_step(m, x, train=train, dtype=DTYPES[dtype], cast=low_precision == "weights cast"
                                      and impl not in RUNTIME_BUILDERS) for impl, m in contenders.items()}
            speeds = _interleaved_rounds(steps, f"{name} batch {batch}", batch, rounds, warmup, device, clock, say)
            for impl, step in steps.items():
                row = dict(model=name, batch=batch, impl=impl, img_s=_spread(speeds[impl]),
                           tflops=statistics.median(speeds[impl]) * flops_per_image / 1e12,
                           peak_mem_mb=peak_memory(step, device) / 2**20, params=info["params"],
                           gmacs=info["gmacs"])
                report["results"].append(_with_ratios(row, speeds, dtype))
    return report


def format_report(report: dict) -> str:
    """The report as a table: one line per model, batch and implementation."""
    m, s = report["machine"], report["settings"]
    dtype = "int8 (the `convnext` row: our float32 model, the baseline)" if s["dtype"] == "int8" else s["dtype"]
    if s.get("low_precision"):
        dtype += f" ({s['low_precision']})"
    options = [dtype] + ["channels_last"] * s["channels_last"] + [f"compile={s['compile']}"] * bool(s["compile"])
    lines = [f"{s['mode']} at {s['res']}x{s['res']}, {', '.join(options)} | {_where(m)} | torch {m['torch']} | "
             f"{s['rounds']} rounds | {m['date']}",
             f"{'model':<24} {'batch':>5}  {'implementation':<16} {'img/s':>8} {'[min - max]':<17} {'TFLOP/s':>7} "
             f"{'peak MB':>8}  ratio to peers (median [min - max] over rounds)"]
    for row in report["results"]:
        speed = row["img_s"]
        ratios = ", ".join(f"{peer} {r['median']:.2f}x [{r['min']:.2f} - {r['max']:.2f}]"
                           for peer, r in row.get("ratio", {}).items())
        spread = f"[{speed['min']:.2f} - {speed['max']:.2f}]"
        lines.append(f"{row['model']:<24} {row['batch']:>5}  {row['impl']:<16} {speed['median']:>8.2f} {spread:<17} "
                     f"{row['tflops']:>7.3f} {row['peak_mem_mb']:>8.0f}  {ratios}")
    sizes = {row["model"]: f"{row['model']}: {row['params'] / 1e6:.2f}M parameters, {row['gmacs']:.2f} GMACs/image"
             for row in report["results"]}
    lines += list(sizes.values())
    lines += [f"skipped {what}: {why}" for what, why in report["skipped"].items()]
    return "\n".join(lines)


def _where(machine: dict) -> str:
    threads = machine["threads"]
    return machine["gpu"] or f"{machine['cpu']} ({threads} thread{'s' * (threads != 1)})"


def plot_throughput(report: dict, path: str | os.PathLike) -> None:
    """Images/s against GMACs per image, one line per implementation and batch size, marker area growing with
    the parameter count: the paper's Figure 1 with throughput in place of accuracy."""
    from matplotlib.figure import Figure  # drawing only: keep matplotlib out of `import convnext`
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    series: dict[tuple[str, int], list[dict]] = {}
    for row in report["results"]:
        series.setdefault((row["impl"], row["batch"]), []).append(row)
    for (impl, batch), rows in series.items():
        rows = sorted(rows, key=lambda r: r["gmacs"])
        gmacs, speed = [r["gmacs"] for r in rows], [r["img_s"]["median"] for r in rows]
        line, = ax.plot(gmacs, speed, "-" if impl in OURS else "--", label=f"{impl}, batch {batch}")
        ax.scatter(gmacs, speed, s=[20 + r["params"] / 1e6 for r in rows], color=line.get_color(), alpha=0.6)
        if impl == OURS[0]:
            for r in rows:
                ax.annotate(r["model"].removeprefix("convnext_"), (r["gmacs"], r["img_s"]["median"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
    m, s = report["machine"], report["settings"]
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))
    ax.set_xlabel(f"GMACs per {s['res']}x{s['res']} image (marker area grows with the parameter count)")
    ax.set_ylabel(f"{'training' if s['mode'] == 'train' else 'inference'} images/s (median)")
    ax.set_title(f"ConvNeXt throughput, {s['dtype']}, {_where(m)}, torch {m['torch']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
