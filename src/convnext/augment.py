"""The on-device half of the training pipeline, batched with kornia.

DataLoader workers decode, crop and flip each image (``convnext.data``); the batch then comes here:
RandAugment on [0, 1] pixels, normalisation, random erasing, and Mixup or CutMix, which turn the labels
into soft targets with label smoothing folded in (the loss is cross-entropy against those targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation.auto import RandAugment
from torch import nn

# timm's RandAugment magnitudes (the paper's "m9") run 0..10; kornia's run 0..30.
_KORNIA_PER_TIMM_MAGNITUDE = 3.0


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets, smoothed: ``1 - s + s / K`` on the label and ``s / K`` elsewhere (s = smoothing)."""
    off = smoothing / num_classes
    return F.one_hot(labels.long(), num_classes).float() * (1.0 - smoothing) + off


class BatchAugment(nn.Module):
    """RandAugment, normalise, random erasing and Mixup/CutMix on a uint8 NCHW batch.

    ``randaug_m`` is on timm's 0..10 scale (the paper's ``rand-m9-mstd0.5``); the magnitude is drawn once per
    batch from N(m, mstd). kornia draws RandAugment's two operations once per batch too, and Mixup/CutMix
    pair and mix per sample (Mixup lambda ~ Beta(mixup, mixup), CutMix box from Beta(cutmix, cutmix)).
    Random erasing fills with 0 after normalisation, i.e. the dataset mean colour.
    """

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        randaug_n: int = 2,
        randaug_m: float = 9.0,
        randaug_mstd: float = 0.5,
        reprob: float = 0.25,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        smoothing: float = 0.1,
    ):
        super().__init__()
        self.num_classes, self.smoothing = num_classes, smoothing
        self.randaug_m, self.randaug_mstd = randaug_m, randaug_mstd
        self.randaug = RandAugment(n=randaug_n, m=15) if randaug_n > 0 and randaug_m > 0 else None
        self.normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))
        self.erase = K.RandomErasing(p=reprob, scale=(0.02, 1 / 3), ratio=(0.3, 3.3)) if reprob > 0 else None
        self.mixup_alpha, self.mixup_prob, self.switch_prob = mixup, mixup_prob, mixup_switch_prob
        self.mixup = K.RandomMixUpV2(data_keys=["input", "class"]) if mixup > 0 else None
        self.cutmix = (K.RandomCutMixV2(beta=cutmix, data_keys=["input", "class"], use_correct_lambda=True)
                       if cutmix > 0 else None)

    @property
    def mixes(self) -> bool:
        return (self.mixup is not None or self.cutmix is not None) and self.mixup_prob > 0

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, H, W) images and int labels -> normalised float images and (N, K)
        target probabilities."""
        x = images.float().div_(255)
        if self.randaug is not None:
            m = self.randaug_m + self.randaug_mstd * torch.randn(()).item()
            self.randaug.m = min(max(m, 0.1), 9.9) * _KORNIA_PER_TIMM_MAGNITUDE
            x = self.randaug(x).clamp_(0, 1)
        x = self.normalize(x)
        if self.erase is not None:
            x = self.erase(x)
        if self.mixes and torch.rand(()).item() < self.mixup_prob:
            switch = self.mixup is None or torch.rand(()).item() < self.switch_prob
            use_cutmix = self.cutmix is not None and switch
            return self._cutmix(x, labels) if use_cutmix else self._mixup(x, labels)
        return x, soft_targets(labels, self.num_classes, self.smoothing)

    def _mix_targets(self, labels: torch.Tensor, partner: torch.Tensor, partner_weight: torch.Tensor
                     ) -> torch.Tensor:
        own = soft_targets(labels, self.num_classes, self.smoothing)
        other = soft_targets(partner, self.num_classes, self.smoothing)
        w = partner_weight.view(-1, 1).float()
        return own * (1 - w) + other * w

    def _mixup(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.mixup.forward_parameters(x.shape)
        alpha = torch.tensor(self.mixup_alpha)
        params["mixup_lambdas"] = torch.distributions.Beta(alpha, alpha).sample((x.shape[0],)).to(x.dtype)
        x, mix = self.mixup(x, labels, params=params)
        # kornia: image = own * (1 - lambda) + partner * lambda
        return x, self._mix_targets(labels, mix[:, 1], mix[:, 2])

    def _cutmix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mix = self.cutmix(x, labels)
        mix = mix[0]
        # kornia (use_correct_lambda): lambda = 1 - pasted area, i.e. the weight of the sample's own label
        return x, self._mix_targets(labels, mix[:, 1], 1 - mix[:, 2])
