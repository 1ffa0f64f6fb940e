"""The ConvNeXt family of "A ConvNet for the 2020s": hierarchical and isotropic networks, and their registry.

Parameter and state_dict names are those of the official checkpoints, so an official ``checkpoint["model"]``
loads strictly. The pointwise layers keep ``nn.Linear`` parameters (official shapes) but run as 1x1
convolutions on channels_last tensors: the same arithmetic, through oneDNN / cuDNN instead of a
permute + matmul, which is what makes this implementation fast on CPUs. CPU inference runs each GELU
inside its pointwise convolution (a oneDNN post-op); `convnext.fuse` goes further for deployment.
"""

import fnmatch
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils.checkpoint import checkpoint

from .errors import UserError
from .weights import data_config, download_weights, get_pretrained, load_checkpoint

LN_EPS = 1e-6


_HAS_ONEDNN = torch.backends.mkldnn.is_available()


def _onednn_by_hand(x: torch.Tensor) -> bool:
    """Whether to call oneDNN kernels directly: eager float32 on a CPU, with no compiler, tracer, autocast or
    dispatch mode (FLOP counter, fake tensors) watching; those get the plain ops, which they understand."""
    return (not torch.compiler.is_compiling() and _HAS_ONEDNN and torch.backends.mkldnn.enabled
            and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing() and not is_in_torch_dispatch_mode())


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def onednn_inference(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether `conv1x1` runs oneDNN's inference kernel for input ``x``: eager float32 CPU code in which
    nothing needs a gradient."""
    return not _needs_grad(x, *params) and _onednn_by_hand(x)


def _depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, padding: int) -> torch.Tensor:
    """Weight gradient of a stride-1 depthwise conv as one forward depthwise conv: every (sample, channel)
    plane of the input, correlated with its own output-gradient plane as the kernel, then summed over the
    batch. About twice as fast on CPUs as oneDNN's backward-weights kernel for 7x7 depthwise convs."""
    n, c, h, w = x.shape
    planes = x.contiguous().view(1, n * c, h, w)
    kernels = grad.contiguous().view(n * c, 1, h, w)
    out = F.conv2d(planes, kernels, padding=padding, groups=n * c)
    return out.view(n, c, *out.shape[-2:]).sum(0).unsqueeze(1)


class _Conv2dFastBackward(torch.autograd.Function):
    """``F.conv2d`` (stride 1, "same" padding; 1x1 or depthwise) with a faster CPU backward: the bias
    gradient as a sum (oneDNN's joint weight and bias gradient costs ~1.2x the weight gradient alone) and,
    for depthwise convs, the input gradient as a forward conv with the flipped kernel and the weight gradient
    by `_depthwise_weight_grad`: ~2x faster depthwise backward in all."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, groups: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups = padding, groups
        return F.conv2d(x, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.groups == 1:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [ctx.padding] * 2, [1, 1], False, [0, 0], 1, [need_x, need_w, False])
        else:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=ctx.padding, groups=ctx.groups) if need_x else None
            grad_w = _depthwise_weight_grad(x, grad, ctx.padding) if need_w else None
        return grad_x, grad_w, grad.sum((0, 2, 3)) if need_b else None, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int = 0,
           groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` for 1x1 and depthwise "same" convs, with `_Conv2dFastBackward` when training on a CPU."""
    if not torch.jit.is_scripting():  # TorchScript gets the plain op
        same = weight.shape[-1] == weight.shape[-2] == 2 * padding + 1
        if same and bias is not None and _needs_grad(weight, bias) and _onednn_by_hand(x):
            return _Conv2dFastBackward.apply(x, weight, bias, padding, groups)
    return F.conv2d(x, weight, bias, padding=padding, groups=groups)


def _as_1x1(weight: torch.Tensor) -> torch.Tensor:
    return weight if weight.ndim == 4 else weight.view(weight.shape[0], weight.shape[1], 1, 1)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """A 1x1 convolution (``weight`` of a Linear or of a 1x1 conv), optionally followed by exact GELU.

    CPU inference calls oneDNN directly, the GELU a post-op of the same kernel: PyTorch would route a
    single-threaded 1x1 conv at batch < 16 to its own GEMM, half as fast as oneDNN's on AVX-512 machines.
    There ``weight`` may also be a oneDNN-packed weight (see `convnext.fuse`).
    """
    weight = _as_1x1(weight)
    if not torch.jit.is_scripting():  # TorchScript gets the plain ops
        if onednn_inference(x, weight, bias):
            post_op = ("gelu", [None], "none") if gelu else ("none", [], None)
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, *post_op)
    y = conv2d(x, weight, bias)
    return F.gelu(y) if gelu else y


