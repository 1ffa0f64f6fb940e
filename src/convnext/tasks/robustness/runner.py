"""Run the robustness suites for one or more models, resumably, and collect top-1 errors.

Work is split into jobs: one (corruption, severity) folder or on-the-fly set, or one whole suite (clean, A, R,
Sketch). Each finished job is written at once (atomically) under ``output/<label>/``, stamped with what it
depends on (model name, weights, data, preprocessing, seed); a rerun skips every job whose stamp still matches, so an
interrupted ImageNet-C run continues where it stopped. Models with the same preprocessing share one pass
over the images, so on-the-fly corruptions are made once for a model and its baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...data.images import Digits, ImageFolder
from ...errors import UserError
from ...files import make_folder
from ...progress import progress as progress_display
from ..classification.evaluate import evaluate
from .corruptions import COMMON, SEVERITIES, CorruptedImages, check_corruptions
from .suites import (
    CBAR,
    SUITE_NAMES,
    SUITES,
    check_subset_model,
    class_map,
    corruption_tree,
    is_corruption_tree,
    subset_indices,
    subset_synsets,
)

_PREPROCESSING = ("input_size", "crop_pct", "interpolation", "mean", "std")


@dataclass
class Subject:
    """A model under test: its label in reports and folder names, the module, and what identifies its
    weights (so stored results are reused only for the same weights). ``data_config`` overrides the
    module's ``pretrained_cfg`` as the preprocessing: a timm model's comes from timm's own resolver."""

    label: str
    model: nn.Module
    identity: dict = field(default_factory=dict)
    data_config: dict | None = None

    def __post_init__(self):
        # the weights themselves decide whether stored results are this model's: a file name may be reused
        self.identity = dict(self.identity, digest=weights_digest(self.model))

    @property
    def preprocessing(self) -> dict:
        if self.data_config is not None:
            return json.loads(json.dumps(self.data_config))
        cfg = self.model.pretrained_cfg
        return json.loads(json.dumps({key: cfg[key] for key in _PREPROCESSING if key in cfg}))

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def label_names(self) -> list[str] | None:
        return (getattr(self.model, "pretrained_cfg", None) or {}).get("label_names")


@dataclass
class Job:
    """One unit of resumable work: a set of images, how to make the dataset, where its result goes."""

    suite: str
    corruption: str | None
    severity: int | None
    source: object  # ImageFolder or Digits: load(i), describe(i), classes
    where: str  # the data's path or name, for messages and the result stamp
    make: Callable[[dict], torch.utils.data.Dataset]
    seed: int | None = None  # on-the-fly corruptions only

    @property
    def result_name(self) -> str:
        return f"{self.suite}/{self.corruption or 'clean'}.json" if self.suite in ("c", "cbar") else \
            f"{self.suite}.json"


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of every tensor of the model's state, names included (a second or two for the largest models)."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def identity_of(checkpoint: str | os.PathLike | None, name: str, pretrained: bool | str = False) -> dict:
    """Where a model's weights came from, for the report: the file, or the released tag."""
    if checkpoint is None:
        return {"model": name, "pretrained": pretrained}
    return {"model": name, "checkpoint": str(Path(checkpoint).resolve())}


def _clean_source(data: str | os.PathLike | None):
    """A clean image set: the held-out digits without ``data``, else the folder (``DIR/val`` when present)."""
    if data is None:
        return Digits("val"), "digits (held out)"
    root = Path(data)
    root = root / "val" if (root / "val").is_dir() else root
    return ImageFolder(root), str(root.resolve())


def _on_the_fly_jobs(data, corruptions: list[str], severities: list[int], seed: int) -> list[Job]:
    source, where = _clean_source(data)
    jobs = [Job("c", None, None, source, where, lambda cfg: CorruptedImages(source, cfg))]
    for name in corruptions:
        for severity in severities:
            def make(cfg, name=name, severity=severity):
                return CorruptedImages(source, cfg, name, severity, seed)
            jobs.append(Job("c", name, severity, source, where, make, seed))
    return jobs


def suite_jobs(suite: str, data: str | os.PathLike | None, *, corruptions: list[str] | None = None,
               severities: list[int] | tuple[int, ...] = SEVERITIES, seed: int = 0) -> list[Job]:
    """Every job of a suite, with the data checked and read (folder lists) before any scoring starts."""
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    severities = sorted(set(severities))
    if not severities or not set(severities) <= set(SEVERITIES):
        raise UserError(f"severities must be among 1 to 5, got {severities}")
    if suite in ("c", "cbar") and (data is None or not is_corruption_tree(Path(data))):
        if suite == "cbar":
            raise UserError("ImageNet-C-bar needs its pre-generated tree (corruption/severity/class/image): "
                            "its corruptions are not made on the fly here")
        return _on_the_fly_jobs(data, check_corruptions(corruptions or list(COMMON)), severities, seed)
    if suite in ("c", "cbar"):
        names = list(CBAR) if suite == "cbar" else check_corruptions(corruptions or list(COMMON))
        folders = corruption_tree(data, suite, names, severities)
        jobs = []
        for (name, severity), folder in folders.items():
            source = ImageFolder(folder)
            jobs.append(Job(suite, name, severity, source, str(folder.resolve()),
                            lambda cfg, source=source: CorruptedImages(source, cfg)))
        return jobs
    if data is None and suite != "clean":
        raise UserError(f"{SUITE_NAMES[suite]} needs its image folder: --data {suite}=DIR")
    source, where = _clean_source(data)
    return [Job(suite, None, None, source, where, lambda cfg: CorruptedImages(source, cfg))]


