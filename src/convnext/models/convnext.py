"""The ConvNeXt family of "A ConvNet for the 2020s": hierarchical and isotropic networks, and their registry.

Parameter and state_dict names are those of the official checkpoints, so an official ``checkpoint["model"]``
loads strictly. The block is the paper's: depthwise conv, LayerNorm, Linear, GELU, Linear, layer scale,
residual, each one a module that the block calls (hooks, FX and torch.func see every step); the layers
themselves live in `convnext.models.layers`. Activations are kept in channels_last memory, which the convolution
weights are created in, so that the block's permutes cost nothing.
"""

import fnmatch
import importlib
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..weights import data_config, download_weights, get_pretrained, load_checkpoint
from .layers import DepthwiseConv2d, DropPath, LayerNorm2d, Pointwise

LN_EPS = 1e-6


class Block(nn.Module):
    """The ConvNeXt block: 7x7 depthwise conv, LN, 1x1 expand 4x, GELU, 1x1 project, layer scale, residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float | None = 1e-6,
                 kernel_size: int = 7, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, kernel_size)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = Pointwise(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = Pointwise(mlp_ratio * dim, dim)
        self.gamma = None
        if layer_scale_init_value and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C): the same memory on channels_last
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 at the first block to ``rate`` at the last."""
    return [rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise a `UserError` naming the expected shape unless ``x`` is an image batch ``model`` can take.

    Kept out of ``forward`` (tracers, vmap and compilers see only the network); entry points call it.
    """
    stride = getattr(model, "stride", 32)
    if x.ndim != 4 or x.shape[1] != model.in_chans or x.shape[-1] < stride or x.shape[-2] < stride:
        raise UserError(f"expected an image batch of shape (N, {model.in_chans}, H, W) with H, W >= {stride}, "
                        f"got {tuple(x.shape)}")


class _Net(nn.Module):
    """What every ConvNeXt shares: gradient checkpointing, inference fusion, channels_last weights."""

    in_chans: int
    stride: int
    features_only: bool = False
    grad_checkpointing: bool = False

    def _finish(self) -> None:
        self.apply(_init_weights)
        # conv outputs follow channels_last weights, so activations stay channels_last whatever the input
        self.to(memory_format=torch.channels_last)

    def _run(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                for block in blocks:
                    x = checkpoint(block, x, use_reentrant=False)
                return x
        return blocks(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: less memory for ~30% more compute."""
        self.grad_checkpointing = enable

    def fuse_for_inference(self) -> nn.Module:
        """A frozen copy with the same outputs and fewer operations: see `convnext.models.fuse.fuse`."""
        from .fuse import fuse  # fuse.py builds on this module

        return fuse(self)


class _ClassifierHead:
    """Pooled LN + linear head and the timm-style API around it (a mixin for `_Net` subclasses)."""

    num_features: int

    def _init_head(self, num_classes: int) -> None:
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _scale_head(self, head_init_scale: float) -> None:
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, LayerNorm, then the classifier (skipped with ``pre_logits``)."""
        x = self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes (0: no head)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _Stages(_Net):
    """The hierarchical trunk: patchify stem, four stages at strides 4/8/16/32, LN + 2x2 conv downsampling."""

    stride = 32

    def __init__(self, depths: Sequence[int], dims: Sequence[int], in_chans: int, drop_path_rate: float,
                 layer_scale_init_value: float | None):
        super().__init__()
        self.depths, self.dims, self.in_chans = tuple(depths), tuple(dims), in_chans
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i - 1], eps=LN_EPS), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2)))
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        for dim, depth in zip(dims, depths, strict=True):
            self.stages.append(nn.Sequential(*(Block(dim, rates.pop(0), layer_scale_init_value)
                                               for _ in range(depth))))

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] = (0, 1, 2, 3)) -> list[torch.Tensor]:
        """The NCHW outputs of the stages in ``indices`` (strides 4/8/16/32), unnormalised, for dense heads."""
        maps = []
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            x = self._run(stage, downsample(x))
            if i in indices:
                maps.append(x)
            if i >= max(indices):
                break
        return maps


class ConvNeXt(_ClassifierHead, _Stages):
    """Hierarchical ConvNeXt classifier (paper Sec. 2-3); ``forward`` returns logits, always."""

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 in_chans: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float | None = 1e-6, head_init_scale: float = 1.0):
        super().__init__(depths, dims, in_chans, drop_path_rate, layer_scale_init_value)
        self.num_features = dims[-1]
        self._init_head(num_classes)
        self._finish()
        self._scale_head(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's NCHW feature map (stride 32), before pooling."""
        for downsample, stage in zip(self.downsample_layers, self.stages):  # noqa: B905 - TorchScript: no strict
            x = downsample(x)
            x = stage(x) if torch.jit.is_scripting() else self._run(stage, x)
        return x


class ConvNeXtFeatures(_Stages):
    """The dense-prediction backbone of the official detection and segmentation code: the trunk, no head,
    and ``forward`` returns the maps of ``out_indices``, each through its own channels-first LN ``norm{i}``."""

    features_only = True

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 in_chans: int = 3, drop_path_rate: float = 0.0, layer_scale_init_value: float | None = 1e-6,
                 out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__(depths, dims, in_chans, drop_path_rate, layer_scale_init_value)
        self.out_indices = tuple(out_indices)
        if not self.out_indices or not set(self.out_indices) <= set(range(len(dims))):
            raise UserError(f"out_indices must be within 0..{len(dims) - 1}, got {out_indices}")
        self.feature_channels = [dims[i] for i in self.out_indices]
        for i in self.out_indices:
            self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=LN_EPS))
        self._finish()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.forward_intermediates(x, self.out_indices)
        return [getattr(self, f"norm{i}")(m) for i, m in zip(self.out_indices, maps, strict=True)]


