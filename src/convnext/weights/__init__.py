"""Checkpoints: read every released layout, convert it to the official key names, load it strictly.

Also the registry of released weights (official FAIR files and their Hugging Face conversions) and the
download/cache logic behind ``create_model(..., pretrained=True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import socket
import urllib.error
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UserError
from ..files import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/convnext/"


def data_config(res: int = 224) -> dict:
    """Evaluation preprocessing of the paper: crop 0.875 below 384, a plain resize (crop 1.0) at 384 and up."""
    return dict(
        input_size=(3, res, res),
        crop_pct=1.0 if res >= 384 else 0.875,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


# The label sets released heads are trained on; their names ship with the package (convnext/data/).
LABEL_SETS = {"imagenet-1k": 1000, "imagenet-22k": 21841}


@dataclass(frozen=True)
class PretrainedWeights:
    """One released checkpoint, described explicitly: file, evaluation resolution and crop, the label set of
    its head, its ImageNet-1K top-1 (official README) and, where we have one, the file's sha256."""

    model: str
    tag: str
    file: str
    top1: float | None
    res: int
    crop_pct: float
    label_set: str  # a key of LABEL_SETS: which names the head's outputs carry
    hf_hub_id: str | None = None
    sha256: str | None = None  # None: not verified by us yet, so downloads are not hash-checked

    @property
    def num_classes(self) -> int:
        return LABEL_SETS[self.label_set]

    @property
    def url(self) -> str:
        return OFFICIAL_URL + self.file

    @property
    def data_config(self) -> dict:
        return dict(data_config(self.res), crop_pct=self.crop_pct, label_set=self.label_set)


IN1K, IN22K = "imagenet-1k", "imagenet-22k"
_AT_224, _AT_384 = (224, 0.875), (384, 1.0)  # the paper's evaluation: crop 0.875 at 224, none at 384


def _weights(model: str, rows: list[tuple]) -> list[PretrainedWeights]:
    return [PretrainedWeights(model, tag, file, top1, res, crop, labels, hub)
            for tag, file, top1, (res, crop), labels, hub in rows]


def _fb(size: str, suffix: str) -> str:
    return f"facebook/convnext-{size}-{suffix}"


# The official tables (README of facebookresearch/ConvNeXt). The first tag of a model is its default. No
# sha256 yet: the project has not downloaded and hashed these files on a trusted connection.
PRETRAINED: list[PretrainedWeights] = [
    *_weights("convnext_tiny", [
        ("in1k", "convnext_tiny_1k_224_ema.pth", 82.1, _AT_224, IN1K, _fb("tiny", "224")),
        ("in1k_noema", "convnext_tiny_1k_224.pth", None, _AT_224, IN1K, None),
        ("in22k", "convnext_tiny_22k_224.pth", None, _AT_224, IN22K, None),
        ("in22k_ft_in1k", "convnext_tiny_22k_1k_224.pth", 82.9, _AT_224, IN1K, None),
        ("in22k_ft_in1k_384", "convnext_tiny_22k_1k_384.pth", 84.1, _AT_384, IN1K, None),
    ]),
    *_weights("convnext_small", [
        ("in1k", "convnext_small_1k_224_ema.pth", 83.1, _AT_224, IN1K, _fb("small", "224")),
        ("in1k_noema", "convnext_small_1k_224.pth", None, _AT_224, IN1K, None),
        ("in22k", "convnext_small_22k_224.pth", None, _AT_224, IN22K, None),
        ("in22k_ft_in1k", "convnext_small_22k_1k_224.pth", 84.6, _AT_224, IN1K, None),
        ("in22k_ft_in1k_384", "convnext_small_22k_1k_384.pth", 85.8, _AT_384, IN1K, None),
    ]),
    *_weights("convnext_base", [
        ("in1k", "convnext_base_1k_224_ema.pth", 83.8, _AT_224, IN1K, _fb("base", "224")),
        ("in1k_noema", "convnext_base_1k_224.pth", None, _AT_224, IN1K, None),
        ("in1k_384", "convnext_base_1k_384.pth", 85.1, _AT_384, IN1K, _fb("base", "384")),
        ("in22k", "convnext_base_22k_224.pth", None, _AT_224, IN22K, _fb("base", "224-22k")),
        ("in22k_ft_in1k", "convnext_base_22k_1k_224.pth", 85.8, _AT_224, IN1K, _fb("base", "224-22k-1k")),
        ("in22k_ft_in1k_384", "convnext_base_22k_1k_384.pth", 86.8, _AT_384, IN1K, _fb("base", "384-22k-1k")),
    ]),
    *_weights("convnext_large", [
        ("in1k", "convnext_large_1k_224_ema.pth", 84.3, _AT_224, IN1K, _fb("large", "224")),
        ("in1k_384", "convnext_large_1k_384.pth", 85.5, _AT_384, IN1K, _fb("large", "384")),
        ("in22k", "convnext_large_22k_224.pth", None, _AT_224, IN22K, _fb("large", "224-22k")),
        ("in22k_ft_in1k", "convnext_large_22k_1k_224.pth", 86.6, _AT_224, IN1K, _fb("large", "224-22k-1k")),
        ("in22k_ft_in1k_384", "convnext_large_22k_1k_384.pth", 87.5, _AT_384, IN1K, _fb("large", "384-22k-1k")),
    ]),
    *_weights("convnext_xlarge", [
        ("in22k_ft_in1k", "convnext_xlarge_22k_1k_224_ema.pth", 87.0, _AT_224, IN1K, _fb("xlarge", "224-22k-1k")),
        ("in22k_ft_in1k_384", "convnext_xlarge_22k_1k_384_ema.pth", 87.8, _AT_384, IN1K,
         _fb("xlarge", "384-22k-1k")),
        ("in22k", "convnext_xlarge_22k_224.pth", None, _AT_224, IN22K, _fb("xlarge", "224-22k")),
    ]),
    *_weights("convnext_isotropic_small", [("in1k", "convnext_iso_small_1k_224_ema.pth", 78.7, _AT_224, IN1K, None)]),
    *_weights("convnext_isotropic_base", [("in1k", "convnext_iso_base_1k_224_ema.pth", 82.0, _AT_224, IN1K, None)]),
    *_weights("convnext_isotropic_large", [("in1k", "convnext_iso_large_1k_224_ema.pth", 82.6, _AT_224, IN1K, None)]),
]


