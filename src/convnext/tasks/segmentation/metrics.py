"""mIoU, mAcc, aAcc and per-class IoU from a confusion matrix, computed as the official (mmseg) evaluation does.

A plain ``K x K`` confusion matrix accumulated with ``bincount`` is exact and cheap, and it gives all four
numbers at once; classes absent from both the ground truth and the predictions are left out of the means
(NaN IoU), as in mmseg. Pixels labelled 255 are ignored.
"""

from __future__ import annotations

import torch

from .data import IGNORE


def score_text(value: float | None, width: int = 0) -> str:
    """A score as printed: ``12.34``, or ``undefined`` where no pixel was labelled."""
    return "undefined" if value is None else f"{value:{width}.2f}"


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE
        index = target[keep].long().cpu() * self.num_classes + prediction[keep].long().cpu()
        self.matrix += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def merge(self, other: torch.Tensor) -> None:
        self.matrix += other.to(self.matrix)

    def scores(self) -> dict:
        """``miou``, ``macc``, ``aacc`` in percent, and ``iou`` / ``acc`` per class; None where undefined (no
        labelled pixel: every mask pixel ignored), never a 0 that reads like a score."""
        m = self.matrix.double()
        hits, truth, predicted = m.diag(), m.sum(1), m.sum(0)
        union = truth + predicted - hits
        iou = hits / union  # NaN where the class is in neither
        acc = hits / truth
        total = m.sum()
        return dict(miou=100 * float(iou.nanmean()) if (union > 0).any() else None,
                    macc=100 * float(acc.nanmean()) if (truth > 0).any() else None,
                    aacc=100 * float(hits.sum() / total) if total > 0 else None,
                    iou=[None if v != v else round(100 * float(v), 4) for v in iou.tolist()],
                    acc=[None if v != v else round(100 * float(v), 4) for v in acc.tolist()],
                    pixels=int(total))
