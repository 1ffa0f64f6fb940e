"""The two places where ConvNeXt wants a kernel PyTorch does not pick by itself, registered once each.

- `DepthwiseConv2dFunction`: a stride-1 "same" depthwise convolution whose CPU float32 and bf16 backward is two
  forward convolutions (input gradient: the flipped kernel; weight gradient: each input plane correlated
  with its own gradient plane), which oneDNN runs faster than its backward-weights kernel for 7x7
  depthwise filters, and whose bias gradient is a plain sum.
- ``convnext::pointwise_mlp``, a ``torch.library`` custom op with a fake kernel (FakeTensor, ``torch.export``,
  ``torch.compile``) and a vmap rule: the block's 1x1 convolution, exact GELU, second 1x1 convolution and
  residual add. On CPUs (float32 and bf16) the two 1x1 convolutions run as oneDNN matrix products over the pixels
  of the channels_last tensor with the GELU and the add as post-ops (``torch.ops.mkldnn._linear_pointwise``, whose
  matmul primitive beats oneDNN's 1x1 convolution on these shapes: see ``benchmarks/perf_table.py``). Private
  ops, tested with the torch range pinned in pyproject.toml; where they are missing the op runs the plain ATen
  ops. Inference only (no autograd formula): `convnext.models.fuse` uses it; `DECOMPOSITIONS` turns it back into
  plain ATen ops for graph formats (ONNX, ``.pt2``) that should not depend on this package.

Neither branches on how it is being traced: tools see either a plain forward or one well-described op.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

_ONEDNN_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


# -- depthwise convolution (training) ----------------------------------------------------------------------


def _depthwise_weight_grad(x: Tensor, grad: Tensor, padding: int) -> Tensor:
    """Every (sample, channel) plane of ``x`` correlated with its own gradient plane, summed over the batch in
    float32 (in bf16 each sample's part is rounded once, and the sum not again)."""
    n, c, h, w = x.shape
    planes = x.contiguous().view(1, n * c, h, w)
    kernels = grad.contiguous().view(n * c, 1, h, w)
    out = F.conv2d(planes, kernels, padding=padding, groups=n * c)
    return out.view(n, c, *out.shape[-2:]).sum(0, dtype=torch.float32).unsqueeze(1)


# Gradient dtypes whose CPU backward runs as two forward convolutions: for bf16 (autocast training) the library's
# backward is slower still than for float32 (benchmarks/perf_table.py, "training bf16").
_CPU_DEPTHWISE_DTYPES = (torch.float32, torch.bfloat16)


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
        if x.device.type == "cpu" and grad.dtype in _CPU_DEPTHWISE_DTYPES:
            flipped = wc.flip(-2, -1)
            grad_x = F.conv2d(grad, flipped, padding=ctx.padding, groups=weight.shape[0]) if need_x else None
            grad_w = _depthwise_weight_grad(xc, grad, ctx.padding) if need_w else None
        else:  # elsewhere (CUDA; float16, float64) the library's own backward
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, xc, wc, None, [1, 1], [ctx.padding] * 2, [1, 1], False, [0, 0], weight.shape[0],
                [need_x, need_w, False])
        grad_x = grad_x.to(x.dtype) if grad_x is not None else None
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return grad_x, grad_w, grad_b, None


# -- the block's pointwise MLP (inference) -----------------------------------------------------------------

# Hidden activations (4x the block's width) per slice of the pixels. Slicing a large batch lets glibc hand the
# same few buffers back from its cache instead of mapping fresh pages for every whole-batch hidden tensor; None
# (set by `convnext.deploy.allocator.keep_freed_memory`, after which glibc reuses freed memory of any size): one
# slice, which spares the copy of each slice's output into the whole.
MLP_SLICE_BYTES: int | None = 16 * 2**20
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def pointwise_mlp_reference(x: Tensor, shortcut: Tensor, weight1: Tensor, bias1: Tensor | None, weight2: Tensor,
                            bias2: Tensor | None) -> Tensor:
    """``convnext::pointwise_mlp`` in plain ATen ops: what graph formats get, so they load without us."""
    return shortcut + F.conv2d(F.gelu(F.conv2d(x, weight1, bias1)), weight2, bias2)


