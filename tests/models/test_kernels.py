"""The depthwise convolution's own CPU backward, in float32 and in bf16 (autocast training)."""

import pytest
import torch

from convnext.models import kernels
from convnext.models.layers import DepthwiseConv2d


def _grads(layer: DepthwiseConv2d, x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        y = layer(x)
    (y.float() * torch.linspace(-0.5, 1.5, x.shape[-1])).sum().backward()
    return [x.grad, layer.weight.grad, layer.bias.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_depthwise_backward_runs_as_forward_convolutions_and_matches_float64(monkeypatch, dtype):
    torch.manual_seed(0)
    layer = DepthwiseConv2d(16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    calls = []
    weight_grad = kernels._depthwise_weight_grad
    monkeypatch.setattr(kernels, "_depthwise_weight_grad", lambda *a: calls.append(a[1].dtype) or weight_grad(*a))
    got = _grads(layer, x, dtype)
    assert calls == [dtype]  # our formula ran, in the gradient's own dtype
    assert [g.dtype for g in got] == [torch.float32] * 3  # parameters and input keep their dtype
    reference = _grads(layer.double(), x.double(), torch.float32)
    # float32: to rounding; bf16: the error of bf16 rounding itself (8 bits of mantissa), over each whole tensor
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    for ours, exact in zip(got, reference, strict=True):
        assert (ours.double() - exact).norm() < tolerance * exact.norm()
