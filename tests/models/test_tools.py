"""PyTorch's own tools on our models: hooks, FX, torch.func, quantization, FakeTensor, the custom ops."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnext import Pointwise, as_linears, create_model, fuse
from convnext.models import Block, ConvNeXt, kernels

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def tiny(**kw) -> nn.Module:
    torch.manual_seed(0)
    model = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, layer_scale_init_value=0.5, **kw)
    with torch.no_grad():  # trained-looking affines, so that every parameter matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def official_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """The official repository's block, from its parameters, with plain autograd ops."""
    y = F.conv2d(x, block.dwconv.weight, block.dwconv.bias, padding=3, groups=x.shape[1]).permute(0, 2, 3, 1)
    y = F.layer_norm(y, block.norm.normalized_shape, block.norm.weight, block.norm.bias, block.norm.eps)
    y = F.linear(F.gelu(F.linear(y, block.pwconv1.weight, block.pwconv1.bias)), block.pwconv2.weight,
                 block.pwconv2.bias)
    return x + (block.gamma * y).permute(0, 3, 1, 2)


def test_forward_hooks_fire_on_every_linear_with_linear_semantics():
    model = tiny().eval()
    calls = {}

    def hook(module, args, output):
        calls[module] = calls.get(module, 0) + 1
        torch.testing.assert_close(output, F.linear(args[0], module.weight, module.bias), rtol=1e-4, atol=1e-5)

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        m.register_forward_hook(hook)
    with torch.no_grad():
        model(X)
    assert len(linears) == 2 * 5 + 1 and all(calls.get(m) == 1 for m in linears)


def test_block_matches_the_official_formula_forward_and_backward():
    block = tiny().stages[2][0]
    x = torch.randn(3, 24, 9, 9).contiguous(memory_format=torch.channels_last)
    grads = []
    for forward in (block, lambda t: official_block(block, t)):
        xi = x.clone().requires_grad_()
        block.zero_grad()
        forward(xi).square().sum().backward()
        grads.append([xi.grad] + [p.grad.clone() for p in block.parameters()])
    for ours, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_fx_symbolic_trace_and_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = tiny().eval()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(X), model(X))
        extractor = create_feature_extractor(model, {"stages.1": "c3", "stages.3": "c5", "head": "logits"})
        out = extractor(X)
    assert out["c3"].shape == (2, 16, 8, 8) and out["c5"].shape == (2, 32, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(X))


def test_torch_func_grad_matches_autograd():
    model = tiny()
    params = dict(model.named_parameters())

    def loss(p, x):
        return torch.func.functional_call(model, p, (x,)).logsumexp(1).sum()

    grads = torch.func.grad(loss)(params, X)
    model.zero_grad()
    loss(params, X).backward()
    for name, p in params.items():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_vmap_over_a_batch_matches_the_batched_forward():
    model = tiny().eval()
    with torch.no_grad():
        per_sample = torch.func.vmap(lambda x: model(x[None])[0])(X)
        torch.testing.assert_close(per_sample, model(X), rtol=1e-4, atol=1e-5)
        fused = fuse(model)
        torch.testing.assert_close(torch.func.vmap(lambda x: fused(x[None])[0])(X), per_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_dynamic_quantization_of_every_linear_stays_close():
    """int8 weights in every Linear: logits within 5% of float32's, relative to their norm (1.7% here)."""
    model = tiny().eval()
    quantized = torch.ao.quantization.quantize_dynamic(as_linears(copy.deepcopy(model)), {nn.Linear}, torch.qint8)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in quantized.modules()) == 2 * 5 + 1
    assert not any(isinstance(m, Pointwise) for m in quantized.modules())
    with torch.no_grad():
        reference, got = model(X), quantized(X)
    assert 0 < (got - reference).norm() < 0.05 * reference.norm()


@pytest.mark.parametrize("slice_bytes", [None, 2**40, 1])  # one slice (freed memory kept); whole batch; a row
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_mlp_op_passes_torch_library_opcheck(monkeypatch, slice_bytes, dtype):
    monkeypatch.setattr(kernels, "MLP_SLICE_BYTES", slice_bytes)
    x, shortcut = (torch.randn(3, c, 5, 5).contiguous(memory_format=torch.channels_last) for c in (8, 6))
    args = (x, shortcut, torch.randn(12, 8, 1, 1), torch.randn(12), torch.randn(6, 12, 1, 1), torch.randn(6))
    args = tuple(t.to(dtype) for t in args)
    before = args[1].clone()
    torch.library.opcheck(torch.ops.convnext.pointwise_mlp, args, test_utils=("test_schema", "test_faketensor"))
    got = torch.ops.convnext.pointwise_mlp(*args)
    want = kernels.pointwise_mlp_reference(*(t.float() for t in args))
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), want, **({} if dtype == torch.float32 else dict(atol=0.5, rtol=0.02)))
    assert torch.equal(args[1], before)  # a functional op: the residual input is left as it was
    strided = (*args[:3], torch.randn(24).to(dtype)[::2], args[4], torch.randn(12).to(dtype)[::2])
    torch.testing.assert_close(torch.ops.convnext.pointwise_mlp(*strided).float(),  # biases as views (vmap)
                               kernels.pointwise_mlp_reference(*(t.float() for t in strided)),
                               **({} if dtype == torch.float32 else dict(atol=0.5, rtol=0.02)))


def test_models_are_channels_last_whatever_the_input_layout():
    model = create_model("convnext_atto").eval()
    with torch.no_grad():
        stem = model.downsample_layers[0](X)
    assert stem.is_contiguous(memory_format=torch.channels_last)
