"""The ConvNeXt family of "A ConvNet for the 2020s": hierarchical and isotropic networks, and their registry.

Parameter and state_dict names are those of the official checkpoints, so an official ``checkpoint["model"]``
loads strictly. The block is the paper's: depthwise conv, LayerNorm, Linear, GELU, Linear, layer scale,
residual, each one a module that the block calls (hooks, FX and torch.func see every step); the layers
themselves live in `convnext.models.layers`. Activations are kept in channels_last memory, which the convolution
weights are created in, so that the block's permutes cost nothing.

The classifiers also speak timm's model API (``feature_info``, ``forward_intermediates``,
``prune_intermediate_layers``, ``reset_classifier(n, global_pool)``, ``head_hidden_size``), and
`register_with_timm` adds them to timm's registry as ``cnx_<name>``, so that ``timm.create_model`` and its
feature wrappers take them as timm's own.
"""

import fnmatch
import importlib
import os
import sys
import types
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..protocol import ConvNeXtModel, TaskModel
from ..weights import data_config, download_weights, get_pretrained, list_pretrained, load_checkpoint
from .block import LN_EPS, Block
from .layer_decay import hierarchical_ids, isotropic_ids, stage_order_ids
from .layers import LayerNorm2d


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
    stride = model.stride if isinstance(model, ConvNeXtModel) else 32  # a foreign model: the usual 32
    if x.ndim != 4 or x.shape[1] != model.in_chans or x.shape[-1] < stride or x.shape[-2] < stride:
        raise UserError(f"expected an image batch of shape (N, {model.in_chans}, H, W) with H, W >= {stride}, "
                        f"got {tuple(x.shape)}")


MIN_RES, MAX_RES = 32, 2048  # the networks downsample 32x; above 2048 a classifier's input is a mistake, not a plan


def check_resolution(res: int, flag: str = "--res") -> int:
    """``res`` if an image side a classifier can take and a machine can hold, else one line naming ``flag``
    (a stored config's value is checked the same way before anything is allocated)."""
    if not MIN_RES <= res <= MAX_RES:
        raise UserError(f"{flag} must be from {MIN_RES} (the networks downsample 32x) to {MAX_RES}, got {res}")
    return res


POOL_TYPES = ("avg", "max", "avgmax", "")  # "": no pooling, the head runs at every pixel (timm's convention)


def _check_pool(global_pool: str) -> str:
    if global_pool not in POOL_TYPES:
        raise UserError(f"global_pool must be one of {list(POOL_TYPES)}, got {global_pool!r}")
    return global_pool


