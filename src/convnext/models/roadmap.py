"""The paper's modernization roadmap (Sec. 2, Fig. 2): ResNet-50 turned into ConvNeXt-T one change at a time.

`RoadmapNet` is one network whose `RoadmapConfig` holds every design decision of the roadmap. `STEPS` is
the paper's list, each step the configuration of its base step plus the one change its name says,
together with the paper's GFLOPs (multiply-adds at 224) and ImageNet-1K top-1. Every step is a
registered model, ``roadmap_<step>``, so ``create_model("roadmap_kernel_7")`` or ``convnext train
--model roadmap_kernel_7`` reruns an ablation; config fields are overrides too
(``create_model("roadmap_gelu", activation="relu")``).

The last step is ConvNeXt-T: its blocks are `models.Block` itself, and its modules carry the official
names (``downsample_layers``, ``stages.{s}.{b}.{gamma,dwconv,norm,pwconv1,pwconv2}``, ``norm``, ``head``),
so ``convnext_tiny`` weights load into it strictly. To keep the keys the same at every step, the stem is
always ``downsample_layers.0`` and the block's spatial conv is always ``dwconv``, even while it is a
dense 3x3.

Where the paper leaves a step open, we take the reading whose cost matches the paper's figures
(our GMACs at 224, next to the paper's GFLOPs, which count multiply-adds):

- ResNet-50 puts the stride-2 in the 3x3 conv of a stage's first block, as torchvision does: 4.09 GMACs,
  the paper's 4.1 (in the first 1x1, as in the original ResNet, it would be 3.86).
- ResNeXt-ify widens the bottleneck to 96-192-384-768 with blocks still 4x wider (384...3072): 5.27, the
  paper's 5.3. Inverting the bottleneck makes the block width 96... and the hidden layer 4x: 4.64 (4.6);
  the drop is the paper's reason, the downsampling blocks' 1x1 projection shortcuts getting 16x cheaper.
- Until the last step a stage's first block downsamples, with its spatial conv at stride 2 wherever that
  conv sits, and a 1x1 stride-2 conv + norm projects the shortcut. With the depthwise conv moved up, the
  conv runs at the input width before the 4x expansion: 4.07 (4.1). Large kernels: 4.15 at 7x7 (4.2).
- The patchify stem is a bare 4x4/4 conv: the paper adds the LayerNorm after the stem at the last step,
  along with the LayerNorms before each downsampling conv and after global pooling.
- "Fewer activations" keeps the one between the two 1x1 layers and drops the one after the residual
  add; "fewer norms" keeps the one after the depthwise conv (before the first 1x1) and leaves the
  projection shortcut's norm, which goes with in-block downsampling at the last step. "BN -> LN"
  replaces every norm. None of these changes cost: 4.15 throughout (the paper: about 4.1-4.3).
- Layer scale (1e-6) is in every step: the paper lists it in its training recipe (Table 5), not in the
  roadmap, and the roadmap trains every step with one recipe. ``layer_scale_init_value=0`` removes it,
  giving e.g. the textbook 25,557,032-parameter ResNet-50 (with it: 25,572,136).
- Conv biases follow one rule: none right before a BatchNorm, whose mean subtraction would cancel them;
  everywhere else a bias, as ConvNeXt has (a LayerNorm over channels does not cancel a per-channel bias).
- Separate downsampling: 4.46 GMACs and 28,589,128 parameters, ConvNeXt-T's 4.5 G and 28.6 M.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .complexity import count_macs_and_activations, count_params
from .convnext import LN_EPS, Block, ClassifierHead, ConvNeXtBase, drop_path_rates, register_model
from .layers import DropPath, LayerNorm2d

EXPANSION = 4
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
_NORMS = {"batch": nn.BatchNorm2d, "layer": partial(LayerNorm2d, eps=LN_EPS)}
_STEMS = ("resnet", "patchify")


@dataclass(frozen=True)
class RoadmapConfig:
    """The design decisions of the roadmap; the defaults are ResNet-50."""

    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem: str = "resnet"  # "resnet": 7x7/2 conv, norm, activation, 3x3/2 max-pool; "patchify": 4x4/4 conv
    dims: tuple[int, ...] = (64, 128, 256, 512)  # per stage: bottleneck width, or block width once inverted
    depthwise: bool = False  # the spatial conv has one group per channel (ResNeXt with group width 1)
    inverted_bottleneck: bool = False  # hidden layer 4x the block width, not the block 4x the bottleneck
    dwconv_first: bool = False  # the spatial conv opens the block instead of sitting between the 1x1 layers
    kernel_size: int = 3
    activation: str = "relu"
    single_activation: bool = False  # one activation, after the first 1x1; none after the residual add
    single_norm: bool = False  # one norm, after the spatial conv
    norm: str = "batch"  # "batch" or "layer"
    separate_downsampling: bool = False  # LN + 2x2/2 conv between stages, LN after the stem and after pooling
    layer_scale_init_value: float = 1e-6  # 0 or None: no layer scale

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(self.depths))  # lists from JSON (--set model_args=...)
        object.__setattr__(self, "dims", tuple(self.dims))
        choices = {"stem": _STEMS, "activation": _ACTIVATIONS, "norm": _NORMS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if len(self.depths) != len(self.dims):
            raise UserError(f"depths {self.depths} and dims {self.dims} must have the same length")
        if self.kernel_size % 2 == 0:
            raise UserError(f"kernel_size must be odd, got {self.kernel_size}")

    @property
    def is_convnext_block(self) -> bool:
        """Whether a non-downsampling block of this configuration is the ConvNeXt block."""
        return (self.depthwise and self.inverted_bottleneck and self.dwconv_first and self.single_activation
                and self.single_norm and self.activation == "gelu" and self.norm == "layer")


def _bias(config: RoadmapConfig, before_norm: bool) -> bool:
    """BatchNorm subtracts a per-channel mean, cancelling a bias; a per-pixel LayerNorm does not."""
    return not (before_norm and config.norm == "batch")


def _pointwise(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


class RoadmapBlock(nn.Module):
    """A residual block of any roadmap step: two 1x1 layers and a spatial conv, in either order.

    ``in_dim`` -> ``out_dim`` with ``stride``; the 1x1 layers are ``nn.Linear`` parameters run as 1x1 convolutions
    on NCHW (`_pointwise`), so the names and shapes of the last steps are ConvNeXt's.
    """

    def __init__(self, config: RoadmapConfig, in_dim: int, out_dim: int, hidden: int, stride: int = 1,
                 drop_path: float = 0.0):
        super().__init__()
        c = config
        norm, act, many_norms = _NORMS[c.norm], _ACTIVATIONS[c.activation], not c.single_norm
        spatial = in_dim if c.dwconv_first else hidden
        self.dwconv_first = c.dwconv_first
        self.dwconv = nn.Conv2d(spatial, spatial, c.kernel_size, stride, c.kernel_size // 2,
                                groups=spatial if c.depthwise else 1, bias=_bias(c, before_norm=True))
        self.norm = norm(spatial)
        self.dwconv_act = nn.Identity() if c.single_activation else act()
        self.pwconv1 = nn.Linear(in_dim, hidden, bias=_bias(c, many_norms))
        self.norm1 = norm(hidden) if many_norms else nn.Identity()
        self.act = act()
        self.pwconv2 = nn.Linear(hidden, out_dim, bias=_bias(c, many_norms))
        self.norm2 = norm(out_dim) if many_norms else nn.Identity()
        ls = c.layer_scale_init_value
        self.gamma = nn.Parameter(torch.full((out_dim,), float(ls))) if ls and ls > 0 else None
        self.drop_path = DropPath(drop_path)
        self.shortcut = nn.Identity()
        if stride != 1 or in_dim != out_dim:
            projection = nn.Conv2d(in_dim, out_dim, 1, stride, bias=_bias(c, before_norm=True))
            self.shortcut = nn.Sequential(projection, norm(out_dim))
        self.out_act = nn.Identity() if c.single_activation else act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dwconv_first:
            y = self.dwconv_act(self.norm(self.dwconv(x)))
            y = self.act(self.norm1(_pointwise(y, self.pwconv1)))
        else:
            y = self.act(self.norm1(_pointwise(x, self.pwconv1)))
            y = self.dwconv_act(self.norm(self.dwconv(y)))
        y = self.norm2(_pointwise(y, self.pwconv2))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.out_act(self.shortcut(x) + self.drop_path(y))


class RoadmapNet(ClassifierHead, ConvNeXtBase):
    """A four-stage network anywhere on the road from ResNet-50 to ConvNeXt-T (see `RoadmapConfig`)."""

    stride = 32

    def __init__(self, config: RoadmapConfig | None = None, in_chans: int = 3, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, head_init_scale: float = 1.0):
        super().__init__()
        c = self.config = config or RoadmapConfig()
        self.in_chans = in_chans
        hidden = [EXPANSION * d if c.inverted_bottleneck else d for d in c.dims]
        widths = [d if c.inverted_bottleneck else EXPANSION * d for d in c.dims]
        self.num_features = widths[-1]
        self.downsample_layers = nn.ModuleList([self._stem(c, in_chans)])
        self.stages = nn.ModuleList()
        rates = drop_path_rates(drop_path_rate, sum(c.depths))
        in_dim = c.dims[0]  # the stem's width
        for i, depth in enumerate(c.depths):
            stride = 1
            if i > 0 and c.separate_downsampling:
                self.downsample_layers.append(self._downsample(in_dim, widths[i]))
                in_dim = widths[i]
            elif i > 0:
                self.downsample_layers.append(nn.Identity())  # the stage's first block downsamples
                stride = 2
            width = widths[i]
            blocks = [self._block(c, in_dim, width, hidden[i], stride, rates.pop(0))]
            blocks += [self._block(c, width, width, hidden[i], 1, rates.pop(0)) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            in_dim = width
        self._init_head(num_classes)
        if not c.separate_downsampling:
            self.norm = nn.Identity()  # ResNet pools straight into the classifier
        self._finish()
        self._scale_head(head_init_scale)

    @staticmethod
    def _stem(c: RoadmapConfig, in_chans: int) -> nn.Sequential:
        dim = c.dims[0]
        if c.stem == "resnet":
            conv = nn.Conv2d(in_chans, dim, 7, 2, 3, bias=_bias(c, before_norm=True))
            return nn.Sequential(conv, _NORMS[c.norm](dim), _ACTIVATIONS[c.activation](), nn.MaxPool2d(3, 2, 1))
        if c.separate_downsampling:
            return nn.Sequential(nn.Conv2d(in_chans, dim, 4, 4), LayerNorm2d(dim, eps=LN_EPS))
        return nn.Sequential(nn.Conv2d(in_chans, dim, 4, 4))

    @staticmethod
    def _downsample(in_dim: int, out_dim: int) -> nn.Sequential:
        return nn.Sequential(LayerNorm2d(in_dim, eps=LN_EPS), nn.Conv2d(in_dim, out_dim, 2, 2))

    @staticmethod
    def _block(c: RoadmapConfig, in_dim: int, dim: int, hidden: int, stride: int, rate: float) -> nn.Module:
        """`models.Block` where the configuration is ConvNeXt's, else the configurable block."""
        if c.is_convnext_block and in_dim == dim and stride == 1:
            return Block(dim, drop_path=rate, layer_scale_init_value=c.layer_scale_init_value,
                         kernel_size=c.kernel_size, mlp_ratio=EXPANSION)
        return RoadmapBlock(c, in_dim, dim, hidden, stride, rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's NCHW feature map (stride 32), before pooling."""
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = self._run(stage, downsample(x))
        return x


@dataclass(frozen=True)
class RoadmapStep:
    """One bar of the paper's Figure 2: a configuration and what the paper measured for it."""

    name: str
    label: str  # the change, as the paper's figure words it
    group: str  # the figure's section: macro design, ResNeXt, inverted bottleneck, large kernel, micro design
    base: str | None  # the step this one changes
    config: RoadmapConfig
    paper_gflops: float | None  # multiply-adds at 224, where the paper states them
    paper_top1: float  # ImageNet-1K top-1 (%), 300-epoch recipe

    @property
    def model_name(self) -> str:
        return f"roadmap_{self.name}"


_DIMS_96 = (96, 192, 384, 768)
_MACRO, _INVERTED, _KERNEL, _MICRO = "Macro design", "Inverted bottleneck", "Large kernel", "Micro design"
# The paper's Figure 2, top to bottom: name, label, group, change to the base step, GFLOPs, top-1.
_ROWS = [
    ("resnet50", "ResNet-50", "ResNet", {}, 4.1, 78.8),
    ("stage_ratio", "stage ratio (3,3,9,3)", _MACRO, dict(depths=(3, 3, 9, 3)), 4.5, 79.4),
    ("patchify_stem", '"patchify" stem', _MACRO, dict(stem="patchify"), 4.4, 79.5),
    ("resnextify", "depthwise conv, width 96", "ResNeXt", dict(depthwise=True, dims=_DIMS_96), 5.3, 80.5),
    ("inverted_bottleneck", "inverting dims", _INVERTED, dict(inverted_bottleneck=True), 4.6, 80.6),
    ("move_up_dwconv", "move up depthwise conv", _INVERTED, dict(dwconv_first=True), 4.1, 79.9),
    ("kernel_5", "kernel size 5", _KERNEL, dict(kernel_size=5), None, 80.4),
    ("kernel_7", "kernel size 7", _KERNEL, dict(kernel_size=7), 4.2, 80.6),
    ("kernel_9", "kernel size 9", _KERNEL, dict(kernel_size=9), None, 80.6),
    ("kernel_11", "kernel size 11", _KERNEL, dict(kernel_size=11), None, 80.5),
    ("gelu", "ReLU -> GELU", _MICRO, dict(activation="gelu"), None, 80.6),
    ("fewer_activations", "fewer activations", _MICRO, dict(single_activation=True), None, 81.3),
    ("fewer_norms", "fewer norms", _MICRO, dict(single_norm=True), None, 81.4),
    ("layer_norm", "BN -> LN", _MICRO, dict(norm="layer"), None, 81.5),
    ("separate_downsampling", "separate downsampling", _MICRO, dict(separate_downsampling=True), 4.5, 82.0),
]
# Kernel sizes are alternatives to the 3x3 and the paper goes on from 7x7; other steps change the row above.
_BASES = {"kernel_7": "move_up_dwconv", "kernel_9": "move_up_dwconv", "kernel_11": "move_up_dwconv",
          "gelu": "kernel_7"}


def _build_steps() -> list[RoadmapStep]:
    steps: list[RoadmapStep] = []
    by_name: dict[str, RoadmapStep] = {}
    for name, label, group, change, gflops, top1 in _ROWS:
        base = _BASES.get(name, steps[-1].name if steps else None)
        config = replace(by_name[base].config, **change) if base else RoadmapConfig()
        steps.append(RoadmapStep(name, label, group, base, config, gflops, top1))
        by_name[name] = steps[-1]
    return steps


STEPS: list[RoadmapStep] = _build_steps()
_CONFIG_FIELDS = {f.name for f in fields(RoadmapConfig)}


def get_step(name: str) -> RoadmapStep:
    """A step by name, with or without the ``roadmap_`` prefix."""
    name = name.removeprefix("roadmap_")
    for step in STEPS:
        if step.name == name:
            return step
    raise UserError(f"unknown roadmap step {name!r}; steps: {', '.join(s.name for s in STEPS)}")


def build_step(step: str | RoadmapStep, **overrides) -> RoadmapNet:
    """The network of a step; ``overrides`` may change config fields or `RoadmapNet` arguments."""
    step = get_step(step) if isinstance(step, str) else step
    changes = {k: overrides.pop(k) for k in list(overrides) if k in _CONFIG_FIELDS}
    return RoadmapNet(replace(step.config, **changes), **overrides)


for _step in STEPS:
    register_model(_step.model_name, partial(build_step, _step))


def measure_steps(res: int = 224) -> list[dict]:
    """Every step's parameters and GMACs at ``res`` (counted on the meta device), beside the paper's figures."""
    rows = []
    for step in STEPS:
        with torch.device("meta"):
            model = build_step(step)
        macs, _ = count_macs_and_activations(model, res)
        rows.append(dict(step=step.name, model=step.model_name, base=step.base, change=step.label, group=step.group,
                         params=count_params(model), gmacs=round(macs / 1e9, 3), res=res,
                         paper_gflops=step.paper_gflops, paper_top1=step.paper_top1))
    return rows


_GROUP_COLORS = {"ResNet": "#7f7f7f", _MACRO: "#4c72b0", "ResNeXt": "#55a868", _INVERTED: "#c44e52",
                 _KERNEL: "#8172b2", _MICRO: "#dd8452"}
SWIN_T_TOP1 = 81.3  # the paper's reference line: Swin-T at 4.5 GFLOPs


def plot_roadmap(rows: list[dict], path: str | os.PathLike) -> None:
    """Draw the paper's Figure 2 for ConvNeXt-T: top-1 per step as horizontal bars, GMACs beside them.

    Steps off the road to ConvNeXt-T (the kernel sizes the paper tried but did not keep) are paler.
    """
    from matplotlib.figure import Figure  # drawing only: keep matplotlib out of `import convnext`
    from matplotlib.patches import Patch

    by_name = {r["step"]: r for r in rows}
    kept, name = set(), rows[-1]["step"]
    while name:
        kept.add(name)
        name = by_name[name]["base"]
    fig = Figure(figsize=(9, 6.4), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    left, y = 78.0, range(len(rows))
    bars = ax.barh(y, [r["paper_top1"] - left for r in rows], left=left, height=0.72,
                   color=[_GROUP_COLORS[r["group"]] for r in rows])
    for i, (bar, row) in enumerate(zip(bars, rows, strict=True)):
        bar.set_alpha(1.0 if row["step"] in kept else 0.4)
        ax.text(row["paper_top1"] + 0.04, i, f"{row['paper_top1']:.1f}", va="center", fontsize=9)
        paper = f"{row['paper_gflops']:.1f}" if row["paper_gflops"] is not None else "-"
        ax.text(1.03, i, f"{row['gmacs']:5.2f}  {paper:>4}", va="center", fontsize=9, family="monospace",
                transform=ax.get_yaxis_transform())
    ax.text(1.03, -0.75, " ours  paper\nGMACs GFLOPs", fontsize=8, color="0.35", family="monospace",
            va="bottom", transform=ax.get_yaxis_transform())
    ax.axvline(SWIN_T_TOP1, color="0.25", linestyle="--", linewidth=1)
    ax.text(SWIN_T_TOP1 + 0.03, -0.75, f"Swin-T {SWIN_T_TOP1} (4.5 GFLOPs)", color="0.25", fontsize=9, va="bottom")
    labels = [r["change"].replace("->", "\u2192") for r in rows]
    labels[-1] += "\n= ConvNeXt-T"
    ax.set_yticks(list(y), labels)
    ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.4, -0.8)
    ax.set_xlim(left, 82.5)
    ax.set_xlabel("ImageNet-1K top-1 accuracy (%), as reported in the paper")
    ax.set_title(f"ResNet-50 \u2192 ConvNeXt-T, one change at a time (GMACs at {rows[0]['res']}px)",
                 loc="left", pad=14)
    handles = [Patch(color=color, label=group) for group, color in _GROUP_COLORS.items()]
    handles.append(Patch(color=_GROUP_COLORS[_KERNEL], alpha=0.4, label="tried, not kept"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=1, edgecolor="white")
    ax.spines[["top", "right"]].set_visible(False)
    from ..plots import save_figure

    try:
        save_figure(fig, path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write the plot to {path}: {err}") from None
