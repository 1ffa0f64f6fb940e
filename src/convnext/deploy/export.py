"""Take a trained model out of Python: ONNX, TorchScript, ``torch.export`` programs and safetensors weights.

Graph formats carry the inference-fused model by default (``model.fuse_for_inference()``); every export is
written atomically and checked against the unfused PyTorch model on a batch of another size than the one it
was traced with, which also proves the batch axis is really dynamic.

ONNX uses opset 18 by default (17 at least): from opset 17 on, each LayerNorm is one ``LayerNormalization``
node (``stash_type=1``: mean and variance in float32 even for float16 inputs; TensorRT builds it as an
``INormalizationLayer``) instead of a ReduceMean/Sub/Pow/Sqrt/Div chain, whose squares overflow float16
(max 65504) once activations stray ~256 from their mean.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_path, check_output_file
from ..models.convnext import check_input, check_resolution
from ..models.fuse import portable
from ..models.kernels import DECOMPOSITIONS
from ..models.layers import LayerNorm2d, as_plain_convs
from ..protocol import FromRun, Preprocessed, model_name
from ..tasks.loading import load_model
from ..weights import data_config, save_weights
from ..weights.int8 import QuantizedModel

FORMATS = ("onnx", "torchscript", "pt2", "safetensors")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}  # what readers tell these formats by
ONNX_OPSET = 18
MIN_ONNX_OPSET = 18  # LayerNormalization is in 17, but torch's exporter writes 18 at the least
TOLERANCE = 1e-4  # max abs difference of float32 logits accepted from an exported model
BF16_TOLERANCE = 0.02  # bf16 exports: max abs difference as a fraction of the largest float32 logit
EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BF16_FORMATS = ("torchscript", "pt2")  # ONNX Runtime has no bf16 CPU kernels; safetensors keeps trained weights
CHECK_BATCH = 3  # checks run at another batch size than the export example (2): the batch axis is dynamic


# Settings of a run that name folders of the machine it ran on: no business of a deployed file.
MACHINE_PATHS = ("data", "val_data", "output", "finetune")


class OnnxCheck(NamedTuple):
    max_abs_diff: float
    layer_norms: int  # LayerNormalization nodes in the graph
    decomposed_norm_ops: int  # Pow and Sqrt nodes: what a decomposed LayerNorm would leave behind


def example_input(model: nn.Module, batch: int = 2, res: int | None = None) -> torch.Tensor:
    """A fixed random image batch at the model's input size (``res`` overrides it), in the model's dtype."""
    size = res or _config(model)["input_size"][-1]
    generator = torch.Generator().manual_seed(0)
    weight = next(model.parameters())
    x = torch.randn(batch, model.in_chans, size, size, generator=generator).to(weight.device, weight.dtype)
    check_input(model, x)
    return x


def export_metadata(model: nn.Module) -> dict[str, str]:
    """What a deployment needs besides the graph: which model, how many classes, how to preprocess (and
    class names, when the weights carry them); for a model from a training run, that run's configuration."""
    metadata = {
        "model": model_name(model),
        "num_classes": str(model.num_classes),
        "pretrained_cfg": json.dumps(_config(model)),
    }
    if isinstance(model, FromRun) and model.run_config:
        portable = {k: v for k, v in model.run_config.items() if k not in MACHINE_PATHS}
        metadata["run_config"] = json.dumps(portable)
    return metadata


def _config(model: nn.Module) -> dict:
    return model.pretrained_cfg if isinstance(model, Preprocessed) and model.pretrained_cfg else data_config()


def _batch_axis() -> tuple[dict[int, torch.export.Dim]]:
    return ({0: torch.export.Dim("batch")},)


def export_program(model: nn.Module, *, res: int | None = None) -> torch.export.ExportedProgram:
    """The model as a ``torch.export`` program with a dynamic batch axis (for AOTInductor, ExecuTorch, ...),
    in plain ATen ops: our custom op is decomposed, so loading the program does not need this package."""
    program = torch.export.export(model.eval(), (example_input(model, 2, res),), dynamic_shapes=_batch_axis())
    return program.run_decompositions(DECOMPOSITIONS)


