"""How far a result can be trusted, in words: calibrated probabilities, conformal sets, faithfulness, ECE.

View functions only (values in, Markdown strings or JSON out); the numbers come from
``dpt_core.calibration`` and ``dpt_core.faithfulness``.
"""
from __future__ import annotations

from typing import Any

from dpt_core.calibration import COVERAGES, Calibration
from dpt_core.errors import InputError
from dpt_core.explain import Explanation
from dpt_core.predictor import Prediction

from .formatting import escape, percent


def checked_coverage(value: Any) -> float:
    """A coverage from any client: one of the offered fractions (0.8, 0.9, 0.95), else a clear error."""
    try:
        coverage = float(value)
    except (TypeError, ValueError):
        coverage = float("nan")
    for c in COVERAGES:
        if abs(coverage - c) < 1e-9:
            return c
    offered = ", ".join(f"{c:g}" for c in COVERAGES)
    raise InputError(f"coverage must be one of {offered}, not {str(value)[:40]!r}")


def calibration_markdown(prediction: Prediction) -> str:
    """Calibrated probabilities and the prediction set under the label, or why there are none."""
    if prediction.calibrated_probs is None:
        note = prediction.calibration_note or "not calibrated (no held-out images for this prompt)"
        reason = note.removeprefix("not calibrated")  # the note starts with the words in bold
        return f"**Not calibrated**{escape(reason)}. " \
               "The probabilities above come straight from the model's softmax and tend to be over-confident."
    probs = sorted(prediction.calibrated_probs.items(), key=lambda kv: -kv[1])
    lines = ["**Calibrated probabilities**: " + ", ".join(f"{escape(c)} {percent(p)}" for c, p in probs) + "."]
    s = prediction.prediction_set
    if s is not None:
        text = s.describe()
        lines.append(escape(text) if s.classes is None else f"**Prediction set** {escape(text)}.")
    return "\n\n".join(lines)


def faithfulness_line(expl: Explanation) -> str:
    """The one line under the overlay ("" when the deletion test was not asked for)."""
    return "" if expl.faithfulness is None else f"Faithfulness: {escape(expl.faithfulness.describe())}."


def faithfulness_info(expl: Explanation) -> dict[str, Any]:
    """What /explain's info adds: {"faithfulness": {...}} when the test ran, else nothing."""
    return {} if expl.faithfulness is None else {"faithfulness": expl.faithfulness.to_json()}


def ece_line(calibration: Calibration | None) -> str:
    """The few-shot result's line on calibration (held-out images)."""
    if calibration is None:
        return ""
    return (f"**Calibration** on the {calibration.n_calibration} held-out images: expected calibration error "
            f"{percent(calibration.ece_before)} before, {percent(calibration.ece_after)} after the temperature "
            f"(T = {calibration.temperature:.2g}), stored with the checkpoint; Predict shows calibrated "
            "probabilities and prediction sets for it (few images: a rough calibration).")