def pointwise(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Apply a Linear over the channels of an NCHW tensor as a 1x1 convolution."""
    return conv1x1(x, linear.weight, linear.bias)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW tensor (the paper's "channels_first" LN).

    On channels_last memory both permutes are free views, so this is one native layer_norm call.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DepthwiseConv2d(nn.Conv2d):
    """The block's depthwise convolution (an ``nn.Conv2d``, stride 1, "same" padding), with `conv2d`'s faster
    CPU backward."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.same_padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.same_padding, self.groups)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """The ConvNeXt block: 7x7 depthwise conv, LN, 1x1 expand 4x, GELU, 1x1 project, layer scale, residual."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        kernel_size: int = 7,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, kernel_size)
        self.norm = LayerNorm2d(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
            if layer_scale_init_value and layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv1x1(self.norm(self.dwconv(x)), self.pwconv1.weight, self.pwconv1.bias, gelu=True)
        y = conv1x1(y, self.pwconv2.weight, self.pwconv2.bias)
        if self.gamma is not None:
            gamma = self.gamma.view(1, -1, 1, 1)
            if not (self.training and self.drop_path.p > 0):
                return torch.addcmul(x, y, gamma)  # x + gamma * y in one pass
            y = y * gamma
        return x + self.drop_path(y)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 at the first block to ``rate`` at the last."""
    return [rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _Classifier(nn.Module):
    """What every ConvNeXt shares: pooled LN + linear head, the timm-style API and gradient checkpointing."""

    in_chans: int
    num_features: int
    grad_checkpointing: bool = False

    def _init_head(self, num_classes: int, head_init_scale: float) -> None:
        self.norm = nn.LayerNorm(self.num_features, eps=LN_EPS)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    def _check_input(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._validate(x, stride)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.jit.unused
    def _validate(self, x: torch.Tensor, stride: int) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-1] < stride or x.shape[-2] < stride:
            raise UserError(
                f"expected an image batch of shape (N, {self.in_chans}, H, W) with H, W >= {stride}, "
                f"got {tuple(x.shape)}"
            )

    def _run(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                for block in blocks:
                    x = checkpoint(block, x, use_reentrant=False)
                return x
        return blocks(x)

    def fuse_for_inference(self) -> nn.Module:
        """A frozen copy with the same outputs and fewer operations: see `convnext.fuse.fuse`."""
        from .fuse import fuse  # fuse.py builds on this module

        return fuse(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: less memory for ~30% more compute."""
        self.grad_checkpointing = enable

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


class ConvNeXt(_Classifier):
    """Hierarchical ConvNeXt: patchify stem, four stages at strides 4/8/16/32, LN + 2x2 conv downsampling.

    With ``features_only`` it is the dense-prediction backbone of the official detection and segmentation
    code: no final norm or head, and ``forward`` returns the NCHW maps of ``out_indices``, each through its
    own channels-first LayerNorm ``norm{i}``.
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ):
        super().__init__()
        self.depths, self.dims, self.in_chans = tuple(depths), tuple(dims), in_chans
        self.num_features = dims[-1]
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i - 1], eps=LN_EPS), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
            )
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        for dim, depth in zip(dims, depths, strict=True):
            self.stages.append(nn.Sequential(*(Block(dim, rates.pop(0), layer_scale_init_value)
                                               for _ in range(depth))))
        self.features_only = features_only
        if features_only:
            self.out_indices = tuple(out_indices)
            if not set(self.out_indices) <= set(range(len(dims))):
                raise UserError(f"out_indices must be within 0..{len(dims) - 1}, got {out_indices}")
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=LN_EPS))
            self.apply(_init_weights)
        else:
            self._init_head(num_classes, head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's NCHW feature map (stride 32), before pooling."""
        x = self._check_input(x, 32)
        for downsample, stage in zip(self.downsample_layers, self.stages):  # noqa: B905 - TorchScript: no strict
            x = downsample(x)
            x = stage(x) if torch.jit.is_scripting() else self._run(stage, x)
        return x

    @torch.jit.unused
    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The normalised NCHW maps of ``out_indices`` (strides 4/8/16/32), for dense prediction."""
        x = self._check_input(x, 32)
        maps = []
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            x = self._run(stage, downsample(x))
            if i in self.out_indices:
                maps.append(getattr(self, f"norm{i}")(x))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_pyramid(x)
        return self.forward_head(self.forward_features(x))


class ConvNeXtIsotropic(_Classifier):
    """Isotropic ConvNeXt (paper Sec. 3.3): a 16x16 patchify stem without norm, then one resolution throughout."""

    def __init__(
        self,
        depth: int = 18,
        dim: int = 384,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 0.0,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        self.depth, self.dim, self.in_chans = depth, dim, in_chans
        self.num_features = dim
        self.stem = nn.Conv2d(in_chans, dim, 16, stride=16)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*(Block(dim, rate, layer_scale_init_value) for rate in rates))
        self._init_head(num_classes, head_init_scale)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The NCHW feature map at stride 16, before pooling."""
        x = self.stem(self._check_input(x, 16))
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

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder(**overrides)`` available to ``create_model(name)``."""
    _BUILDERS[name] = builder


for _name, (_cls, _defaults) in MODEL_ARCHS.items():
    register_model(_name, lambda _cls=_cls, _defaults=_defaults, **kw: _cls(**{**_defaults, **kw}))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in registration order."""
    return [name for name in _BUILDERS if fnmatch.fnmatch(name, pattern)]


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered architecture with random weights; ``overrides`` go to its constructor."""
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[-1] in n][:5]
        hint = f" Did you mean one of {close}?" if close else ""
        raise UserError(f"unknown model {name!r}.{hint} `convnext models` lists them all.")
    try:
        model = _BUILDERS[name](**overrides)
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
        load_checkpoint(model, download_weights(entry))
        model.pretrained_cfg["tag"] = entry.tag
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
