"""INT8 models that `convnext quantize` writes (OpenVINO IR: ``FILE.xml`` + ``FILE.bin``), read back as a module.

Reading lives here, beside the other checkpoint readers, so that ``convnext.tasks.loading.load_model`` takes an
INT8 file without importing the quantization toolchain (`convnext.deploy.quantize` writes the files). OpenVINO is
imported on first use only.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

BACKENDS = ("openvino",)
SUFFIX = ".xml"
_RT_KEY = "convnext"  # our entries in the IR's rt_info


def require_backend(backend: str) -> None:
    """One line, before any work, when ``backend`` is unknown or its packages are missing."""
    if backend not in BACKENDS:
        raise UserError(f"unsupported quantization backend {backend!r}; choose from {', '.join(BACKENDS)}")
    missing = [m for m in ("openvino", "nncf", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"INT8 quantization needs {' and '.join(missing)}: pip install 'convnext[int8]'")


class QuantizedModel(nn.Module):
    """An INT8 OpenVINO model called like ours: float images in, float logits out (on the CPU)."""

    def __init__(self, ov_model, metadata: dict[str, str]):
        super().__init__()
        self.ov_model = ov_model
        self.model_name = metadata["model"]
        self.num_classes = int(metadata["num_classes"])
        self.pretrained_cfg = json.loads(metadata["pretrained_cfg"])
        self._compiled = None
        self._threads = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise UserError("an INT8 OpenVINO model runs on the CPU; leave out --device")
        threads = torch.get_num_threads()
        if self._compiled is None or self._threads != threads:  # compiled for the thread count in force
            import openvino

            self._compiled = openvino.Core().compile_model(self.ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads})
            self._threads = threads
        return torch.from_numpy(self._compiled(x.detach().float().contiguous().numpy())[0])

    def fuse_for_inference(self, dtype: torch.dtype | None = None) -> QuantizedModel:
        """Already folded by the export; an INT8 model has no float dtype to cast to."""
        if dtype not in (None, torch.float32):
            raise UserError("an INT8 model runs in its own precision: leave out --dtype")
        return self


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """A `QuantizedModel` from the ``.xml`` that `save_quantized` wrote (its ``.bin`` beside it)."""
    require_backend("openvino")
    import openvino

    path = Path(path)
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise UserError(f"{path} needs both {path.name} and {path.with_suffix('.bin').name}")
    try:
        ov_model = openvino.Core().read_model(path)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1]  # OpenVINO's own words come last, after its source locations
        raise UserError(f"{path} is not an OpenVINO model, or its .bin is damaged: {reason}") from None
    info = ov_model.get_rt_info()
    if _RT_KEY not in info:
        raise UserError(f"{path} was not written by `convnext quantize` (no model name or preprocessing in it)")
    return QuantizedModel(ov_model, {k: str(v.value) for k, v in info[_RT_KEY].items()})