class ConvNeXtIsotropic(_ClassifierHead, _Net):
    """Isotropic ConvNeXt (paper Sec. 3.3): a 16x16 patchify stem without norm, then one resolution throughout."""

    stride = 16

    def __init__(self, depth: int = 18, dim: int = 384, in_chans: int = 3, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, layer_scale_init_value: float | None = 0.0,
                 head_init_scale: float = 1.0):
        super().__init__()
        self.depth, self.dim, self.in_chans = depth, dim, in_chans
        self.num_features = dim
        self.stem = nn.Conv2d(in_chans, dim, 16, stride=16)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*(Block(dim, rate, layer_scale_init_value) for rate in rates))
        self._init_head(num_classes)
        self._finish()
        self._scale_head(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The NCHW feature map at stride 16, before pooling."""
        x = self.stem(x)
        return self.blocks(x) if torch.jit.is_scripting() else self._run(self.blocks, x)


# name -> (class, default arguments). Defaults of the released checkpoints: isotropic S/B were trained
# without layer scale (no ``gamma`` keys), isotropic L with it.
MODEL_ARCHS: dict[str, tuple[type[nn.Module], dict]] = {
    "convnext_atto": (ConvNeXt, dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))),
    "convnext_femto": (ConvNeXt, dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384))),
    "convnext_pico": (ConvNeXt, dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512))),
    "convnext_nano": (ConvNeXt, dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640))),
    "convnext_tiny": (ConvNeXt, dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))),
    "convnext_small": (ConvNeXt, dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))),
    "convnext_base": (ConvNeXt, dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))),
    "convnext_large": (ConvNeXt, dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))),
    "convnext_xlarge": (ConvNeXt, dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048))),
    "convnext_isotropic_small": (ConvNeXtIsotropic, dict(depth=18, dim=384, layer_scale_init_value=0.0)),
    "convnext_isotropic_base": (ConvNeXtIsotropic, dict(depth=18, dim=768, layer_scale_init_value=0.0)),
    "convnext_isotropic_large": (ConvNeXtIsotropic, dict(depth=36, dim=1024, layer_scale_init_value=1e-6)),
}

_BUILDERS: dict[str, Callable[..., nn.Module] | str] = {}


def register_model(name: str, builder: Callable[..., nn.Module] | str) -> None:
    """Make ``builder(**overrides)`` available to ``create_model(name)``.

    ``builder`` may be the name of the module that registers ``name`` when it is imported: the name is listed
    at once and the module imported on the first build (re-registering keeps a name's place in the list).
    """
    _BUILDERS[name] = builder


def _builder(cls: type[nn.Module], defaults: dict) -> Callable[..., nn.Module]:
    """``features_only=True`` builds the `ConvNeXtFeatures` backbone of a hierarchical architecture."""

    def build(features_only: bool = False, **overrides) -> nn.Module:
        if not features_only:
            return cls(**{**defaults, **overrides})
        if cls is not ConvNeXt:
            raise UserError("features_only needs a hierarchical ConvNeXt (isotropic ones have one resolution)")
        for name in ("num_classes", "head_init_scale"):  # a backbone has no head
            overrides.pop(name, None)
        return ConvNeXtFeatures(**{**defaults, **overrides})

    return build


for _name, (_cls, _defaults) in MODEL_ARCHS.items():
    register_model(_name, _builder(_cls, _defaults))

# The roadmap and the task models register themselves when their module is imported. Their names are known here,
# so that listing them imports nothing (the detectors' module imports torchvision's detection models).
_ROADMAP_STEPS = ("resnet50", "stage_ratio", "patchify_stem", "resnextify", "inverted_bottleneck", "move_up_dwconv",
                  "kernel_5", "kernel_7", "kernel_9", "kernel_11", "gelu", "fewer_activations", "fewer_norms",
                  "layer_norm", "separate_downsampling")
LAZY_MODELS: dict[str, list[str]] = {
    "convnext.models.roadmap": [f"roadmap_{step}" for step in _ROADMAP_STEPS],
    "convnext.models.mask_rcnn": [f"{kind}_convnext_{size}" for kind in ("maskrcnn", "fasterrcnn")
                                  for size in ("tiny", "small", "base")],
    "convnext.models.upernet": [f"upernet_convnext_{size}" for size in ("tiny", "small", "base", "large", "xlarge")],
}
for _module, _names in LAZY_MODELS.items():
    for _name in _names:
        register_model(_name, _module)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registration order."""
    return [name for name in _BUILDERS if fnmatch.fnmatch(name, pattern)]


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered architecture with random weights; ``overrides`` go to its constructor."""
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[-1] in n][:5]
        hint = f" Did you mean one of {close}?" if close else ""
        raise UserError(f"unknown model {name!r}.{hint} `convnext models` lists them all.")
    builder = _BUILDERS[name]
    if isinstance(builder, str):  # a name registered ahead of its module: importing it registers the builder
        importlib.import_module(builder)
        if isinstance(_BUILDERS[name], str):
            raise RuntimeError(f"importing {builder} did not register {name}")
        builder = _BUILDERS[name]
    try:
        model = builder(**overrides)
    except TypeError as err:
        raise UserError(f"invalid option for {name}: {err}") from None
    model.model_name = name
    return model


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    checkpoint: str | os.PathLike | None = None,
    **overrides,
) -> nn.Module:
    """Build a model by name, optionally with released weights or a local checkpoint of any layout.

    ``pretrained`` is ``True`` (the model's default weights) or a tag such as ``"in22k_ft_in1k_384"``;
    ``"convnext_tiny.in22k"`` is shorthand for ``pretrained="in22k"``. Without ``num_classes`` a
    pretrained model keeps the checkpoint's classes; with another count its head starts fresh.
    ``model.pretrained_cfg`` holds the evaluation preprocessing that goes with the weights.
    """
    if "." in name:
        name, pretrained = name.split(".", 1)
    entry = get_pretrained(name, pretrained) if pretrained else None
    if entry is not None:
        overrides.setdefault("num_classes", entry.num_classes)
    model = build_model(name, **overrides)
    model.pretrained_cfg = entry.data_config if entry else data_config()
    if entry is not None:
        _load_weights(model, download_weights(entry))
        model.pretrained_cfg["tag"] = entry.tag
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model


def _load_weights(model: nn.Module, source) -> None:
    """Task models (segmentation, detection) read their own checkpoint layouts through ``load_weights``."""
    own = getattr(model, "load_weights", None)
    if own is not None:
        own(source)
    else:
        load_checkpoint(model, source)
