"""The two places where ConvNeXt wants a kernel PyTorch does not pick by itself, registered once each.

- `DepthwiseConv2dFunction`: a stride-1 "same" depthwise convolution whose CPU float32 backward is two
  forward convolutions (input gradient: the flipped kernel; weight gradient: each input plane correlated
  with its own gradient plane), which oneDNN runs faster than its backward-weights kernel for 7x7
  depthwise filters, and whose bias gradient is a plain sum.
- ``convnext::conv1x1_gelu``, a ``torch.library`` custom op with a fake kernel (FakeTensor, ``torch.export``,
  ``torch.compile``) and a vmap rule: a 1x1 convolution followed by exact GELU. On CPUs in float32 the GELU
  runs inside oneDNN's convolution as a post-op (``torch.ops.mkldnn._convolution_pointwise``, a private op:
  tested with the torch range pinned in pyproject.toml; where it is missing the op runs conv + GELU).
  Inference only (no autograd formula): `convnext.models.fuse` uses it; `DECOMPOSITIONS` turns it back into
  plain ATen ops for graph formats (ONNX, ``.pt2``) that should not depend on this package.

Neither branches on how it is being traced: tools see either a plain forward or one well-described op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

_ONEDNN_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


# -- depthwise convolution (training) ----------------------------------------------------------------------


def _depthwise_weight_grad(x: Tensor, grad: Tensor, padding: int) -> Tensor:
    """Every (sample, channel) plane of ``x`` correlated with its own gradient plane, summed over the batch."""
    n, c, h, w = x.shape
    planes = x.contiguous().view(1, n * c, h, w)
    kernels = grad.contiguous().view(n * c, 1, h, w)
    out = F.conv2d(planes, kernels, padding=padding, groups=n * c)
    return out.view(n, c, *out.shape[-2:]).sum(0).unsqueeze(1)


class DepthwiseConv2dFunction(torch.autograd.Function):
    """A stride-1 "same" depthwise convolution with the backward described above.

    An ``autograd.Function`` with ``setup_context`` and a generated vmap rule rather than a custom op: that
    is what ``torch.func`` transforms (grad, vmap, jacrev) accept; in torch 2.14 they refuse custom ops'
    ``register_autograd``. FX, ``torch.export`` and ``torch.compile`` trace through its plain forward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # Under autocast the forward ran in the gradient's dtype (bf16), not the saved tensors' dtypes.
        xc, wc = x.to(grad.dtype), weight.to(grad.dtype)
        grad_b = grad.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype) if need_b and ctx.has_bias else None
        if x.device.type == "cpu" and grad.dtype == torch.float32:
            flipped = wc.flip(-2, -1)
            grad_x = F.conv2d(grad, flipped, padding=ctx.padding, groups=weight.shape[0]) if need_x else None
            grad_w = _depthwise_weight_grad(xc, grad, ctx.padding) if need_w else None
        else:  # elsewhere the library's own backward is the fast one
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, xc, wc, None, [1, 1], [ctx.padding] * 2, [1, 1], False, [0, 0], weight.shape[0],
                [need_x, need_w, False])
        grad_x = grad_x.to(x.dtype) if grad_x is not None else None
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return grad_x, grad_w, grad_b, None


# -- 1x1 convolution + GELU (inference) --------------------------------------------------------------------


def _conv1x1_gelu_reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.gelu(F.conv2d(x, weight, bias))


@torch.library.custom_op("convnext::conv1x1_gelu", mutates_args=())
def conv1x1_gelu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``gelu(F.conv2d(x, weight, bias))`` for a (out, in, 1, 1) weight, the GELU fused on CPUs."""
    if _ONEDNN_POINTWISE and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32:
        y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "gelu", [None],
                                                    "none")
    else:
        y = _conv1x1_gelu_reference(x, weight, bias)
    return y.contiguous(memory_format=_memory_format(x))


@conv1x1_gelu.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


@conv1x1_gelu.register_vmap
def _(info, in_dims, x, weight, bias):
    """Images batched alone fold into the op's own batch axis; batched weights run one call per entry."""
    x_dim, weight_dim, bias_dim = in_dims
    if weight_dim is None and bias_dim is None:
        x = x.movedim(x_dim, 0)
        y = conv1x1_gelu(x.flatten(0, 1), weight, bias)
        return y.unflatten(0, x.shape[:2]), 0
    pick = [(t, d) for t, d in zip((x, weight, bias), in_dims, strict=True)]
    calls = [conv1x1_gelu(*(t if d is None else t.select(d, i) for t, d in pick)) for i in range(info.batch_size)]
    return torch.stack(calls), 0


@register_flop_formula(torch.ops.convnext.conv1x1_gelu)
def _(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """What FlopCounterMode counts for the op: its convolution's multiply-adds, twice (as for aten convs)."""
    return 2 * x_shape[0] * x_shape[2] * x_shape[3] * weight_shape[0] * weight_shape[1]


# Plain-ATen decompositions, for ``ExportedProgram.run_decompositions``.
DECOMPOSITIONS = {torch.ops.convnext.conv1x1_gelu.default: _conv1x1_gelu_reference}
