"""Classification metrics over a data loader: top-1, top-5, cross-entropy loss and per-class accuracy.

Counts are summed, then all-reduced when running distributed, so every rank gets the metrics of the
whole validation set however it was sharded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...data.images import Digits, EvalImages, ImageFolder
from ...errors import UserError, some
from ...models.convnext import check_resolution
from ...weights import data_config
from ...weights.int8 import QuantizedModel
from ..loading import load_model

# The precisions a float model can be scored in, by the names the command line uses.
PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    reference: nn.Module | None = None,
) -> dict:
    """Metrics of ``model`` on ``(images, labels[, bad_index])`` batches; label -1 marks an image left out.
    Images reach ``model`` in its weights' dtype (a bf16 model gets bf16 images).

    Returns ``top1``/``top5`` (percent), ``loss`` (mean cross-entropy), ``per_class`` (percent, None for a
    class without images), ``count`` (images scored) and ``skipped`` (unreadable images); with a float
    ``reference`` model also ``agreement`` (see `Agreement`).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    input_dtype = next(model.parameters(), torch.empty(0)).dtype
    agreement = Agreement(reference, device) if reference is not None else None
    # per class: images, top-1 hits, top-5 hits; then total loss and skipped images
    per_class = torch.zeros(3, num_classes, dtype=torch.float64, device=device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    k = min(5, num_classes)
    for batch in batches:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        keep = labels >= 0
        totals[1] += (~keep).sum()
        if not keep.any():
            continue
        images, labels = images[keep], labels[keep]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images.to(input_dtype))
        logits = logits.float()
        if agreement is not None:
            agreement.add(images, logits)
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        top = logits.topk(k, dim=1).indices
        hits1 = (top[:, 0] == labels).double()
        hits5 = (top == labels[:, None]).any(dim=1).double()
        per_class[0].index_add_(0, labels, torch.ones_like(hits1))
        per_class[1].index_add_(0, labels, hits1)
        per_class[2].index_add_(0, labels, hits5)
    model.train(was_training)
    metrics = _summed_metrics(per_class, totals)
    return metrics if agreement is None else dict(metrics, agreement=agreement.result())