class _Restrict(nn.Module):
    """A 1000-class model's logits cut down to a subset of classes (ImageNet-A/-R's 200)."""

    def __init__(self, model: nn.Module, indices: list[int]):
        super().__init__()
        self.model = model
        device = next(model.parameters()).device
        self.register_buffer("indices", torch.tensor(indices, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.indices)


def scorer(subject: Subject, job: Job) -> tuple[nn.Module, torch.Tensor, int]:
    """What scores a subject on a job: the module, the folder-label -> output-index map, the output count."""
    classes = list(job.source.classes)
    if job.suite in ("a", "r"):
        check_subset_model(job.suite, subject.num_classes)
        mapping = class_map(classes, 200, subset_synsets(job.suite), job.where)
        module = _Restrict(subject.model, subset_indices(job.suite))
        return module, torch.tensor(mapping), 200
    if job.suite == "sketch":
        check_subset_model(job.suite, subject.num_classes)
    mapping = class_map(classes, subject.num_classes, subject.label_names, job.where)
    return subject.model, torch.tensor(mapping), subject.num_classes


def _stamp(subject: Subject, job: Job) -> dict:
    """Everything a stored result depends on: the model's name (a timm name, ``timm:...``, or ours) and
    weights digest, the data, the preprocessing and the corruption seed."""
    stamp = dict(model=subject.identity.get("model"), weights=subject.identity["digest"], data=job.where,
                 images=len(job.source), preprocessing=subject.preprocessing, seed=job.seed)
    return json.loads(json.dumps(stamp))


def _read_result(path: Path, stamp: dict, key: str) -> dict | None:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("stamp") != stamp:
        return None
    return stored.get("results", {}).get(key)


def _write_result(path: Path, stamp: dict, key: str, value: dict) -> None:
    """Add one result to a job file; temp file + rename, so an interruption never leaves half a file."""
    make_folder(path.parent)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    results = stored.get("results", {}) if stored.get("stamp") == stamp else {}
    results[key] = value
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(dict(stamp=stamp, results=results), indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _result_key(job: Job) -> str:
    return "clean" if job.severity is None else str(job.severity)


@torch.no_grad()
def _score_group(subjects: list[Subject], job: Job, dataset, *, batch_size: int, workers: int,
                 device: torch.device, progress: tqdm) -> list[dict]:
    """One pass over a job's images, every subject (same preprocessing) scoring each batch."""
    scorers = [scorer(subject, job) for subject in subjects]
    totals = [[0, 0, 0] for _ in subjects]  # top-1 hits, images, unreadable
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    for images, labels, *_ in loader:
        for (module, mapping, outputs), total in zip(scorers, totals, strict=True):
            mapped = torch.where(labels >= 0, mapping[labels.clamp(min=0)], labels)
            metrics = evaluate(module, [(images, mapped)], outputs, device=device)
            total[0] += round(metrics["top1"] * metrics["count"] / 100)
            total[1] += metrics["count"]
            total[2] += metrics["skipped"]
        progress.update(len(labels))
    return [dict(top1=100 * hits / count if count else 0.0, error=100 - 100 * hits / count if count else 100.0,
                 count=count, skipped=skipped) for hits, count, skipped in totals]


def run_jobs(subjects: list[Subject], jobs: list[Job], output: str | os.PathLike, *, batch_size: int = 64,
             workers: int = 0, device: str | torch.device = "cpu",
             restart: bool = False) -> dict[str, dict]:
    """Score every subject on every job, skipping those already stored. Returns label -> {job key: score},
    job keys being "suite/corruption/severity", "suite/clean/clean" for a whole suite or clean images."""
    output, device = Path(output), torch.device(device)
    for subject in subjects:
        subject.model.eval().to(device)
        for job in jobs:
            scorer(subject, job)  # a class or head mismatch is reported before any work
    results: dict[str, dict] = {subject.label: {} for subject in subjects}
    pending: list[tuple[Job, list[Subject]]] = []
    for job in jobs:
        todo = []
        for subject in subjects:
            path, stamp = output / subject.label / job.result_name, _stamp(subject, job)
            stored = None if restart else _read_result(path, stamp, _result_key(job))
            if stored is None:
                todo.append(subject)
            else:
                results[subject.label][_job_key(job)] = stored
        if todo:
            pending.append((job, todo))
    total = sum(len(job.source) * len({json.dumps(s.preprocessing) for s in todo}) for job, todo in pending)
    with progress_display(total=total, unit="img", desc="robustness", show=bool(total)) as progress:
        for job, todo in pending:
            groups: dict[str, list[Subject]] = {}
            for subject in todo:
                groups.setdefault(json.dumps(subject.preprocessing), []).append(subject)
            for group in groups.values():
                progress.set_postfix_str(_job_key(job))
                dataset = job.make(group[0].preprocessing)
                scores = _score_group(group, job, dataset, batch_size=batch_size, workers=workers,
                                      device=device, progress=progress)
                for subject, score in zip(group, scores, strict=True):
                    _write_result(output / subject.label / job.result_name, _stamp(subject, job),
                                  _result_key(job), score)
                    results[subject.label][_job_key(job)] = score
    return results


def _job_key(job: Job) -> str:
    return "/".join([job.suite, job.corruption or "clean", _result_key(job)])
