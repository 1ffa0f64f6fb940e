"""Post-training static INT8 quantization for CPUs: OpenVINO's runtime, calibrated with NNCF.

The model leaves PyTorch through our ONNX export (inference-fused, plain ATen ops), OpenVINO reads that
graph, and NNCF inserts quantize/dequantize pairs whose ranges it measures on calibration images. NNCF's
"transformer" model type keeps every normalisation in float (ConvNeXt's LayerNorms re-centre each pixel's
channels, which an 8-bit grid around the old mean would distort), and the classifier head stays float
by default, as the paper's fine-tuning results depend on its small logit margins. README's INT8 section
says why this toolchain and not PT2E/Inductor or ONNX Runtime's QDQ, with the measurements.

The artefact is OpenVINO IR: ``FILE.xml`` (the graph, with the model's name, class names and
preprocessing in its ``rt_info``) and ``FILE.bin`` (the weights), written atomically, ``.bin`` first.
`QuantizedModel` (in `convnext.weights.int8`, which reads the files back) runs it like one of our models
(images in, logits out), so ``predict``, ``evaluate`` and ``benchmark`` take it through ``load_model``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.images import eval_transform, load_image
from ..errors import UserError
from ..files import atomic_path, make_folder, remove_dead_temps, temp_path, write_problem
from ..tasks.classification.evaluate import Agreement, describe_agreement
from ..tasks.classification.predict import find_images
from ..weights.int8 import _RT_KEY, BACKENDS, SUFFIX, QuantizedModel, load_quantized, require_backend

__all__ = ["BACKENDS", "DEFAULT_SAMPLES", "SUFFIX", "QuantizedModel", "calibration_images", "compare", "load_quantized",
           "quantize", "report_lines", "require_backend", "save_quantized"]

DEFAULT_SAMPLES = 300


def calibration_images(folder: str | os.PathLike, config: dict, *, samples: int = DEFAULT_SAMPLES
                       ) -> tuple[torch.Tensor, list[str]]:
    """Up to ``samples`` images of ``folder`` (searched recursively, spread evenly over its sorted files),
    preprocessed as for evaluation; returns them as one tensor, and the files that could not be read."""
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    if not Path(folder).is_dir():
        raise UserError(f"calibration folder not found: {folder}")
    files = find_images([folder])
    picked = [files[i * len(files) // min(samples, len(files))] for i in range(min(samples, len(files)))]
    transform = eval_transform(config)
    images, skipped = [], []
    for path in picked:
        try:
            images.append(transform(load_image(path)))
        except UserError as err:
            skipped.append(str(err))
    if not images:
        raise UserError(f"none of the {len(picked)} images in {folder} could be read")
    return torch.stack(images), skipped


def _ignored_head(ov_model) -> list[str]:
    """Names of the MatMul (or Gemm) nodes that read the pooled features: the classifier head."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and len(op.get_output_partial_shape(0)) == 2]


def quantize(model: nn.Module, calibration: torch.Tensor, *, backend: str = "openvino",
             keep_head_float: bool = True, batch_size: int = 16) -> QuantizedModel:
    """INT8 ``model`` (a float model with ``pretrained_cfg``) calibrated on ``calibration`` images."""
    require_backend(backend)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime", as NNCF loads
    import nncf
    import openvino

    from .export import export_metadata, export_onnx

    model = model.eval()
    res = calibration.shape[-1]
    with tempfile.TemporaryDirectory(prefix="convnext-int8-") as tmp:
        # LayerNorms as channel-axis reductions: OpenVINO's INT8 graph then has no transposes around them
        onnx_path = export_onnx(model.fuse_for_inference(), Path(tmp) / "model.onnx", res=res,
                                norms_over_channels=True)
        ov_model = openvino.convert_model(onnx_path)
    batches = [b.numpy() for b in calibration.split(batch_size)]
    ignored = nncf.IgnoredScope(names=_ignored_head(ov_model)) if keep_head_float else None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: on stderr, like ours
        quantized = nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(calibration),
                                  model_type=nncf.ModelType.TRANSFORMER, ignored_scope=ignored)
    metadata = export_metadata(model) | {"quantization": json.dumps(dict(
        backend=backend, tool=f"nncf {nncf.__version__}", calibration_images=len(calibration),
        head="float" if keep_head_float else "int8"))}
    for key, value in metadata.items():
        quantized.set_rt_info(value, [_RT_KEY, key])
    return QuantizedModel(quantized, metadata)


def save_quantized(model: QuantizedModel, path: str | os.PathLike) -> Path:
    """Write ``FILE.xml`` + ``FILE.bin`` atomically: the weights land before the graph that names them."""
    import openvino

    path = Path(path)
    if path.suffix != SUFFIX:
        raise UserError(f"an OpenVINO INT8 model is written as FILE{SUFFIX} (+ FILE.bin), got {path}")
    make_folder(path.parent)
    staging = path.with_name(f"{path.stem}.ir")  # a folder named by this process: a rerun removes a killed one's
    remove_dead_temps(staging)
    tmp = temp_path(staging)
    try:
        tmp.mkdir()
        openvino.save_model(model.ov_model, tmp / "model.xml", compress_to_fp16=False)
        with atomic_path(path.with_suffix(".bin")) as bin_tmp:
            os.replace(tmp / "model.bin", bin_tmp)
        with atomic_path(path) as xml_tmp:
            os.replace(tmp / "model.xml", xml_tmp)
    except (OSError, RuntimeError) as err:  # OpenVINO's writer raises RuntimeError for a full disk
        problem = write_problem(path, err)
        if problem is None:
            raise
        raise problem from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@torch.inference_mode()
def compare(reference: nn.Module, quantized: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict:
    """How far the INT8 logits stray from the float model's on ``images`` (`Agreement`'s measures)."""
    agreement = Agreement(reference, torch.device("cpu"))
    for batch in images.split(batch_size):
        agreement.add(batch, quantized(batch).float())
    return agreement.result()


def report_lines(agreement: dict, accuracy: Sequence[tuple[str, dict]] | None = None) -> Iterable[str]:
    """The human-readable summary `convnext quantize` prints."""
    yield f"calibration images: {describe_agreement(agreement)}"
    if accuracy:
        (_, fp32), (_, int8) = accuracy
        yield (f"validation ({fp32['count']} images): float32 top-1 {fp32['top1']:.2f}%, INT8 top-1 "
               f"{int8['top1']:.2f}%, drop {fp32['top1'] - int8['top1']:.2f} points")
