"""Corruption error (CE), mean corruption error (mCE) and their relatives, from top-1 errors in percent.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
ICLR 2019: for a corruption c, CE_c = sum over severities of the model's top-1 error / the same sum for
AlexNet; mCE is the mean of CE_c over the 15 benchmark corruptions, times 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...errors import UserError
from .corruptions import COMMON

# AlexNet's top-1 error on ImageNet-C, averaged over the five severities (a fraction), per corruption: the
# normalisers published with ImageNet-C (Hendrycks & Dietterich 2019; the values of the ImageNet-C
# evaluation script in the authors' `hendrycks/robustness` repository). The last four are the held-out
# corruptions, which mCE leaves out.
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
    "speckle_noise": 0.845388, "gaussian_blur": 0.787108, "spatter": 0.717512, "saturate": 0.658248,
}

Errors = Mapping[str, Sequence[float]]  # corruption -> top-1 error (%) at each severity, 1 to 5


def _check(errors: Errors) -> None:
    for name, values in errors.items():
        if len(values) == 0:
            raise UserError(f"no severities measured for {name}")


def corruption_errors(errors: Errors, reference: Errors | None = None) -> dict[str, float]:
    """CE_c per corruption, as a fraction: the model's summed error over the reference's. Without a
    ``reference``, AlexNet's published errors (ImageNet only; every severity 1-5 must be measured)."""
    _check(errors)
    result = {}
    for name, values in errors.items():
        if reference is None:
            if name not in ALEXNET_ERRORS:
                raise UserError(f"no published AlexNet error for {name}")
            if len(values) != 5:
                raise UserError(f"CE normalised by AlexNet needs all 5 severities of {name}, got {len(values)}")
            denominator = 5 * 100 * ALEXNET_ERRORS[name]
        else:
            if name not in reference or len(reference[name]) != len(values):
                raise UserError(f"the baseline lacks {name} at the severities measured for the model")
            denominator = sum(reference[name])
        result[name] = sum(values) / denominator if denominator > 0 else float("inf")
    return result


def mean_ce(ce: Mapping[str, float], corruptions: Sequence[str] = COMMON) -> float | None:
    """mCE in percent over ``corruptions`` (the 15 of the benchmark); None unless every one was measured."""
    if not all(name in ce for name in corruptions):
        return None
    return 100 * sum(ce[name] for name in corruptions) / len(corruptions)


def mean_error(errors: Errors) -> float:
    """The unnormalised mean top-1 error (%) over every corruption and severity measured: the figure
    ImageNet-C-bar reports, and a readable one for any data set."""
    _check(errors)
    values = [value for series in errors.values() for value in series]
    return sum(values) / len(values)


def error_by_severity(errors: Errors) -> list[float]:
    """Mean error (%) over corruptions at each severity: the curve that should rise."""
    _check(errors)
    depth = min(len(series) for series in errors.values())
    return [sum(series[i] for series in errors.values()) / len(errors) for i in range(depth)]
