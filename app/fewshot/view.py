"""The Few-shot tab's view: results and progress formatted for its components."""
from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd

from dpt_core.fewshot import FewShotResult, Status

from .. import trust_view
from ..formatting import escape, percent


def loss_frame(epochs: Sequence[dict]) -> pd.DataFrame:
    """Per-epoch mean losses in long form for gr.LinePlot (one line per loss part)."""
    rows = [(int(e["epoch"]), float(e[k]), k) for e in epochs for k in ("total", "ce", "l1", "kl") if k in e]
    # Typed columns even when empty: the plot must see numbers from the first update on.
    return pd.DataFrame({
        "epoch": pd.Series([r[0] for r in rows], dtype="int64"),
        "loss": pd.Series([r[1] for r in rows], dtype="float64"),
        "part": pd.Series([r[2] for r in rows], dtype="object"),
    })


def plot_value(epochs: Sequence[dict]) -> pd.DataFrame | None:
    """What the loss plot gets: None until an epoch is done (an empty frame stops later updates drawing)."""
    return loss_frame(epochs) if epochs else None


def status_markdown(status: Status, stopping: bool = False) -> str:
    text = status.text
    if status.phase == "training":
        filled = round(status.fraction * 20)
        text = f"`{'█' * filled}{'░' * (20 - filled)}` {status.fraction:.0%}  \n{text}"
    if stopping:
        text += "  \n**Stopping** at the next step; the best completed epoch will be kept..."
    return text


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def summary_markdown(r: FewShotResult) -> str:
    t = r.timings
    lines = [(f"**Trained** on {r.n_train} images of {len(r.class_names)} classes: {r.epochs_completed} of "
              f"{r.settings.epochs} epochs in {_secs(t.get('total_s', 0))} (encoding {_secs(t.get('encode_s', 0))}, "
              f"augmented views {_secs(t.get('views_s', 0))}, prompt training "
              f"{_secs(t.get('fit_s', 0))}).")]
    if r.stopped:
        lines.append("**Stopped early.** The checkpoint holds the best completed epoch (lowest mean loss)"
                     + (" - no epoch had completed, so it equals the zero-shot prompt." if not r.history else "."))
    if r.check is not None:
        c = r.check
        right_a = round(c.adapted.accuracy * c.n_images)
        right_z = round(c.zero_shot.accuracy * c.n_images)
        lines.append(
            f"**Held-out check** on {c.n_images} images that training never saw "
            f"({', '.join(map(str, c.per_class_counts))} per class): adapted prompt **{percent(c.adapted.accuracy)}** "
            f"({right_a}/{c.n_images}) vs zero-shot prompt **{percent(c.zero_shot.accuracy)}** ({right_z}/{c.n_images}). "
            f"Each image moves accuracy by {100 / c.n_images:.1f} points: a sanity check, not a validation.")
        if r.calibration is not None:
            lines.append(trust_view.ece_line(r.calibration))
    else:
        lines.append(escape(r.no_check_reason))
    if r.random_weights:
        lines.append("_The backbone has random weights: these numbers are meaningless._")
    return "\n\n".join(lines)


def per_class_frame(r: FewShotResult) -> pd.DataFrame:
    cols = ["class", "held-out images", "adapted (%)", "zero-shot (%)"]
    if r.check is None:
        return pd.DataFrame(columns=cols)
    c = r.check
    rows = [[name, n, _round_pct(c.adapted.per_class[name]), _round_pct(c.zero_shot.per_class[name])]
            for name, n in zip(r.class_names, c.per_class_counts)]
    return pd.DataFrame(rows, columns=cols)


def _round_pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def confusion_frame(r: FewShotResult) -> pd.DataFrame:
    """Adapted prompt's confusion matrix: rows true class, columns predicted class."""
    head = ["true \\ predicted", *r.class_names]
    if r.check is None:
        return pd.DataFrame(columns=head)
    rows = [[name, *counts] for name, counts in zip(r.class_names, r.check.adapted.confusion_matrix)]
    return pd.DataFrame(rows, columns=head)


def checkpoint_label(r: FewShotResult) -> str:
    return f"Few-shot {r.preset or 'custom'} {time.strftime('%H:%M:%S')} ({r.n_images} images)"
