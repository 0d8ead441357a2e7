"""Calibrated probabilities and conformal prediction sets from labelled held-out images.

A CLIP softmax at logit scale ~100 is over-confident. One temperature T, fitted
on held-out images by minimising the negative log-likelihood of
``softmax(logits / T)``, makes the probabilities mean what they say more often
(Guo et al. 2017); the expected calibration error (ECE) before and after is
recorded. On the same images, split-conformal thresholds (``conformal``) are
computed for a few coverages on the calibrated probabilities.

Everything here is a pure function of (logits, labels), plus ``calibrate`` /
``calibrate_features`` that run a model over held-out images first, so any
held-out check (the Few-shot tab's, ``train --holdout``, a sweep's validation
split) can call it.

The record is stored in a checkpoint's ``config.json`` as a ``"calibration"``
block (``Calibration.to_config`` / ``from_config``); a missing block means "not
calibrated". The temperature and the thresholds are fitted on the same images:
one scalar parameter, so the coverage guarantee is approximate rather than exact;
the tests measure coverage on fresh images over many random splits.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .conformal import (
    check_coverage,
    classes_in_set,
    conformal_threshold,
    min_calibration_images,
    nonconformity,
    prediction_sets,
    set_metrics,
)
from .errors import InputError

COVERAGES = (0.8, 0.9, 0.95)  # coverages offered; thresholds are stored for each
DEFAULT_COVERAGE = 0.9
ECE_BINS = 15
METHOD = "temperature + split-conformal (score 1 - p_true)"
# The temperature search range: wide enough for scale-100 CLIP logits (T of tens), and bounded
# so that a perfectly separated handful of images cannot drive T to 0 or infinity.
T_MIN, T_MAX = 0.05, 200.0


class CalibrationError(InputError):
    """A calibration cannot be fitted or a stored calibration block is malformed."""


# ------------------------------------------------------------------------------ pure maths

def softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / temperature) over the last axis, float32 on the CPU.

    Computed in NumPy: for a few rows, torch's threaded softmax costs more in
    thread wake-ups than in arithmetic (tens of ms on a busy CPU).
    """
    z = logits.detach().double().cpu().numpy() / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return torch.from_numpy((e / e.sum(axis=-1, keepdims=True)).astype(np.float32))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| * share of images."""
    p = probs.detach().double().cpu().numpy()
    if p.shape[0] == 0:
        raise CalibrationError("no images to measure calibration on")
    y = labels.detach().long().cpu().numpy()
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 joins the first bin.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)  # sum of (accuracy - confidence) per bin
    return float(np.abs(gap).sum() / len(y))


def _nll(z: np.ndarray, y: np.ndarray, inv_t: float) -> float:
    s = z * inv_t
    top = s.max(axis=1)
    return float(np.mean(top + np.log(np.exp(s - top[:, None]).sum(axis=1)) - s[np.arange(len(y)), y]))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iters: int = 60) -> float:
    """The T minimising NLL of softmax(logits / T) on (logits [N, C], labels [N]).

    The NLL is convex in 1/T (log-sum-exp of a linear function of 1/T minus a
    linear term), so a golden-section search over 1/T finds the minimum without
    gradients or a learning rate; ``iters`` steps shrink the bracket by 0.618^60.
    NumPy, not torch: thousands of tiny ops gain nothing from a thread pool.
    """
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise CalibrationError(f"need logits [N, C] and labels [N] with N > 0, got {list(logits.shape)} and {list(labels.shape)}")
    z = logits.detach().double().cpu().numpy()
    y = labels.detach().long().cpu().numpy()
    if not np.isfinite(z).all():
        raise CalibrationError("logits contain NaN or infinite values")
    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(z, y, a), _nll(z, y, b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(z, y, a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(z, y, b)
    return float(1.0 / ((lo + hi) / 2.0))


# ------------------------------------------------------------------------------ the record

@dataclass(frozen=True)
class PredictionSet:
    """A conformal set for one image, or why there is none (``classes`` None, ``message`` says why)."""

    classes: list[str] | None
    coverage: float
    n_calibration: int
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"classes": self.classes, "coverage": self.coverage, "n_calibration": self.n_calibration}
        if self.message:
            out["message"] = self.message
        return out

    def describe(self) -> str:
        """Plain wording for the UI."""
        if self.classes is None:
            return self.message
        return (f"With {self.coverage:.0%} coverage on images like the {self.n_calibration} calibration images: "
                "{" + ", ".join(self.classes) + "}")


@dataclass(frozen=True)
class Calibration:
    """What a checkpoint's ``"calibration"`` block holds."""

    temperature: float
    n_calibration: int
    thresholds: dict[float, float | None]  # coverage -> threshold on 1 - p (None: too few images)
    ece_before: float  # on the calibration images, at T = 1
    ece_after: float  # on the same images, at the fitted T
    source: str = ""  # which images, in words
    method: str = METHOD
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of a newer writer, kept on rewrite

    # -------------------------------------------------------------- use
    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of scaled logits [B, C]."""
        return softmax(logits, self.temperature)

    def threshold(self, coverage: float) -> float | None:
        coverage = check_coverage(coverage)
        for c, t in self.thresholds.items():
            if abs(c - coverage) < 1e-9:
                return t
        offered = ", ".join(f"{c:g}" for c in sorted(self.thresholds))
        raise CalibrationError(f"coverage {coverage:g} is not one this calibration offers ({offered})")

    def too_few_message(self, coverage: float) -> str:
        need = min_calibration_images(coverage)
        return (f"No prediction set: {coverage:.0%} coverage needs at least {need} calibration images, "
                f"this checkpoint was calibrated on {self.n_calibration}.")

    def prediction_set(self, probs_row: torch.Tensor, class_names: Sequence[str], coverage: float = DEFAULT_COVERAGE) -> PredictionSet:
        """The set for one image's calibrated probabilities [C]."""
        t = self.threshold(coverage)
        if t is None:
            return PredictionSet(None, coverage, self.n_calibration, self.too_few_message(coverage))
        member = prediction_sets(probs_row.view(1, -1), t)[0]
        return PredictionSet(classes_in_set(member, probs_row, class_names), coverage, self.n_calibration)

    # -------------------------------------------------------------- storage
    def to_config(self) -> dict[str, Any]:
        return {
            **self.extra,
            "method": self.method,
            "temperature": self.temperature,
            "n_calibration": self.n_calibration,
            "thresholds": {f"{c:g}": t for c, t in sorted(self.thresholds.items())},
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "source": self.source,
        }

    @classmethod
    def from_config(cls, block: Mapping[str, Any]) -> Calibration:
        """Validate and read a ``"calibration"`` block; every number must be finite and in range."""
        if not isinstance(block, Mapping):
            raise CalibrationError("calibration must be a JSON object")
        known = {"method", "temperature", "n_calibration", "thresholds", "ece_before", "ece_after", "source"}
        missing = sorted({"temperature", "n_calibration", "thresholds"} - set(block))
        if missing:
            raise CalibrationError(f"calibration lacks {', '.join(missing)}")
        temperature = _finite(block["temperature"], "calibration.temperature")
        if not T_MIN / 2 <= temperature <= T_MAX * 2:
            raise CalibrationError(f"calibration.temperature {temperature} is outside [{T_MIN / 2}, {T_MAX * 2}]")
        n = block["n_calibration"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise CalibrationError(f"calibration.n_calibration must be a positive integer, not {n!r}")
        raw = block["thresholds"]
        if not isinstance(raw, Mapping) or not raw:
            raise CalibrationError("calibration.thresholds must be a non-empty object {coverage: threshold}")
        thresholds: dict[float, float | None] = {}
        for key, value in raw.items():
            try:
                coverage = check_coverage(float(key))
            except ValueError as exc:
                raise CalibrationError(f"calibration.thresholds: bad coverage {key!r}") from exc
            if value is None:
                thresholds[coverage] = None
                continue
            t = _finite(value, f"calibration.thresholds[{key}]")
            if not 0.0 <= t <= 1.0:
                raise CalibrationError(f"calibration.thresholds[{key}] = {t} is not in [0, 1]")
            thresholds[coverage] = t
        eces = {}
        for key in ("ece_before", "ece_after"):
            v = _finite(block.get(key, 0.0), f"calibration.{key}")
            if not 0.0 <= v <= 1.0:
                raise CalibrationError(f"calibration.{key} = {v} is not in [0, 1]")
            eces[key] = v
        return cls(temperature, n, thresholds, eces["ece_before"], eces["ece_after"], str(block.get("source", "")),
                   str(block.get("method", METHOD)), {k: v for k, v in block.items() if k not in known})


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise CalibrationError(f"{name} must be a finite number, not {value!r}")
    return float(value)


# ------------------------------------------------------------------------------ fitting

def fit_calibration(logits: torch.Tensor, labels: torch.Tensor, coverages: Sequence[float] = COVERAGES,
                    source: str = "") -> Calibration:
    """Temperature, ECE before/after and conformal thresholds from held-out (logits, labels)."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    scores = nonconformity(after, labels)
    return Calibration(
        temperature=t,
        n_calibration=int(labels.numel()),
        thresholds={check_coverage(c): conformal_threshold(scores, c) for c in coverages},
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        source=source,
    )


def calibrate_features(model, features: torch.Tensor, labels: torch.Tensor, source: str = "",
                       coverages: Sequence[float] = COVERAGES) -> Calibration:
    """``fit_calibration`` on a model's logits for cached, normalised image features [N, E]."""
    with torch.no_grad():
        logits = model(image_features=features.to(model.device)).logits
    return fit_calibration(logits, labels, coverages, source)


def calibrate(model, images, source: str = "held-out images", coverages: Sequence[float] = COVERAGES) -> Calibration:
    """Encode labelled held-out ``images`` (a ``LabelledImages``) with ``model`` and fit a calibration."""
    from .features import encode_images

    return calibrate_features(model, encode_images(model, images.images), images.labels, source, coverages)


def evaluation_metrics(logits: torch.Tensor, labels: torch.Tensor, calibration: Calibration | None,
                       coverage: float = DEFAULT_COVERAGE) -> dict[str, Any]:
    """What ``evaluate --json`` adds: ECE of the shown probabilities; set coverage and size when calibrated."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    raw = softmax(logits)
    out: dict[str, Any] = {"ece_uncalibrated": expected_calibration_error(raw, labels)}
    if calibration is None:
        out["ece"] = out["ece_uncalibrated"]
        return out
    probs = calibration.probs(logits)
    out["ece"] = expected_calibration_error(probs, labels)
    out["coverage"] = check_coverage(coverage)
    t = calibration.threshold(coverage)
    if t is None:
        out.update(set_coverage=None, mean_set_size=None, set_message=calibration.too_few_message(coverage))
    else:
        out.update(set_metrics(prediction_sets(probs, t), labels))
    return out
