"""Robustness evaluation, the paper's Table 8 for any model and data set: ImageNet-C (pre-generated or made on
the fly) with mCE, ImageNet-C-bar, ImageNet-A/-R (200-class subsets), ImageNet-Sketch, and a digits demo."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ...errors import UserError
from .corruptions import COMMON, EXTRA, SEVERITIES, CorruptedImages, corrupt_image
from .metrics import ALEXNET_ERRORS, corruption_errors, mean_ce, mean_error
from .report import format_table, plot_severity, summarise, write_json
from .runner import Subject, identity_of, run_jobs, suite_jobs
from .subjects import TIMM, load_subject, load_timm
from .suites import SUITES, imagenet_synsets

__all__ = ["ALEXNET_ERRORS", "COMMON", "EXTRA", "SEVERITIES", "SUITES", "TIMM", "CorruptedImages", "Subject",
           "corrupt_image", "corruption_errors", "evaluate_robustness", "format_table", "identity_of", "load_subject",
           "load_timm", "mean_ce", "mean_error", "plot_severity", "summarise", "write_json"]


def evaluate_robustness(model: nn.Module | Subject, suites: dict[str, str | os.PathLike | None], *,
                        baseline: nn.Module | Subject | None = None, contenders: Sequence[Subject] = (),
                        output: str | os.PathLike = "runs/robustness", corruptions: list[str] | None = None,
                        severities: tuple[int, ...] = SEVERITIES, seed: int = 0, batch_size: int = 64,
                        workers: int = 0, device: str | torch.device = "cpu", restart: bool = False) -> dict:
    """Score ``model``, each of ``contenders`` (other models on the same images, a row each: timm ones too,
    see `load_subject`) and ``baseline`` on each suite -> data folder (None: the held-out digits, for ``c``
    and ``clean``). Results are kept under ``output/<label>`` and reused when rerun; returns the summary (see
    ``summarise``) with the settings. A bare module needs ``pretrained_cfg`` (``convnext.tasks.loading.
    load_model`` sets it)."""
    subjects = [m if isinstance(m, Subject) else Subject(label, m)
                for label, m in (("model", model), ("baseline", baseline)) if m is not None]
    subjects[1:1] = contenders  # rows: the model, the contenders, the baseline last
    labels = [subject.label for subject in subjects]
    clashes = sorted({label for label in labels if labels.count(label) > 1})
    if clashes:
        raise UserError(f"two models would share the row {clashes[0]}: give each model its own label")
    jobs = []
    for suite, data in suites.items():
        jobs += suite_jobs(suite, data, corruptions=corruptions, severities=severities, seed=seed)
    results = run_jobs(subjects, jobs, output, batch_size=batch_size, workers=workers, device=device,
                       restart=restart)
    synsets = imagenet_synsets()
    imagenet = {job.suite for job in jobs if list(job.source.classes) == synsets}
    summary = summarise(results, imagenet_suites=imagenet,
                        baseline=None if baseline is None else subjects[-1].label)
    settings = dict(suites={s: None if d is None else str(d) for s, d in suites.items()}, seed=seed,
                    corruptions=corruptions or list(COMMON), severities=list(severities), output=str(output))
    return dict(models={s.label: dict(s.identity, preprocessing=s.preprocessing) for s in subjects},
                settings=settings, summary=summary)