def _name_batch_axis(graph) -> None:
    """Call the exported program's batch symbol (``s77`` or so) "batch" wherever the ONNX graph has it."""
    symbol = str(graph.inputs[0].shape[0])
    values = [*graph.inputs, *graph.outputs, *(v for node in graph.all_nodes() for v in node.outputs)]
    for value in values:
        if value.shape is not None and symbol in map(str, value.shape):
            value.shape = type(value.shape)(["batch" if str(d) == symbol else d for d in value.shape])


def save_program(model: nn.Module, path: str | os.PathLike, *, res: int | None = None) -> Path:
    """``torch.export.save`` of :func:`export_program`, with :func:`export_metadata` as ``convnext.json``."""
    if Path(path).suffix != ".pt2":
        raise UserError(f"a torch.export archive must end in .pt2, got {path}")
    program = export_program(model, res=res)
    for node in program.graph.nodes:  # each node's Python stack names this machine's source files
        node.meta.pop("stack_trace", None)
    archive = io.BytesIO()  # written in memory: the archive's folder is then "archive", not the temp file's name
    with warnings.catch_warnings():
        # torch's archive writer says this of weights that share storage; ours are on the CPU, which it needs
        warnings.filterwarnings("ignore", "No complete tensor found in the group", UserWarning)
        torch.export.save(program, archive, extra_files={"convnext.json": json.dumps(export_metadata(model))})
    with atomic_path(path) as tmp:
        tmp.write_bytes(archive.getvalue())
    return Path(path)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, res: int | None = None,
                opset: int = ONNX_OPSET, norms_over_channels: bool = False) -> Path:
    """ONNX with a dynamic ``batch`` axis, input ``images`` and output ``logits``; :func:`export_metadata` goes
    into the model's metadata_props. One file (our largest model is < 2 GB). Each LayerNorm is a native
    LayerNormalization between two transposes, or with ``norms_over_channels`` reductions over the channel axis
    (no transposes: what OpenVINO runs fastest, see `LayerNorm2d`)."""
    _require("ONNX export", "onnx", "onnxscript")
    import onnx

    if not MIN_ONNX_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise UserError(f"--opset must be from {MIN_ONNX_OPSET} (the lowest torch's exporter writes) to "
                        f"{onnx.defs.onnx_opset_version()} (the newest onnx {onnx.__version__} knows), got {opset}")
    with warnings.catch_warnings(), _quiet("torch.onnx"), _quiet("onnxscript"):
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecations, not ours
        program = torch.onnx.export(_program(model, res, norms_over_channels), dynamo=True, opset_version=opset,
                                    input_names=["images"], output_names=["logits"], verbose=False)
    written = program.model.opset_imports.get("", opset)
    if written != opset:  # the exporter's version converter gave up and kept its own opset
        raise UserError(f"torch's exporter could not write opset {opset} (it kept {written}); use --opset {written}")
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()  # the exporter's debug notes: stack traces with this machine's paths
    _name_batch_axis(program.model.graph)
    program.model.metadata_props.update(export_metadata(model))
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return Path(path)


def _program(model: nn.Module, res: int | None, norms_over_channels: bool) -> torch.export.ExportedProgram:
    """`export_program` with the LayerNorms in the form asked for; ``model`` is left as it was."""
    before = {norm: norm.over_channels for norm in model.modules() if isinstance(norm, LayerNorm2d)}
    for norm in before:
        norm.over_channels = norms_over_channels
    try:
        return export_program(model, res=res)
    finally:
        for norm, value in before.items():
            norm.over_channels = value


