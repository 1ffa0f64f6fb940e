"""One script for the day a GPU is lent: does every path work on CUDA, and how fast is it against the peers?

    .venv/bin/python benchmarks/gpu_check.py                      # on a CUDA machine: about 5-8 minutes
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick # the same checks, small, on a CPU (the tests)

Checks, each a row of one printed table (and ``--out``'s markdown + JSON):
- parity: every classifier variant's logits on the device against the CPU's, same weights (TF32 off);
- one bf16-autocast training step per task (classification, segmentation, detection): finite loss, gradients;
- the paper's Table 12 protocol (TF32, channels_last) for ConvNeXt against timm's Swin, and bf16 inference
  (weights cast) against the PyTorch peers, both through the benchmark tools the CLI uses;
- one DDP step in a one-process group (NCCL on CUDA, gloo on a CPU): the wrapper and its all-reduce work.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from convnext.models import MODEL_ARCHS, build_model

HERE = Path(__file__).resolve().parent
QUICK_VARIANTS = ["convnext_atto", "convnext_isotropic_small"]


def parity(device: torch.device, quick: bool) -> list[dict]:
    """Logits of each variant on ``device`` against the CPU's (float32, TF32 off): relative max difference."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    res, rows = (64 if quick else 224), []
    for name in QUICK_VARIANTS if quick else MODEL_ARCHS:
        torch.manual_seed(0)
        model = build_model(name).eval()
        x = torch.randn(2, 3, res, res)
        with torch.inference_mode():
            want = model(x)
            got = model.to(device)(x.to(device)).cpu()
        diff = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
        rows.append(dict(check=f"parity {name}", value=f"{diff:.1e} of max |logit|", ok=diff < 1e-4))
        del model
    return rows


def _train_step(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], device: torch.device) -> dict:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = loss_of()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    optimizer.step()
    ok = bool(torch.isfinite(loss)) and bool(grads) and all(torch.isfinite(g).all() for g in grads)
    return dict(value=f"loss {loss.item():.3f}, {time.perf_counter() - start:.2f} s", ok=ok)


def training_steps(device: torch.device, quick: bool) -> list[dict]:
    """One bf16-autocast step per task, with each task's own loss."""
    from convnext.tasks.segmentation.model import segmentation_loss

    side, batch = (128, 2) if quick else (512, 8)
    classifier = build_model("convnext_atto" if quick else "convnext_tiny", num_classes=10).to(device)
    images = torch.randn(batch, 3, side, side, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    segmenter = build_model("upernet_convnext_tiny", num_classes=5).to(device)
    masks = torch.randint(0, 5, (batch, side, side), device=device)
    detector = build_model("cascade_mask_rcnn_convnext_tiny", num_classes=3).to(device)
    boxes = torch.tensor([[8.0, 8.0, side / 2, side / 2], [side / 4, side / 4, side - 8.0, side - 8.0]], device=device)
    box_masks = torch.zeros(2, side, side, dtype=torch.uint8, device=device)
    for mask, (x0, y0, x1, y1) in zip(box_masks, boxes.int().tolist(), strict=True):
        mask[y0:y1, x0:x1] = 1
    targets = [dict(boxes=boxes, labels=torch.tensor([1, 2], device=device), masks=box_masks)] * 2
    steps = {
        "classification": (classifier, lambda: F.cross_entropy(classifier(images), labels)),
        "segmentation": (segmenter, lambda: segmentation_loss(segmenter(images, with_aux=True), masks, 0.4)),
        "detection (cascade)": (detector, lambda: sum(detector(list(images[:2]), targets).values())),
    }
    return [dict(check=f"bf16 train step, {task}", **_train_step(model, loss, device))
            for task, (model, loss) in steps.items()]


def speed(device: torch.device, quick: bool) -> list[dict]:
    """Table 12 (TF32, channels_last) against Swin, and bf16 inference against the PyTorch peers."""
    from convnext.deploy.benchmark import run_benchmark
    from convnext.deploy.table12 import run_table12

    table = run_table12(["tiny"] if quick else ["tiny", "small", "base"], [224], batch=2 if quick else 256,
                        rounds=1 if quick else 3, warmup=1 if quick else 10, device=device)
    rows = [dict(check=f"Table 12 (TF32) {r['res']}px {r['convnext']['model']}", ok=True,
                 value=f"{r['convnext']['img_s']['median']:.0f} img/s, {r['ratio']['median']:.2f}x "
                 f"{r['swin']['model']} (paper {r['paper'].get('ratio', float('nan')):.2f}x)")
            for r in table["rows"] if r["ratio"] is not None]
    report = run_benchmark(["convnext_atto" if quick else "convnext_tiny"], batches=[2 if quick else 256],
                           dtype="bf16", peers=["timm", "torchvision"], channels_last=True,
                           rounds=1 if quick else 3, warmup=1 if quick else 10, device=device)
    for row in report["results"]:
        ratios = ", ".join(f"{peer} {r['median']:.2f}x" for peer, r in row.get("ratio", {}).items())
        rows.append(dict(check=f"bf16 inference {row['impl']}", ok=True,
                         value=f"{row['img_s']['median']:.0f} img/s" + (f" ({ratios})" if ratios else "")))
    return rows


def ddp_step(device: torch.device) -> list[dict]:
    """One step of a DDP-wrapped model in a one-process group: NCCL on CUDA, gloo on a CPU."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:  # a free port for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = build_model("convnext_atto", num_classes=10).to(device)
        net = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        x = torch.randn(2, 3, 64, 64, device=device)
        result = _train_step(net, lambda: F.cross_entropy(net(x), torch.tensor([0, 1], device=device)), device)
    finally:
        dist.destroy_process_group()
    return [dict(check=f"DDP step ({backend}, 1 process)", **result)]


def run(device: torch.device, quick: bool, skip_speed: bool = False) -> list[dict]:
    rows = []
    for check in (parity, training_steps, None if skip_speed else speed):
        if check is not None:
            rows += check(device, quick)
    return rows + ddp_step(device)


def markdown(rows: list[dict], device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"gpu_check on {where}, torch {torch.__version__}", "", "| check | result | ok |", "|---|---|---|"]
    lines += [f"| {r['check']} | {r['value']} | {'yes' if r['ok'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small models and inputs, one round (for tests)")
    parser.add_argument("--skip-speed", action="store_true", help="correctness checks only")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --device cpu --quick for the CPU version)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rows = run(device, args.quick, args.skip_speed)
    table = markdown(rows, device)
    print(table)
    if args.out:
        os.makedirs(args.out.parent, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