@functools.cache
def _cpu_has_bf16() -> bool:
    """Asked once: the answer cannot change while the process runs."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _runs_on_onednn(x: Tensor, shortcut: Tensor, weight1: Tensor) -> bool:
    """oneDNN's fused matrix products want CPU channels_last tensors of one dtype it has post-ops for (bf16 only
    where the CPU has bf16 instructions: elsewhere oneDNN would emulate them)."""
    if not (_ONEDNN_POINTWISE and x.device.type == "cpu" and x.dtype == shortcut.dtype == weight1.dtype):
        return False
    if x.dtype not in _ONEDNN_DTYPES:
        return False
    if x.dtype == torch.bfloat16 and not _cpu_has_bf16():
        return False
    return all(t.is_contiguous(memory_format=torch.channels_last) for t in (x, shortcut))


@torch.library.custom_op("convnext::pointwise_mlp", mutates_args=())
def pointwise_mlp(x: Tensor, shortcut: Tensor, weight1: Tensor, bias1: Tensor | None, weight2: Tensor,
                  bias2: Tensor | None) -> Tensor:
    """``shortcut + conv2d(gelu(conv2d(x, weight1, bias1)), weight2, bias2)`` for (out, in, 1, 1) weights.

    On CPUs (float32, bf16) each 1x1 convolution is one oneDNN matrix product over the pixels (rows) of the
    channels_last tensor, the GELU and the residual add its post-ops, ``MLP_SLICE_BYTES`` of hidden activations
    at a time.
    """
    if not _runs_on_onednn(x, shortcut, weight1):
        return pointwise_mlp_reference(x, shortcut, weight1, bias1, weight2, bias2).contiguous(
            memory_format=_memory_format(shortcut))
    n, channels, height, width = shortcut.shape
    pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # views of channels_last memory: no copies
    residual = shortcut.permute(0, 2, 3, 1).reshape(-1, channels)
    w1, w2 = weight1.flatten(1).contiguous(), weight2.flatten(1).contiguous()  # oneDNN reads them as dense
    bias1, bias2 = (None if b is None else b.contiguous() for b in (bias1, bias2))
    rows = pixels.shape[0] if MLP_SLICE_BYTES is None else max(1, MLP_SLICE_BYTES // (w1.shape[0] * x.element_size()))
    linear = torch.ops.mkldnn._linear_pointwise
    if rows >= pixels.shape[0]:  # one slice: the add writes the output, no copy of the shortcut first
        out = linear.binary(linear(pixels, w1, bias1, "gelu", [], "none"), residual, w2, bias2, "add")
    else:
        out = torch.empty_like(residual)
        for start in range(0, pixels.shape[0], rows):
            part = slice(start, start + rows)
            out[part] = linear.binary(linear(pixels[part], w1, bias1, "gelu", [], "none"), residual[part], w2,
                                      bias2, "add")
    return out.view(n, height, width, channels).permute(0, 3, 1, 2)


@pointwise_mlp.register_fake
def _(x: Tensor, shortcut: Tensor, weight1: Tensor, bias1: Tensor | None, weight2: Tensor,
      bias2: Tensor | None) -> Tensor:
    return torch.empty_like(shortcut, memory_format=_memory_format(shortcut))


@pointwise_mlp.register_vmap
def _(info, in_dims, x, shortcut, weight1, bias1, weight2, bias2):
    """Images batched alone fold into the op's own batch axis; batched weights run one call per entry."""
    args = (x, shortcut, weight1, bias1, weight2, bias2)
    if all(d is None for d in in_dims[2:]):
        size = info.batch_size
        images = [t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)
                  for t, d in zip(args[:2], in_dims[:2], strict=True)]
        y = pointwise_mlp(images[0].flatten(0, 1), images[1].flatten(0, 1), *args[2:])
        return y.unflatten(0, (size, -1)), 0
    calls = [pointwise_mlp(*(t if d is None else t.select(d, i) for t, d in zip(args, in_dims, strict=True)))
             for i in range(info.batch_size)]
    return torch.stack(calls), 0


@register_flop_formula(torch.ops.convnext.pointwise_mlp)
def _(x_shape, shortcut_shape, weight1_shape, bias1_shape, weight2_shape, *args, out_shape=None, **kwargs) -> int:
    """What FlopCounterMode counts for the op: its two convolutions' multiply-adds, twice (as for aten convs)."""
    pixels = x_shape[0] * x_shape[2] * x_shape[3]
    return 2 * pixels * weight1_shape[0] * (weight1_shape[1] + weight2_shape[0])


# Plain-ATen decompositions, for ``ExportedProgram.run_decompositions``.
DECOMPOSITIONS = {torch.ops.convnext.pointwise_mlp.default: pointwise_mlp_reference}