# The released UperNet weights (`convnext.weights.segmentation` reads their layout).
ADE20K = "ade20k-150"
LABEL_SETS[ADE20K] = 150  # the segmentation weights' classes

# The official ADE20K files (README of facebookresearch/ConvNeXt, semantic_segmentation/): mIoU single-scale /
# multi-scale+flip from the paper's Table 4, and the crop they were trained at.
ADE20K_MIOU = {
    ("upernet_convnext_tiny", "ade20k"): (46.0, 46.7),
    ("upernet_convnext_small", "ade20k"): (48.7, 49.6),
    ("upernet_convnext_base", "ade20k"): (49.1, 49.9),
    ("upernet_convnext_base", "ade20k_in22k"): (52.6, 53.1),
    ("upernet_convnext_large", "ade20k_in22k"): (53.2, 53.7),
    ("upernet_convnext_xlarge", "ade20k_in22k"): (53.6, 54.0),
}


def _ade20k_entry(model: str, tag: str) -> PretrainedWeights:
    size = model.rsplit("_", 1)[1]
    pretraining, crop = ("22k", 640) if tag.endswith("in22k") else ("1k", 512)
    return PretrainedWeights(model, tag, f"ade20k/upernet_convnext_{size}_{pretraining}_{crop}x{crop}.pth",
                             None, crop, 1.0, ADE20K)


ADE20K_WEIGHTS = [_ade20k_entry(model, tag) for model, tag in ADE20K_MIOU]
PRETRAINED.extend(ADE20K_WEIGHTS)  # one registry: `convnext info` and create_model(pretrained=...) find them


def list_pretrained(model: str | None = None) -> list[PretrainedWeights]:
    return [w for w in PRETRAINED if model is None or w.model == model]


