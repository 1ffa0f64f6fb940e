"""The COCO protocol: detections in COCO's results format, scored by pycocotools' COCOeval (box and mask AP,
AP50, AP75, AP for small, medium and large objects), in percent as the paper reports them."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ...progress import progress as progress_display
from .data import CocoData, DetectionItems, collate

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_results(output: dict, image_id: int, cat_ids: list[int]) -> list[dict]:
    """One image's detections as COCO result records: ``bbox`` as [x, y, w, h], ``category_id`` the json's,
    and, from a mask model, ``segmentation`` as RLE of the mask thresholded at 0.5."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].float().cpu()
    records = []
    rles = None
    if "masks" in output and len(boxes):
        binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), output["scores"].tolist(),
                                                output["labels"].tolist(), strict=True)):
        record = dict(image_id=int(image_id), category_id=int(cat_ids[label - 1]),
                      bbox=[round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
                      score=round(float(score), 5))
        if rles is not None:
            rle = rles[i]
            record["segmentation"] = dict(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii"))
        records.append(record)
    return records


@torch.no_grad()
def detect_all(model: nn.Module, data: CocoData, *, device: torch.device, batch_size: int = 2, workers: int = 0,
               progress: bool = False) -> tuple[list[dict], list[int], list[int]]:
    """Run ``model`` over every image of ``data``: the COCO result records, the ids of the images scored, and
    the indices of images that could not be read (left out of the score)."""
    loader = DataLoader(DetectionItems(data, train=False), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate)
    was_training = model.training
    model.eval()
    results, scored, unreadable = [], [], []
    try:
        for images, targets, bad in progress_display(loader, desc="evaluate", unit="batch", show=bool(progress)):
            keep = [i for i, b in enumerate(bad) if b < 0]
            unreadable += [b for b in bad if b >= 0]
            if not keep:
                continue
            outputs = model([images[i].to(device) for i in keep])
            for i, output in zip(keep, outputs, strict=True):
                results += to_results(output, targets[i]["image_id"], data.cat_ids)
                scored.append(targets[i]["image_id"])
    finally:
        model.train(was_training)
    return results, scored, unreadable


def coco_scores(coco, results: list[dict], image_ids: list[int], iou_type: str) -> dict[str, float | None]:
    """COCOeval's six headline numbers (percent) for ``iou_type`` ("bbox" or "segm"); None where COCO has no
    value (no ground truth of that size), 0 for every number when there are no detections at all."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco, detections, iou_type)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (round(float(v) * 100, 2) if v >= 0 else None)
            for name, v in zip(METRICS, evaluator.stats[:6], strict=True)}


def evaluate_detector(model: nn.Module, data: CocoData, *, device: torch.device | str = "cpu", batch_size: int = 2,
                      workers: int = 0, progress: bool = False) -> dict:
    """Box (and, for Mask R-CNN, mask) AP of ``model`` on ``data`` by the COCO protocol; also the number of
    images scored and the files that could not be read."""
    device = torch.device(device)
    results, scored, unreadable = detect_all(model, data, device=device, batch_size=batch_size, workers=workers,
                                             progress=progress)
    out = dict(bbox=coco_scores(data.coco, results, scored, "bbox"), images=len(scored),
               detections=len(results), unreadable=[data.describe(i) for i in unreadable])
    if model.roi_heads.has_mask():  # our detectors are torchvision's: Mask R-CNN's RoI heads have a mask head
        out["segm"] = coco_scores(data.coco, results, scored, "segm")
    return out


def format_scores(metrics: dict) -> str:
    """Box and mask scores as a small table."""
    lines = [f"{'':6}" + "".join(f"{name:>8}" for name in METRICS)]
    for key, label in (("bbox", "box"), ("segm", "mask")):
        if key in metrics:
            lines.append(f"{label:6}" + "".join(f"{v:8.1f}" if v is not None else f"{'-':>8}"
                                                  for v in metrics[key].values()))
    return "\n".join(lines)
