"""The depthwise convolution's own CPU backward, in float32 and in bf16 (autocast training, or a model cast to bf16)."""

import pytest
import torch

from convnext.models import kernels
from convnext.models.layers import DepthwiseConv2d


def _grads(layer: DepthwiseConv2d, x: torch.Tensor, autocast: bool) -> list[torch.Tensor | None]:
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    (y.float() * torch.linspace(-0.5, 1.5, x.shape[-1])).sum().backward()
    return [x.grad, layer.weight.grad, layer.bias.grad]


def _relative_errors(got: list[torch.Tensor], exact: list[torch.Tensor]) -> list[float]:
    return [float((g.double() - e).norm() / e.norm()) for g, e in zip(got, exact, strict=True)]


def _library_backward(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_CPU_DEPTHWISE_DTYPES", ())


@pytest.mark.parametrize("case", ["float32", "autocast", "bf16 model"])
def test_depthwise_backward_runs_as_forward_convolutions_as_exact_as_the_library(monkeypatch, case):
    torch.manual_seed(0)
    layer = DepthwiseConv2d(16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    exact = _grads(layer.double(), x.double(), autocast=False)
    layer.float()
    if case == "bf16 model":
        layer, x = layer.bfloat16(), x.bfloat16()
    calls = []
    weight_grad = kernels._depthwise_weight_grad
    monkeypatch.setattr(kernels, "_depthwise_weight_grad", lambda *a: calls.append(a[1].dtype) or weight_grad(*a))
    ours = _grads(layer, x, autocast=case == "autocast")
    assert calls == [torch.float32 if case == "float32" else torch.bfloat16]  # our formula ran, in that dtype
    assert [g.dtype for g in ours] == [x.dtype] * 3  # gradients in the dtype of what they belong to
    _library_backward(monkeypatch)
    library = _grads(layer, x, autocast=case == "autocast")
    assert len(calls) == 1
    # input, weight and bias gradients about as close to float64 as the library's own backward gets (bf16: ~3e-3;
    # a bf16 model's weight gradient rounds each sample's part once more: 1.2x the library's error here)
    for got, reference in zip(_relative_errors(ours, exact), _relative_errors(library, exact), strict=True):
        assert got <= 1.25 * reference + 1e-6


def test_depthwise_backward_computes_only_the_gradients_asked_for(monkeypatch):
    layer = DepthwiseConv2d(8).requires_grad_(False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    calls = []
    monkeypatch.setattr(kernels, "_depthwise_weight_grad", lambda *a: calls.append(1))
    layer(x).sum().backward()
    assert calls == [] and x.grad is not None and layer.weight.grad is None  # a frozen filter: no weight gradient
    layer.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.detach())  # an input that needs no gradient
    monkeypatch.undo()
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32