def get_pretrained(model: str, tag: str | bool = True) -> PretrainedWeights:
    """The registry entry for ``model`` and ``tag`` (``True``: the model's default weights)."""
    if isinstance(tag, str) and (Path(tag).suffix in (".pt", ".pth", ".bin", ".safetensors") or os.sep in tag):
        raise UserError(f"--pretrained {tag}: takes the tag of released weights (`convnext models` lists them); "
                        "a weights file goes to --checkpoint")
    available = list_pretrained(model)
    if not available:
        raise UserError(f"no released weights for {model!r}; models with weights: "
                        f"{sorted({w.model for w in PRETRAINED})}")
    if tag is True:
        return available[0]
    for entry in available:
        if entry.tag == tag:
            return entry
    raise UserError(f"{model} has no weights tagged {tag!r}; available: {[w.tag for w in available]}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("CONVNEXT_OFFLINE") == "1"


NETWORK_TIMEOUT = 20  # seconds a connection or a read may stall before a download counts as failed


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub opens URLs without a timeout; a black-holed network would hang for minutes."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _unreachable(err: BaseException) -> bool:
    """The server was not reached at all (no DNS, no route, refused, timed out), as opposed to an answer
    from it (HTTP 404, a bad file)."""
    if isinstance(err, urllib.error.HTTPError):
        return False
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    return isinstance(err, OSError | TimeoutError) and not isinstance(err, FileNotFoundError | PermissionError)


def cached_weights_path(entry: PretrainedWeights) -> Path:
    """Where the official file lives in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.file


def download_weights(entry: PretrainedWeights) -> Path:
    """A local file for ``entry``: torch.hub's cache, then the Hugging Face cache, then a download."""
    path = cached_weights_path(entry)
    if path.is_file():
        return path
    if entry.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(entry.hf_hub_id, name)
            if isinstance(cached, str):
                return Path(cached)
    failures = []
    try_hub = entry.hf_hub_id is not None
    if not _offline():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a temporary file, renamed into place only when its sha256 starts with hash_prefix (if given)
            with _socket_timeout(NETWORK_TIMEOUT):
                torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=entry.sha256, progress=True)
            return path
        except Exception as err:  # noqa: BLE001 - any network failure falls through to the next source
            failures.append(f"{entry.url}: {err}")
            if _unreachable(err):  # no network at all: the Hugging Face client would retry for ~45 s
                failures.append("no network, so the Hugging Face Hub was not tried")
                try_hub = False
        if try_hub:
            from huggingface_hub import hf_hub_download

            try:
                return Path(hf_hub_download(entry.hf_hub_id, "model.safetensors"))
            except Exception as err:  # noqa: BLE001
                failures.append(f"hf://{entry.hf_hub_id}: {err}")
    how = f"download {entry.url}\n  and put it at {path}"
    if entry.hf_hub_id:
        how += f"\n  or run `hf download {entry.hf_hub_id} model.safetensors` (Hugging Face cache)"
    reason = "offline mode (HF_HUB_OFFLINE / CONVNEXT_OFFLINE)" if not failures else "; ".join(failures)
    raise UserError(f"weights {entry.model}.{entry.tag} are not cached and could not be fetched ({reason}).\n"
                    f"To use them without a network: {how}")


class LoadReport(NamedTuple):
    missing: list[str]
    unexpected: list[str]


_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "module")


