import subprocess
import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def quiet_machine_for_benchmark_notes(monkeypatch):
    """`convnext benchmark` adds a note when the load average says the cores are busy; the tests' own output
    checks should not depend on what else the machine runs (the note's own test sets a load)."""
    monkeypatch.setattr("convnext.cli.deploy.cores_and_load", lambda: (2, 0.0))


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mmdet_cascade_state(model, dims, fpn, width, classes):
    """A state dict named and shaped as mmdetection's CascadeRCNN with the official ConvNeXt configs, written
    from mmdet's module names (not from our key map): random values."""
    g = torch.Generator().manual_seed(1)
    state = {f"backbone.{k}": torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in model.backbone.body.state_dict().items()}

    def put(key, *shape):
        state[key] = torch.randn(*shape, generator=g)

    for i, d in enumerate(dims):
        put(f"neck.lateral_convs.{i}.conv.weight", fpn, d, 1, 1)
        put(f"neck.lateral_convs.{i}.conv.bias", fpn)
        put(f"neck.fpn_convs.{i}.conv.weight", fpn, fpn, 3, 3)
        put(f"neck.fpn_convs.{i}.conv.bias", fpn)
    for name, out, k in (("rpn_conv", fpn, 3), ("rpn_cls", 3, 1), ("rpn_reg", 12, 1)):
        put(f"rpn_head.{name}.weight", out, fpn, k, k)
        put(f"rpn_head.{name}.bias", out)
    for s in range(3):
        box, mask = f"roi_head.bbox_head.{s}", f"roi_head.mask_head.{s}"
        for c in range(4):
            put(f"{box}.shared_convs.{c}.conv.weight", fpn, fpn, 3, 3)  # ConvModule with a norm: no bias
            for p in ("weight", "bias", "running_mean"):
                put(f"{box}.shared_convs.{c}.bn.{p}", fpn)
            state[f"{box}.shared_convs.{c}.bn.running_var"] = torch.rand(fpn, generator=g) + 0.5
            state[f"{box}.shared_convs.{c}.bn.num_batches_tracked"] = torch.tensor(7)
            put(f"{mask}.convs.{c}.conv.weight", fpn, fpn, 3, 3)
            put(f"{mask}.convs.{c}.conv.bias", fpn)
        put(f"{box}.shared_fcs.0.weight", width, fpn * 7 * 7)
        put(f"{box}.shared_fcs.0.bias", width)
        put(f"{box}.fc_cls.weight", classes + 1, width)  # the background last
        put(f"{box}.fc_cls.bias", classes + 1)
        put(f"{box}.fc_reg.weight", 4 * classes, width)
        put(f"{box}.fc_reg.bias", 4 * classes)
        put(f"{mask}.upsample.weight", fpn, fpn, 2, 2)
        put(f"{mask}.upsample.bias", fpn)
        put(f"{mask}.conv_logits.weight", classes, fpn, 1, 1)
        put(f"{mask}.conv_logits.bias", classes)
    return state


@pytest.fixture
def mmdet_cascade_state():
    """``(model, dims, fpn, width, classes) -> state dict`` of mmdetection's names for a cascade detector."""
    return _mmdet_cascade_state


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended (what a ``kill -9``-ed writer's temp names carry)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