def _summed_metrics(per_class: torch.Tensor, totals: torch.Tensor) -> dict:
    """`evaluate`'s metrics from its counts, summed over every rank when running distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(per_class)
        dist.all_reduce(totals)
    count = per_class[0].sum().item()
    if count == 0:
        return dict(top1=0.0, top5=0.0, loss=float("nan"), per_class=[None] * per_class.shape[1], count=0,
                    skipped=int(totals[1].item()))
    return dict(
        top1=100 * per_class[1].sum().item() / count,
        top5=100 * per_class[2].sum().item() / count,
        loss=totals[0].item() / count,
        per_class=[100 * hit / n if n else None
                   for n, hit in zip(per_class[0].tolist(), per_class[1].tolist(), strict=True)],
        count=int(count),
        skipped=int(totals[1].item()),
    )


class Agreement:
    """How far a model's logits stray from a float ``reference`` model's on the same images: what casting to bf16
    (or quantizing) costs, image by image, beyond what top-1 on the labels shows. The reference is put in
    eval mode (it is only ever run for inference here)."""

    def __init__(self, reference: nn.Module, device: torch.device):
        self.reference = reference.eval().to(device)
        self.same = torch.zeros((), dtype=torch.float64, device=device)  # images whose top-1 class is unchanged
        self.extremes = torch.zeros(2, dtype=torch.float64, device=device)  # max |difference|, max |reference|
        self.count = 0

    @torch.no_grad()
    def add(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        """Run the reference on float ``images`` and compare with ``logits``, the other model's on them."""
        expected = self.reference(images).float()
        logits = logits.float()
        self.same += (expected.argmax(1) == logits.argmax(1)).sum()
        self.extremes = torch.maximum(self.extremes, torch.stack([(expected - logits).abs().max(),
                                                                  expected.abs().max()]).double())
        self.count += len(images)

    def result(self) -> dict:
        """``top1_agreement`` (percent of images), ``max_logit_diff``, ``max_abs_logit`` (the reference's, for
        scale) and ``count``, over every rank's images when running distributed (copies are reduced, so asking
        twice gives the same answer)."""
        same, extremes = self.same.clone(), self.extremes.clone()
        count = torch.tensor(float(self.count), dtype=torch.float64, device=same.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(same)
            dist.all_reduce(count)
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        n = int(count.item())
        return dict(top1_agreement=100 * same.item() / n if n else 0.0, max_logit_diff=extremes[0].item(),
                    max_abs_logit=extremes[1].item(), count=n)


def evaluate_checkpoint(model_name: str | None, checkpoint: str | os.PathLike,
                        data: str | os.PathLike | None = None, *, ema: bool = False, res: int | None = None,
                        batch_size: int = 64, workers: int = 0, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> dict:
    """Score a checkpoint on an image folder (``DIR/val`` when present) or, without ``data``, on the held-out
    digits. The model is rebuilt by ``load_model`` (a run checkpoint names its own model, options and
    evaluation preprocessing); the metrics of ``evaluate`` plus ``classes`` are returned (see `evaluate_model`
    for ``dtype``)."""
    if batch_size < 1 or workers < 0:
        raise UserError(f"--batch-size must be at least 1 and --workers at least 0, got {batch_size} and {workers}")
    if res is not None:
        check_resolution(res)
    model = load_model(model_name, checkpoint=checkpoint, key="model_ema" if ema else None)
    metrics = evaluate_model(model, data, res=res, batch_size=batch_size, workers=workers, device=device,
                             dtype=dtype)
    return dict(metrics, checkpoint=str(checkpoint), ema=ema)


def evaluate_model(model: nn.Module, data: str | os.PathLike | None = None, *, res: int | None = None,
                   batch_size: int = 64, workers: int = 0, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict:
    """`evaluate` of a loaded model (with its ``pretrained_cfg``) on an image folder (``DIR/val`` when present)
    or the held-out digits, after checking that the data's classes are the model's. With another ``dtype``
    (bf16) the scored model is the fused one cast to it, and its ``agreement`` with the float model is
    measured on the same images."""
    if dtype not in PRECISIONS:
        raise UserError(f"evaluation runs in float32 or bfloat16, not {dtype}")
    if data is None:
        source = Digits("val")
    else:
        root = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else data
        source = ImageFolder(root)
    classes = list(source.classes)
    trained = model.pretrained_cfg.get("label_names")
    if trained is not None and list(trained) != classes:
        missing, extra = sorted(set(trained) - set(classes)), sorted(set(classes) - set(trained))
        what = f"missing [{some(missing)}], extra [{some(extra)}]" if missing or extra else "in another order"
        hint = "; without --data the built-in digits are scored: pass --data DIR" if data is None else ""
        raise UserError(f"the data's class folders differ from the {len(trained)} classes the checkpoint was "
                        f"trained on: {what}{hint}")
    if model.num_classes != len(classes):
        raise UserError(f"the checkpoint's head has {model.num_classes} classes, the data {len(classes)}")
    config = {k: v for k, v in model.pretrained_cfg.items() if k != "label_names"}
    if res is not None and res != config["input_size"][-1]:
        config = dict(data_config(res), mean=config["mean"], std=config["std"])
    loader = DataLoader(EvalImages(source, config), batch_size=batch_size, num_workers=workers)
    device = torch.device(device)
    reference = None
    if dtype != torch.float32:
        reference, model = model, model.fuse_for_inference(dtype)
    metrics = evaluate(model.to(device), loader, len(classes), device=device, reference=reference)
    precision = "int8" if isinstance(model, QuantizedModel) else PRECISIONS[dtype]  # an INT8 file runs as made
    return dict(metrics, classes=classes, model=model.model_name, res=config["input_size"][-1],
                crop_pct=config["crop_pct"], dtype=precision)


def describe_agreement(agreement: dict) -> str:
    """`Agreement`'s result in words, as `convnext evaluate` and `convnext quantize` print it."""
    return (f"top-1 agreement {agreement['top1_agreement']:.2f}% of {agreement['count']} images, max |logit "
            f"difference| {agreement['max_logit_diff']:.4f} (float logits up to {agreement['max_abs_logit']:.2f})")