def read_state_dict(source: str | os.PathLike | Mapping, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a file (.pth/.pt/.bin/.safetensors), a Hugging Face folder, or a mapping.

    Pickles are read with ``weights_only=True`` (plus ``argparse.Namespace``, which the official training
    checkpoints contain); wrappers such as ``{"model": ...}`` are unwrapped (``key`` picks one).
    """
    if isinstance(source, Mapping):
        data = source
    else:
        data = read_checkpoint_file(Path(source))
    if key is not None:
        if key not in data:
            raise UserError(f"checkpoint has no {key!r} entry; it has {sorted(data)[:10]}")
        data = data[key]
    else:
        for wrapper in _WRAPPER_KEYS:
            if isinstance(data.get(wrapper), Mapping):
                data = data[wrapper]
                break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError("checkpoint holds no tensors")
    return {_strip_prefixes(k): v for k, v in tensors.items()}


def read_checkpoint_file(path: Path) -> Mapping:
    """Everything a checkpoint file (or Hugging Face folder) holds, read safely, before any unwrapping."""
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise UserError(f"{path} is a folder without model.safetensors or pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    if path.suffix != ".safetensors" and (what := _not_weights(path)):
        raise UserError(f"{path} is {what}, not a checkpoint: --checkpoint reads weights (.pt/.pth from training "
                        "or a release, .safetensors)")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        # torch's own unpickling message suggests weights_only=False: advice a user must not follow for a file
        # they cannot vouch for, so it is not repeated here
        detail = "" if isinstance(err, pickle.UnpicklingError) else f"{type(err).__name__}: {first_line(err)}; "
        raise UserError(f"cannot read checkpoint {path}: not a PyTorch checkpoint of tensors, or a damaged one "
                        f"({detail}only tensors are ever read from a pickle: weights_only=True)") from None
    if not isinstance(data, Mapping):
        raise UserError(f"cannot read checkpoint {path}: it holds a {type(data).__name__}, not named tensors")
    return data


def _not_weights(path: Path) -> str | None:
    """What a file given as a checkpoint is instead, when its first bytes or archive records say so: an
    export of ours (TorchScript, ``torch.export``, ONNX) or an image."""
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        inside = [name.split("/", 1)[-1] for name in names]  # below the archive's own folder
        if any(name.startswith("models/") for name in inside):
            return "a torch.export program (.pt2; load it with torch.export.load)"
        if any(name.startswith("code/") for name in inside):
            return "a TorchScript file (load it with torch.jit.load)"
        return None
    images = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP"}
    for magic, kind in images.items():
        if head.startswith(magic):
            return f"a {kind} image"
    if path.suffix == ".onnx":
        return "an ONNX graph (run it with ONNX Runtime or OpenVINO)"
    return None


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type when the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


# Key renames, applied in order, from each foreign layout to the official one.
_TIMM_RULES = [
    (r"^stem\.(\d)\.", r"downsample_layers.0.\1."),
    (r"^stages\.(\d+)\.downsample\.(\d)\.", r"downsample_layers.\1.\2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
    (r"\.conv_dw\.", ".dwconv."),
    (r"\.mlp\.fc(\d)\.", r".pwconv\1."),
    (r"^head\.norm\.", "norm."),
    (r"^head\.fc\.", "head."),
]
_HF_RULES = [
    (r"^convnext\.", ""),
    (r"^embeddings\.patch_embeddings\.", "downsample_layers.0.0."),
    (r"^embeddings\.layernorm\.", "downsample_layers.0.1."),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.", r"downsample_layers.\1.\2."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.\2."),
    (r"\.layernorm\.", ".norm."),
    (r"\.layer_scale_parameter$", ".gamma"),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_TORCHVISION_RULES = [
    (r"^features\.0\.", "downsample_layers.0."),
    *[(rf"^features\.{2 * i}\.", f"downsample_layers.{i}.") for i in (1, 2, 3)],
    *[(rf"^features\.{2 * i + 1}\.", f"stages.{i}.") for i in range(4)],
    (r"\.block\.0\.", ".dwconv."),
    (r"\.block\.2\.", ".norm."),
    (r"\.block\.3\.", ".pwconv1."),
    (r"\.block\.5\.", ".pwconv2."),
    (r"\.layer_scale$", ".gamma"),
    (r"^classifier\.0\.", "norm."),
    (r"^classifier\.2\.", "head."),
]


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which implementation wrote these keys: 'official', 'timm', 'hf' or 'torchvision'."""
    keys = state_dict.keys()
    if "downsample_layers.0.0.weight" in keys or "stem.weight" in keys:
        return "official"
    if "stem.0.weight" in keys:
        return "timm"
    if any(k.startswith(("convnext.", "embeddings.patch_embeddings")) for k in keys):
        return "hf"
    if "features.0.0.weight" in keys:
        return "torchvision"
    raise UserError(f"unrecognised checkpoint layout; first keys: {list(keys)[:6]}")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of any supported layout to the official ones (shapes are fixed up at load time)."""
    rules = {"official": [], "timm": _TIMM_RULES, "hf": _HF_RULES, "torchvision": _TORCHVISION_RULES}
    rules = rules[detect_layout(state_dict)]
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _fit_shapes(state_dict: dict, target: Mapping[str, torch.Tensor], in_chans_key: str) -> None:
    """Layer scales stored as (C,1,1) and pointwise weights stored as 1x1 convs take our shapes; a stem
    trained on 3 channels is adapted to another ``in_chans``."""
    for key, value in list(state_dict.items()):
        want = target.get(key)
        if want is None or value.shape == want.shape:
            continue
        if value.numel() == want.numel() and (key.endswith("gamma") or ".pwconv" in key):
            state_dict[key] = value.reshape(want.shape)
        elif key == in_chans_key and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
            state_dict[key] = _adapt_stem(value, want.shape[1])


def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Sum RGB filters for one channel; otherwise repeat them and rescale so activations keep their size."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    *,
    strict: bool = True,
    key: str | None = None,
) -> LoadReport:
    """Load official, timm, Hugging Face, torchvision or our own weights into ``model``.

    A head with another class count is dropped with a warning (the model keeps its fresh head); a
    ``features_only`` backbone ignores the classifier's ``norm``/``head`` and keeps fresh ``norm{i}``
    when the checkpoint has none. Any other difference raises one error naming the keys, unless
    ``strict=False``, which loads what matches and reports the rest.
    """
    from ..protocol import FeatureBackbone, model_name

    state_dict = convert_state_dict(read_state_dict(path_or_state_dict, key))
    target = model.state_dict()
    optional: set[str] = set()
    if isinstance(model, FeatureBackbone):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("norm.", "head."))}
        optional = {k for k in target if re.match(r"norm\d\.", k)}
    stem_key = "stem.weight" if "stem.weight" in target else "downsample_layers.0.0.weight"
    _fit_shapes(state_dict, target, stem_key)

    head_keys = [k for k in ("head.weight", "head.bias") if k in state_dict]
    if head_keys and (
        "head.weight" not in target or state_dict["head.weight"].shape[0] != target["head.weight"].shape[0]
    ):
        have = state_dict["head.weight"].shape[0]
        want = target["head.weight"].shape[0] if "head.weight" in target else 0
        warnings.warn(f"checkpoint head has {have} classes, model has {want}: keeping the model's new head",
                      stacklevel=2)
        for k in head_keys:
            del state_dict[k]
        optional |= {k for k in ("head.weight", "head.bias") if k in target}

    report = check_fit(model_name(model), state_dict, target, optional=optional, strict=strict)
    model.load_state_dict(state_dict, strict=False)
    return report


def require_finite(state_dict: Mapping[str, object], source: str | os.PathLike = "checkpoint") -> None:
    """Refuse weights holding NaN or inf: a model with them gives NaN outputs that every later number (a top-1,
    a calibration, a relative error) would hide or misread; one line names the first tensors."""
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f", ... ({len(bad)} tensors)" if len(bad) > 3 else "")
        raise UserError(f"{source} holds non-finite weights (NaN or inf in {shown}): its outputs would be "
                        "meaningless; use another checkpoint (a run keeps best.pt and last.pt from before any "
                        "divergence)")


def check_fit(name: str, state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
              optional: set[str] = frozenset(), strict: bool = True) -> LoadReport:
    """Whether a state dict fits a model's (``target``): a wrong shape, or with ``strict`` a missing or extra
    key, is one error naming the first few keys, so a file of another model never loads half-way. Shared by
    every loader (ours, and timm models scored beside ours) so all misfits read alike."""
    require_finite(state_dict)
    missing = sorted(set(target) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state_dict.items() if k in target and v.shape != target[k].shape
    )
    if mismatched or (strict and (missing or unexpected)):
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                shown = ", ".join(items[:4]) + (f", ... ({len(items)} in all)" if len(items) > 4 else "")
                parts.append(f"{label} keys: {shown}")
        raise UserError(f"checkpoint does not fit {name} (is it another model's?): {'; '.join(parts)}")
    return LoadReport(missing, unexpected)


def save_weights(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write weights (official key names) as safetensors, atomically: a temporary file, then a rename."""
    state_dict = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: _save_file(tensors, tmp, dict(metadata or {})))


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' writer, its I/O failures raised as the `OSError` they are (its Rust error carries only the
    code, in words), so that a full disk or a read-only folder is worded like every other writer's."""
    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), str(err)) from None


def metadata_json(metadata: dict[str, str], key: str, path: str | os.PathLike, default=None):
    """The JSON value stored under ``key`` in a file's string metadata (``default`` when absent), or one line
    saying the file's metadata is damaged."""
    if key not in metadata:
        return default
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise UserError(f"{path}: its metadata entry {key!r} is not valid JSON (the file was edited or damaged); "
                        "export it again (`convnext export --format safetensors`)") from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header (e.g. the model name we save with weights)."""
    with safe_open(path, "pt") as f:
        return f.metadata() or {}
