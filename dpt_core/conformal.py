"""Split-conformal prediction sets over class probabilities (pure functions, no model).

Score of an image with true class y: ``1 - p_y`` (the "least ambiguous" score).
On n calibration images the threshold is the k-th smallest score with
k = ceil((n + 1) * coverage); a new image's set holds every class c with
``1 - p_c <= threshold``. Under exchangeability of calibration and new images
the set contains the true class with probability >= coverage. That needs
k <= n, i.e. n >= coverage / (1 - coverage) = 1/alpha - 1; below that no finite
threshold exists and no set is given.

The top class is always put in the set, so a set is never empty; that can only
raise coverage.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .errors import InputError


def min_calibration_images(coverage: float) -> int:
    """Smallest n with a finite threshold at ``coverage``: n >= 1/alpha - 1."""
    check_coverage(coverage)
    alpha = 1.0 - coverage
    return max(1, math.ceil(1.0 / alpha - 1.0 - 1e-9))  # 1e-9: 1/0.1 - 1 is 9.000000000000002 in floats


def check_coverage(coverage: float) -> float:
    if not (isinstance(coverage, (int, float)) and 0.0 < float(coverage) < 1.0):
        raise InputError(f"coverage must be a fraction strictly between 0 and 1, not {coverage!r}")
    return float(coverage)


def nonconformity(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - p(true class) per image: probs [N, C], labels [N] -> [N]."""
    return 1.0 - probs.gather(1, labels.view(-1, 1).long()).squeeze(1)


def conformal_threshold(scores: torch.Tensor, coverage: float) -> float | None:
    """The split-conformal threshold of calibration ``scores`` [N], or None when N is too small."""
    check_coverage(coverage)
    n = int(scores.numel())
    if n < min_calibration_images(coverage):
        return None
    k = math.ceil((n + 1) * coverage - 1e-9)  # 1-based rank; <= n by the check above
    return float(torch.sort(scores.flatten().double()).values[k - 1])


def prediction_sets(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Membership mask [N, C]: class c is in the set when 1 - p_c <= threshold; the top class always."""
    member = (1.0 - probs) <= threshold + 1e-12  # tolerance: the calibration's own scores are ties
    member[torch.arange(probs.shape[0]), probs.argmax(dim=1)] = True
    return member


def set_metrics(member: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Empirical coverage (fraction of sets holding the true class) and mean set size."""
    if member.shape[0] == 0:
        raise ValueError("no images")
    hit = member.gather(1, labels.view(-1, 1).long()).squeeze(1)
    return {"set_coverage": float(hit.float().mean()), "mean_set_size": float(member.sum(dim=1).float().mean())}


def classes_in_set(member_row: torch.Tensor, probs_row: torch.Tensor, class_names: Sequence[str]) -> list[str]:
    """The set's class names, most probable first."""
    order = torch.argsort(probs_row, descending=True).tolist()
    return [class_names[i] for i in order if bool(member_row[i])]