def _pool(x: torch.Tensor, global_pool: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, C): the spatial mean (the paper's), max, or the average of both."""
    if global_pool == "max":
        return x.amax((-2, -1))
    if global_pool == "avgmax":
        return 0.5 * (x.mean((-2, -1)) + x.amax((-2, -1)))
    return x.mean((-2, -1))


def _per_pixel(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a module made for (..., C) vectors, a LayerNorm or Linear, at every pixel of an NCHW map."""
    return module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def feature_indices(count: int, indices: int | Sequence[int] | None = None) -> list[int]:
    """The ascending absolute indices of the feature maps to return out of ``count`` (timm's convention):
    ``None`` all, an int the last ``n``, a sequence those it names (negative ones count from the end)."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise UserError(f"cannot take the last {indices} of {count} feature maps")
        return list(range(count - indices, count))
    taken = sorted({i + count if i < 0 else i for i in indices})
    if not taken or taken[0] < 0 or taken[-1] >= count:
        raise UserError(f"feature indices must lie within -{count}..{count - 1}, got {tuple(indices)}")
    return taken


class ConvNeXtBase(nn.Module):
    """What every ConvNeXt shares: gradient checkpointing, inference fusion, channels_last weights, and the
    model protocol (`convnext.protocol.ConvNeXtModel`); the roadmap nets build on it too."""

    in_chans: int
    stride: int
    features_only: bool = False
    grad_checkpointing: bool = False

    def layer_decay_ids(self, num_layers: int | None = None) -> tuple[dict[str, int], int]:
        """Layer-wise lr-decay ids without an official map: one per downsampling layer and block, in forward
        order (`convnext.models.layer_decay.stage_order_ids`); ``num_layers`` is ignored."""
        return stage_order_ids([name for name, _ in self.named_parameters()])

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

    def _step(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One block, checkpointed like `_run`'s: for loops that stop between blocks."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: less memory for ~30% more compute."""
        self.grad_checkpointing = enable

    def fuse_for_inference(self, dtype: torch.dtype | None = None) -> nn.Module:
        """A frozen copy with the same outputs and fewer operations, its weights cast once to ``dtype`` if
        given (``torch.bfloat16`` for bf16 inference): see `convnext.models.fuse.fuse`."""
        from .fuse import fuse  # fuse.py builds on this module

        return fuse(self, dtype)


class ClassifierHead:
    """Pooled LN + linear head and the timm-style API around it (a mixin for `ConvNeXtBase` subclasses).

    The head keeps the official modules (``norm``: LayerNorm, ``head``: Linear), so checkpoints load
    whatever the pooling; without pooling (``global_pool=""``) both run at every pixel.
    """

    num_features: int

    def _init_head(self, num_classes: int, global_pool: str = "avg") -> None:
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS)
        self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head_hidden_size = self.num_features  # what pre_logits returns: no MLP between LN and classifier
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _scale_head(self, head_init_scale: float) -> None:
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool, LayerNorm, then the classifier (skipped with ``pre_logits``); with ``global_pool=""``
        the LN and classifier run at every pixel and the result stays an (N, C, H, W) map."""
        if self.global_pool == "":  # (N, H, W, C): the same memory on channels_last
            x = self.norm(x.permute(0, 2, 3, 1))
            x = x if pre_logits else self.head(x)
            return x.permute(0, 3, 1, 2)
        x = self.norm(_pool(x, self.global_pool))
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes (0: no head, ``forward``
        returns features). ``global_pool`` replaces the pooling when given ("": none); ``reset_other`` also
        drops the LayerNorm, as timm does when it cuts a network for its features."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        if reset_other:
            self.norm = nn.Identity()
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)
        like = next(self.parameters(), None)  # the new head lives where the network does
        if like is not None:
            self.head.to(like.device, like.dtype)

    def _prune_head(self, num_features: int, cut: bool, prune_norm: bool, prune_head: bool) -> None:
        """After the trunk lost its end (``cut``) the LN and classifier, sized for it, go as well."""
        self.num_features = self.head_hidden_size = num_features
        if cut or prune_norm:
            self.norm = nn.Identity()
        if cut or prune_head:
            self.reset_classifier(0, "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _Intermediates:
    """timm's ``forward_intermediates`` for a `ConvNeXtBase` whose trunk is a chain of steps with one feature map
    each (stages or blocks), as ``feature_info`` lists them; subclasses say how to run and normalise a step.
    (No class-level annotations here: TorchScript would read them as attribute types.)"""

    def _feature_count(self) -> int:
        raise NotImplementedError

    def _feature_step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _norm_feature(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.unused
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature maps of the steps in ``indices`` (see `feature_indices`), for dense heads and timm's
        feature wrappers: a list with ``intermediates_only``, else ``(forward_features(x), list)``.

        ``norm`` runs each map through the LayerNorm that fits it, where there is one; ``stop_early`` (or
        ``intermediates_only``) skips the steps after the last map asked for; ``output_fmt`` "NHWC" gives
        the maps channels-last (free views, as activations are kept in channels_last memory).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise UserError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        count = self._feature_count()
        take = feature_indices(count, indices)
        end = take[-1] + 1 if stop_early or intermediates_only else count
        maps = []
        for i in range(end):
            x = self._feature_step(i, x)
            if i in take:
                y = self._norm_feature(i, x) if norm else x
                maps.append(y.permute(0, 2, 3, 1) if output_fmt == "NHWC" else y)
        return maps if intermediates_only else (x, maps)


class _Stages(_Intermediates, ConvNeXtBase):
    """The hierarchical trunk: patchify stem, four stages at strides 4/8/16/32, LN + 2x2 conv downsampling."""

    stride = 32

    def layer_decay_ids(self, num_layers: int | None = None) -> tuple[dict[str, int], int]:
        """The official fine-tuning map of four stages (`convnext.models.layer_decay.hierarchical_ids`: 12 + 1
        ids for [3, 3, 27, 3]); the forward order for other stage counts; ``num_layers`` is ignored."""
        if len(self.depths) != 4:
            return super().layer_decay_ids()
        return hierarchical_ids([name for name, _ in self.named_parameters()], self.depths)

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
        # timm's description of the feature maps: each stage's output, the stem's stride 4 then 2x per stage
        self.feature_info = [dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}") for i, dim in enumerate(dims)]

    def _feature_count(self) -> int:
        return len(self.stages)

    def _feature_step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.stages[i], self.downsample_layers[i](x))


class ConvNeXt(ClassifierHead, _Stages):
    """Hierarchical ConvNeXt classifier (paper Sec. 2-3); ``forward`` returns logits, always."""

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 in_chans: int = 3, num_classes: int = 1000, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float | None = 1e-6, head_init_scale: float = 1.0,
                 global_pool: str = "avg"):
        super().__init__(depths, dims, in_chans, drop_path_rate, layer_scale_init_value)
        self.num_features = dims[-1]
        self._init_head(num_classes, global_pool)
        self._finish()
        self._scale_head(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's NCHW feature map (stride 32), before pooling."""
        for downsample, stage in zip(self.downsample_layers, self.stages):  # noqa: B905 - TorchScript: no strict
            x = downsample(x)
            x = stage(x) if torch.jit.is_scripting() else self._run(stage, x)
        return x

    def _norm_feature(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The head's LayerNorm fits the last stage's channels only; it runs at every pixel."""
        return _per_pixel(self.norm, x) if i == len(self.stages) - 1 else x

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and with them the head) for a feature extractor;
        ``prune_head`` drops the classifier, ``prune_norm`` its LayerNorm. Returns the absolute indices."""
        take = feature_indices(len(self.stages), indices)
        keep = take[-1] + 1
        cut = keep < len(self.stages)
        self.downsample_layers, self.stages = self.downsample_layers[:keep], self.stages[:keep]
        self._prune_head(self.dims[keep - 1], cut, prune_norm, prune_head)
        return take


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

    def _norm_feature(self, i: int, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, f"norm{i}", None)
        return x if norm is None else norm(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_intermediates(x, self.out_indices, norm=True, intermediates_only=True)


class ConvNeXtIsotropic(ClassifierHead, _Intermediates, ConvNeXtBase):
    """Isotropic ConvNeXt (paper Sec. 3.3): a 16x16 patchify stem without norm, then one resolution throughout."""

    stride = 16

    def layer_decay_ids(self, num_layers: int | None = None) -> tuple[dict[str, int], int]:
        """The official map: stem 0, block ``i`` is ``i + 1``, norm and head ``depth + 1``; ``num_layers`` is
        ignored."""
        return isotropic_ids([name for name, _ in self.named_parameters()], self.depth)

    def __init__(self, depth: int = 18, dim: int = 384, in_chans: int = 3, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, layer_scale_init_value: float | None = 0.0,
                 head_init_scale: float = 1.0, global_pool: str = "avg"):
        super().__init__()
        self.depth, self.dim, self.in_chans = depth, dim, in_chans
        self.num_features = dim
        self.stem = nn.Conv2d(in_chans, dim, 16, stride=16)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*(Block(dim, rate, layer_scale_init_value) for rate in rates))
        self.feature_info = [dict(num_chs=dim, reduction=16, module=f"blocks.{i}") for i in range(depth)]
        self._init_head(num_classes, global_pool)
        self._finish()
        self._scale_head(head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The NCHW feature map at stride 16, before pooling."""
        x = self.stem(x)
        return self.blocks(x) if torch.jit.is_scripting() else self._run(self.blocks, x)

    def _feature_count(self) -> int:
        return len(self.blocks)

    def _feature_step(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._step(self.blocks[i], self.stem(x) if i == 0 else x)

    def _norm_feature(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Every block has the head's width, so its LayerNorm fits them all (as timm does for ViTs)."""
        return _per_pixel(self.norm, x)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices``, and the head with them; see `ConvNeXt`'s."""
        take = feature_indices(len(self.blocks), indices)
        keep = take[-1] + 1
        cut = keep < len(self.blocks)
        self.blocks = self.blocks[:keep]
        self._prune_head(self.dim, cut, prune_norm, prune_head)
        return take


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
        for name in ("num_classes", "head_init_scale", "global_pool"):  # a backbone has no head
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
    "convnext.models.cascade": [f"cascade_mask_rcnn_convnext_{size}"
                                for size in ("tiny", "small", "base", "large", "xlarge")],
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

    ``pretrained`` is ``True`` (the model's default weights) or a tag such as ``"in22k_ft_in1k_384"``. As in
    timm, a tag in the name (``"convnext_base.in22k_ft_in1k_384"``) selects that release's configuration
    (class count, preprocessing) and, with ``pretrained=True``, its weights; alone it downloads nothing.
    Without ``num_classes`` a released configuration keeps the checkpoint's classes; with another count the
    head starts fresh. ``model.pretrained_cfg`` holds the evaluation preprocessing that goes with the weights.
    """
    tag = None
    if "." in name:
        name, tag = name.split(".", 1)
        if isinstance(pretrained, str) and pretrained != tag:
            raise UserError(f"create_model: the name says tag {tag!r}, pretrained says {pretrained!r}; give one")
    chosen = tag or (pretrained if isinstance(pretrained, str) else None)
    entry = get_pretrained(name, chosen or True) if (chosen or pretrained) else None
    if entry is not None:
        overrides.setdefault("num_classes", entry.num_classes)
    model = build_model(name, **overrides)
    model.pretrained_cfg = entry.data_config if entry else data_config()
    if entry is not None and pretrained:
        _load_weights(model, download_weights(entry))
        model.pretrained_cfg["tag"] = entry.tag
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    return model


def _load_weights(model: nn.Module, source) -> None:
    """Task models (segmentation, detection) read their own checkpoint layouts through ``load_weights``."""
    if isinstance(model, TaskModel):
        model.load_weights(source)
    else:
        load_checkpoint(model, source)


# -- timm ---------------------------------------------------------------------------------------------------------

TIMM_PREFIX = "cnx_"
_TIMM_MODULE = "convnext.timm_models"  # what timm files the entry points under: list_models(module="timm_models")
_TIMM_SOURCE = dict(paper_name="A ConvNet for the 2020s", paper_ids="arXiv:2201.03545", license="mit",
                    origin_url="https://github.com/facebookresearch/ConvNeXt")


def _timm_cfgs() -> dict[str, dict]:
    """timm's pretrained cfgs, keyed ``arch.tag``: one per released checkpoint (the first tag of an
    architecture is its default, as in `convnext.weights`), one without weights where none were released."""
    cfgs = {}
    for arch, (cls, _) in MODEL_ARCHS.items():
        first_conv = "downsample_layers.0.0" if cls is ConvNeXt else "stem"
        base = dict(_TIMM_SOURCE, first_conv=first_conv, classifier="head")
        for entry in list_pretrained(arch):
            preprocessing = {k: v for k, v in entry.data_config.items() if k != "label_set"}
            cfgs[f"{TIMM_PREFIX}{arch}.{entry.tag}"] = dict(
                base, **preprocessing, url=entry.url, num_classes=entry.num_classes,
                pool_size=(entry.res // cls.stride,) * 2, notes=(f"label set: {entry.label_set}",))
        if not list_pretrained(arch):
            cfgs[TIMM_PREFIX + arch] = dict(base, **data_config(), pool_size=(224 // cls.stride,) * 2)
    return cfgs


def _timm_weights(name: str, pretrained: bool, kwargs: dict) -> tuple[str | bool, object]:
    """What timm's ``pretrained=True`` loads: our weights of the tag timm resolved (``cnx_convnext_tiny.in22k``),
    through `convnext.weights` (official files, caches, offline mode); or, where the caller gave timm a
    cfg with a local ``file`` or ``state_dict``, that (any layout `load_checkpoint` reads)."""
    if not pretrained:
        return False, None
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    local = cfg.state_dict if cfg.state_dict is not None else cfg.file
    return (False, local) if local is not None else (cfg.tag or True, None)


def _check_feature_cls(feature_cls: object) -> None:
    """timm's 'list' and 'dict' extractors rebuild a network from its top-level children run in order; the
    official layout (``downsample_layers`` then ``stages``, interleaved at run time) cannot be run that way."""
    from timm.models import FeatureDictNet

    if isinstance(feature_cls, str):
        rebuilds = feature_cls.lower() in ("list", "dict")
    else:
        rebuilds = isinstance(feature_cls, type) and issubclass(feature_cls, FeatureDictNet)
    if rebuilds:
        raise UserError("features_only: a hierarchical ConvNeXt works with feature_cls 'getter' (its default), "
                        "'hook' or 'fx'; 'list' and 'dict' would re-run its top-level modules in order, which "
                        "the official checkpoint layout does not allow")


def _build_for_timm(arch: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Our model, built by `create_model` (weights included) inside timm's ``build_model_with_cfg``, which
    adds ``pretrained_cfg`` and the ``features_only`` wrappers."""
    from timm.models import build_model_with_cfg

    name = TIMM_PREFIX + arch
    hierarchical = MODEL_ARCHS[arch][0] is ConvNeXt
    if hierarchical and kwargs.get("features_only"):
        _check_feature_cls(kwargs.get("feature_cls", "getter"))
    tag, local = _timm_weights(name, pretrained, kwargs)

    def construct(**model_kwargs) -> nn.Module:  # timm has filled in num_classes and in_chans from the cfg
        return create_model(arch, pretrained=tag, checkpoint=local, **model_kwargs)

    if hierarchical:
        feature_cfg = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")
    else:  # the last blocks, as timm does for ViTs; flat enough for every feature class
        feature_cfg = dict(out_indices=3, feature_cls="getter", flatten_sequential=True)
    return build_model_with_cfg(construct, name, pretrained=False, feature_cfg=feature_cfg, **kwargs)


def _timm_entrypoint(arch: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return _build_for_timm(arch, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = TIMM_PREFIX + arch
    entrypoint.__module__ = _TIMM_MODULE
    entrypoint.__doc__ = f"`convnext.create_model('{arch}')` for ``timm.create_model('{TIMM_PREFIX}{arch}')``."
    return entrypoint


def register_with_timm() -> list[str]:
    """Register every architecture of `MODEL_ARCHS` in timm's model registry and return the timm names.

    Naming: ``TIMM_PREFIX + name`` (``cnx_convnext_tiny``, ``cnx_convnext_isotropic_small``): the prefix keeps
    ours apart from timm's own ``convnext_*`` (other parameter names, other weights), ``timm.list_models("cnx_*")``
    lists them, and pretrained tags are ours (``cnx_convnext_tiny.in22k_ft_in1k_384``). The models are the
    package's own, built by `create_model`; ``pretrained=True`` loads our registry's weights.

    Explicit rather than a side effect of ``import convnext``: the models themselves need no timm, and this
    writes to timm's process-wide registry, which a program should opt into. Safe to call again: names an
    earlier call registered are left as they are.
    """
    from timm.models import generate_default_cfgs, is_model, model_entrypoint
    from timm.models import register_model as timm_register

    module = sys.modules.get(_TIMM_MODULE)
    if module is None:  # timm reads an entry point's cfgs from its module, as for its own model files
        module = types.ModuleType(_TIMM_MODULE, "ConvNeXt entry points for timm (convnext.models.register_with_timm)")
        module.default_cfgs = generate_default_cfgs(_timm_cfgs())
        for arch in MODEL_ARCHS:
            setattr(module, TIMM_PREFIX + arch, _timm_entrypoint(arch))
        sys.modules[_TIMM_MODULE] = module
    names = [TIMM_PREFIX + arch for arch in MODEL_ARCHS]
    for name in names:
        if not (is_model(name) and model_entrypoint(name) is getattr(module, name)):
            timm_register(getattr(module, name))
    return names
