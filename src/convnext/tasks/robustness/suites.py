"""Where each robustness suite's images are, and how their classes meet a model's outputs.

Suites: ImageNet-C (a pre-generated ``corruption/severity/class/image`` tree, or any clean folder corrupted on
the fly), ImageNet-C-bar (a pre-generated tree), ImageNet-A and -R (200-class subsets of ImageNet-1K: the
model's 1000 logits are cut down to those 200), ImageNet-Sketch (all 1000 classes) and a clean folder.
Every layout problem is found here, before any image is scored.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from .corruptions import CATEGORIES, COMMON, EXTRA

_DATA = Path(__file__).resolve().parents[2] / "data" / "assets"
SUITES = ("clean", "c", "cbar", "a", "r", "sketch")
SUITE_NAMES = {"clean": "clean", "c": "ImageNet-C", "cbar": "ImageNet-C-bar", "a": "ImageNet-A",
               "r": "ImageNet-R", "sketch": "ImageNet-Sketch"}

# ImageNet-C-bar (Mintun, Kirillov & Xie, "On Interaction Between Augmentations and Corruptions in Natural
# Corruption Robustness", NeurIPS 2021): its 10 corruptions and the parameter of each of its 5 severities.
# The published generator names each severity folder by that parameter, formatted with two decimals.
CBAR = {
    "blue_noise_sample": (0.8, 1.6, 2.4, 4.0, 5.6),
    "brownish_noise": (1.0, 2.0, 3.0, 4.0, 5.0),
    "caustic_refraction": (2.35, 3.2, 4.9, 6.6, 9.15),
    "checkerboard_cutout": (2.0, 3.0, 4.0, 5.0, 6.0),
    "cocentric_sine_waves": (3.0, 5.0, 8.0, 9.0, 10.0),
    "inverse_sparkles": (1.0, 2.0, 4.0, 9.0, 10.0),
    "perlin_noise": (4.6, 5.2, 5.8, 7.6, 8.8),
    "plasma_noise": (4.75, 7.0, 8.5, 9.25, 10.0),
    "single_frequency_greyscale": (1.0, 1.5, 2.0, 4.5, 5.0),
    "sparkles": (1.0, 2.0, 3.0, 5.0, 6.0),
}


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1K WordNet IDs in label order (see data/IMAGENET_CLASSES_SOURCE.md)."""
    lines = (_DATA / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines if line.strip()]


def subset_synsets(suite: str) -> list[str]:
    """The 200 WordNet IDs of ImageNet-A (``a``) or -R (``r``), sorted (see data/IMAGENET_A_R_SOURCE.md)."""
    text = (_DATA / f"imagenet_{suite}_synsets.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def subset_indices(suite: str) -> list[int]:
    """Positions of the ImageNet-A or -R classes among the 1000 outputs of an ImageNet-1K head."""
    position = {synset: i for i, synset in enumerate(imagenet_synsets())}
    return [position[synset] for synset in subset_synsets(suite)]


def model_classes(num_classes: int, label_names: list[str] | None) -> list[str] | None:
    """The names a model's outputs answer to: a training run's class names, else the ImageNet-1K synsets
    for a 1000-class head; None when the model does not say (outputs are then matched by position)."""
    if label_names is not None and len(label_names) == num_classes:
        return [str(name) for name in label_names]
    return imagenet_synsets() if num_classes == 1000 else None


def class_map(folders: list[str], num_classes: int, label_names: list[str] | None, where: str) -> list[int]:
    """The model output index of each class folder, or one error naming folders the model does not know."""
    known = model_classes(num_classes, label_names)
    if known is None:
        if len(folders) != num_classes:
            raise UserError(f"{where} has {len(folders)} class folders but the model has {num_classes} classes")
        return list(range(num_classes))
    position = {name: i for i, name in enumerate(known)}
    unknown = [name for name in folders if name not in position]
    if unknown:
        sample = ", ".join(known[:3])
        raise UserError(f"class folders of {where} do not match the model's classes: {', '.join(unknown[:5])}"
                        f"{' ...' if len(unknown) > 5 else ''} not among its {num_classes} ({sample}, ...)")
    return [position[name] for name in folders]


def check_subset_model(suite: str, num_classes: int) -> None:
    """ImageNet-A/-R/-Sketch score ImageNet-1K outputs: other heads get one clear error."""
    if num_classes != 1000:
        raise UserError(f"{SUITE_NAMES[suite]} needs a model with the 1000 ImageNet-1K classes; this one has "
                        f"{num_classes}")


def _corruption_dir(root: Path, name: str) -> Path | None:
    """``root/name``, or ``root/<category>/name`` as the ImageNet-C archives unpack."""
    for candidate in [root / name] + [root / category / name for category in CATEGORIES]:
        if candidate.is_dir():
            return candidate
    return None


def is_corruption_tree(root: Path) -> bool:
    """Whether a folder holds corruption folders (a pre-generated tree) rather than class folders."""
    names = set(COMMON + EXTRA) | set(CBAR)
    return any(_corruption_dir(Path(root), name) is not None for name in names)


def severity_folders(suite: str, name: str) -> dict[int, tuple[str, ...]]:
    """Folder names accepted for each severity: ``1``..``5``, and for C-bar its parameter values too."""
    if suite == "cbar":
        return {i + 1: (f"{value:.2f}", str(i + 1)) for i, value in enumerate(CBAR[name])}
    return {s: (str(s),) for s in range(1, 6)}


def corruption_tree(root: str | Path, suite: str, corruptions: list[str],
                    severities: list[int]) -> dict[tuple[str, int], Path]:
    """The folder of every requested (corruption, severity) of a pre-generated tree; anything missing is one
    error listing all that is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{SUITE_NAMES[suite]} folder not found: {root}")
    found, missing = {}, []
    for name in corruptions:
        folder = _corruption_dir(root, name)
        if folder is None:
            missing.append(name)
            continue
        accepted = severity_folders(suite, name)
        for severity in severities:
            hits = [folder / option for option in accepted[severity] if (folder / option).is_dir()]
            if hits:
                found[name, severity] = hits[0]
            else:
                missing.append(f"{name}/{accepted[severity][0]}")
    if missing:
        raise UserError(f"{root} is missing {len(missing)} corruption folder{'s' * (len(missing) > 1)}: "
                        f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} (expected "
                        "corruption/severity/class/image; --corruptions picks a subset)")
    return found