def _require(purpose: str, *modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{purpose} needs {' and '.join(missing)}: pip install 'convnext[export]'")


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hide a library's info/warning log lines (e.g. "torchvision is not installed") for a while."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def check_onnx(path: str | os.PathLike, reference: nn.Module, *, batch: int = CHECK_BATCH,
               res: int | None = None) -> OnnxCheck:
    """Run the file in onnxruntime against ``reference`` and look at how its LayerNorms were exported."""
    _require("checking an ONNX export", "onnx", "onnxruntime")
    import onnx
    import onnxruntime

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own pybind types
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} was written, but onnxruntime {onnxruntime.__version__} cannot run it to check it "
                        f"({first}); the default opset ({ONNX_OPSET}) runs there") from None
    x = example_input(reference, batch, res)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})
    diff = _max_abs_diff(torch.from_numpy(logits), reference, x)
    return OnnxCheck(diff, ops.count("LayerNormalization"), sum(op in ("Pow", "Sqrt") for op in ops))


def export_torchscript(model: nn.Module, path: str | os.PathLike, *, res: int | None = None,
                       script: bool = False) -> Path:
    """A TorchScript archive, traced (default) or scripted, with :func:`export_metadata` as
    ``convnext.json``. PyTorch has deprecated TorchScript; prefer ONNX or ``torch.export`` (pt2)."""
    # plain layers and ATen ops only (the caller's model keeps its own): the file loads without this package
    model = portable(as_plain_convs(copy.deepcopy(model).eval()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the user asked for TorchScript by name
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 words the same deprecation so
        if script:
            try:
                module = torch.jit.script(model)
            except Exception as err:  # noqa: BLE001 - the compiler raises many types
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"TorchScript cannot compile this model ({first}); the traced form runs "
                                "the same graph: leave out --script") from None
        else:
            # Shape checks in forward become constants in a trace; we verify at another batch size instead.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            module = torch.jit.trace(model, example_input(model, 2, res), check_trace=False)
        archive = io.BytesIO()
        torch.jit.save(module, archive, _extra_files={"convnext.json": json.dumps(export_metadata(model))})
    with atomic_path(path) as tmp:
        tmp.write_bytes(without_debug_info(archive.getvalue()))
    return Path(path)


def without_debug_info(archive: bytes) -> bytes:
    """A TorchScript archive without its ``*.debug_pkl`` records: they map the code to the source files it was
    compiled from, by this machine's paths, which a shipped file must not carry; the model loads and runs the
    same without them (error messages then name no Python line)."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for record in source.infolist():
            if not record.filename.endswith(".debug_pkl"):
                target.writestr(record, source.read(record.filename))
    return out.getvalue()


def load_torchscript(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` without PyTorch's TorchScript deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device)


def check_module(loaded: nn.Module, reference: nn.Module, *, batch: int = CHECK_BATCH,
                 res: int | None = None, dtype: torch.dtype = torch.float32) -> float:
    """Max abs difference between a reloaded export (TorchScript or ``torch.export``, taking ``dtype`` input)
    and ``reference``."""
    x = example_input(reference, batch, res)
    with torch.inference_mode():
        return _max_abs_diff(loaded(x.to(dtype)), reference, x)


def _max_abs_diff(logits: torch.Tensor, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        expected = reference.eval()(x)
    if logits.shape != expected.shape:
        raise UserError(f"exported model returned shape {tuple(logits.shape)}, expected {tuple(expected.shape)}")
    return (logits.float().cpu() - expected.float().cpu()).abs().max().item()


def export_safetensors(model: nn.Module, path: str | os.PathLike) -> Path:
    """Our weights (official key names, never fused) with :func:`export_metadata`, which ``convnext predict
    --checkpoint`` reads back (class count and preprocessing)."""
    return save_weights(model, path, export_metadata(model))


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str, *, res: int | None = None,
                 opset: int = ONNX_OPSET, script: bool = False, fuse: bool = True, dtype: str = "fp32",
                 norms_over_channels: bool = False) -> dict:
    """Write ``model`` as ``fmt``, load the file back, run it on a ``CHECK_BATCH`` batch and compare it with
    ``model`` itself.

    Graph formats export ``model.fuse_for_inference()`` unless ``fuse=False`` (LayerNorm affine and layer
    scale folded into the pointwise weights: fewer nodes, same logits); safetensors always holds the
    unfused weights under the official names. Returns a report: the file, its size, the max abs difference
    of the logits (``passed`` when it is within ``TOLERANCE``) and, for ONNX, the LayerNorm node counts.
    ``dtype="bf16"`` (TorchScript, pt2) casts the weights once and takes bf16 images; it passes within
    ``BF16_TOLERANCE`` of the largest float32 logit. ``norms_over_channels``: see `export_onnx` (ONNX only).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if dtype != "fp32" and fmt not in BF16_FORMATS:
        raise UserError(f"--dtype {dtype} is for {', '.join(BF16_FORMATS)} (ONNX Runtime has no bf16 CPU kernels; "
                        "safetensors keeps the trained float32 weights)")
    check_output_file(path)
    if norms_over_channels and not fuse:  # the model as trained keeps its block norms on NHWC tensors
        raise UserError("--layer-norms channels rewrites the fused model's LayerNorms: leave out --no-fuse")
    if fmt == "safetensors" and Path(path).suffix != ".safetensors":  # loaders tell the format by the suffix
        raise UserError(f"--out {path}: a safetensors file must end in .safetensors")
    claimed = next((other for other, suffix in SUFFIXES.items() if suffix == Path(path).suffix and other != fmt), None)
    if claimed:  # e.g. ONNX written into model.pt2, which every reader would then take for a pt2 program
        raise UserError(f"--out {path}: the name says {claimed}, but --format {fmt} writes {fmt}; name it "
                        f"{Path(path).stem}{SUFFIXES.get(fmt, '.pt')}")
    if isinstance(model, QuantizedModel):
        raise UserError(f"{model_name(model)} is an INT8 model (OpenVINO IR), already a deployable file: export "
                        "the float checkpoint it was made from")
    if res is not None:
        check_resolution(res)
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        model(example_input(model, 1, res))  # a size the model cannot take fails here, in its own words
    fuse, cast = fuse and fmt != "safetensors", EXPORT_DTYPES[dtype]
    if fuse:
        exported = model.fuse_for_inference(cast)
    else:
        exported = model if dtype == "fp32" else copy.deepcopy(model).to(cast)
    report: dict = {"model": model_name(model), "format": fmt, "path": str(path),
                    "res": res or _config(model)["input_size"][-1], "fused": fuse, "dtype": dtype}
    if fmt == "onnx":
        _require("ONNX export", "onnx", "onnxscript", "onnxruntime")  # before any work, not after it
        export_onnx(exported, path, res=res, opset=opset, norms_over_channels=norms_over_channels)
        check = check_onnx(path, model, res=res)
        diff = check.max_abs_diff
        report.update(opset=opset, layer_norm_nodes=check.layer_norms, decomposed_norm_ops=check.decomposed_norm_ops)
    elif fmt == "torchscript":
        export_torchscript(exported, path, res=res, script=script)
        diff = check_module(load_torchscript(path, device), model, res=res, dtype=cast)
        report["torchscript"] = "scripted" if script else "traced"
    elif fmt == "pt2":
        save_program(exported, path, res=res)
        diff = check_module(torch.export.load(path).module(), model, res=res, dtype=cast)
    else:
        export_safetensors(model, path)
        diff = check_module(load_model(report["model"], checkpoint=path).to(device), model, res=res)
    report.update(bytes=Path(path).stat().st_size, max_abs_diff=diff, check_batch=CHECK_BATCH,
                  tolerance=_tolerance(model, res, dtype))
    report["passed"] = diff <= report["tolerance"]
    return report


def _tolerance(model: nn.Module, res: int | None, dtype: str) -> float:
    if dtype == "fp32":
        return TOLERANCE
    with torch.inference_mode():
        return BF16_TOLERANCE * model(example_input(model, CHECK_BATCH, res)).abs().max().item()
