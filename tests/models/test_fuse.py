import copy
import io

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from convnext import fuse
from convnext.models import MODEL_ARCHS, Block, build_model
from convnext.models.fuse import FusedBlock

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def trained_looking(name: str, **kw) -> torch.nn.Module:
    """Random weights with the spread of trained ones (layer scales well away from 1e-6, LN affines away from
    1 and 0), so that folding them is really tested. Built on "meta" first: no slow initialisation."""
    with torch.device("meta"):
        model = build_model(name, **kw)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("gamma"):
                p.uniform_(0.05, 1.0, generator=generator)
            elif p.ndim == 1 and "norm" in pname and pname.endswith("weight"):
                p.uniform_(0.5, 1.5, generator=generator)
            else:
                p.normal_(0, 0.05 if p.ndim == 1 else 0.02, generator=generator)
    return model


@pytest.mark.parametrize("name", list(MODEL_ARCHS))
def test_fused_logits_match_on_every_variant(name):
    model = trained_looking(name)
    with torch.no_grad():
        expected = model(X)
        fused = model.fuse_for_inference()
        diff = (fused(X) - expected).abs().max().item()
        bf16 = model.fuse_for_inference(torch.bfloat16)(X.bfloat16())
    assert diff < 1e-4, f"{name}: fused logits differ by {diff:.2e}"
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    # bf16 (8 significant bits, README's stated tolerance): within 2% of the largest logit
    bf16_diff = (bf16.float() - expected).abs().max().item()
    assert bf16.dtype == torch.bfloat16 and bf16_diff < 0.02 * expected.abs().max(), f"{name}: bf16 {bf16_diff:.3f}"


def test_fuse_folds_norm_affine_and_layer_scale_and_leaves_the_original():
    model = trained_looking("convnext_atto").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    blocks = [m for m in fused.modules() if isinstance(m, FusedBlock)]
    assert len(blocks) == sum(model.depths) and not any(isinstance(m, Block) for m in fused.modules())
    block = blocks[0]
    assert block.norm.weight is None and block.norm.bias is None
    assert not hasattr(block, "gamma") and isinstance(block.pwconv2, torch.nn.Conv2d)
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    assert fused.stages[0][0].dwconv.weight.is_contiguous(memory_format=torch.channels_last)
    # the original still trains and keeps the official names and values
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fused_block_runs_fewer_kernels():
    model = trained_looking("convnext_atto")

    def kernels(m):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            m.stages[2](torch.randn(1, 160, 4, 4).contiguous(memory_format=torch.channels_last))
        return [e.name for e in prof.events() if e.name.startswith(("aten::", "convnext::"))]

    plain, fused = kernels(model), kernels(model.fuse_for_inference())
    blocks = model.depths[2]
    # per block: one op for both 1x1 convs with the GELU and the residual add; the layer scale is in the weights
    assert fused.count("convnext::pointwise_mlp") == plain.count("aten::gelu") == plain.count("aten::add") == blocks
    assert not {"aten::gelu", "aten::mul", "aten::add", "aten::add_"} & set(fused)


def test_flop_counter_and_tracer_see_the_fused_op_with_the_same_result():
    model = trained_looking("convnext_atto")
    fused = model.fuse_for_inference()
    with torch.no_grad():
        expected = fused(X)
        with FlopCounterMode(display=False) as counted_fused:
            seen = fused(X)
        with FlopCounterMode(display=False) as counted:
            model(X)
        traced = torch.jit.trace(fused, X, check_trace=False)
    assert (seen - expected).abs().max() < 1e-5
    assert counted_fused.get_total_flops() == counted.get_total_flops() > 0
    assert "convnext::pointwise_mlp" in str(traced.inlined_graph)  # tracers see the op (export decomposes it)
    assert (traced(X) - expected).abs().max() < 1e-5


def test_fused_backbone_keeps_the_pyramid():
    model = trained_looking("convnext_atto", features_only=True)
    with torch.no_grad():
        expected = model(X)
        maps = model.fuse_for_inference()(X)
    assert len(maps) == 4
    for got, want in zip(maps, expected, strict=True):
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4


def test_fused_model_follows_in_place_changes_and_pickles():
    fused = trained_looking("convnext_atto").fuse_for_inference()
    with torch.no_grad():
        before = fused(X)
        fused.stages[2][0].pwconv2.weight.mul_(2)
        after = fused(X)
    assert (after - before).abs().max() > 1e-3
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(fused), buffer)
    buffer.seek(0)
    with torch.no_grad():
        assert torch.equal(torch.load(buffer, weights_only=False)(X), after)  # our own bytes, just written
    from convnext.models.layers import LayerNorm2d

    norm = next(m for m in fused.modules() if isinstance(m, LayerNorm2d))
    state = dict(norm.__dict__)
    del state["over_channels"]  # as pickled before the flag existed
    old = LayerNorm2d.__new__(LayerNorm2d)
    old.__setstate__(state)
    assert old.over_channels is False
