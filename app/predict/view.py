"""The Predict tab's view: handler results as dicts keyed by component name.

Each key is the name of a component in the tab's layout (``app.predict.layout``), which
turns these dicts into Gradio outputs; a handler returns only the components it changes.
Tests read results by name (``out["label"]``) instead of by position in a long tuple.
"""
from __future__ import annotations

import functools
import uuid
from typing import Any, Callable

import gradio as gr
import pandas as pd
from PIL import Image

from dpt_core.explain import Explanation, overlay
from dpt_core.imageio import LoadedImage
from dpt_core.modality import ModalityCheck
from dpt_core.predictor import Prediction

from .. import formatting as fmt
from .. import trust_view
from ..choices import PREDICTED

# What a new scan, frame, preset, checkpoint or class table makes out of date.
RESULTS = ("label", "sources", "modality_md", "contrib_plot", "contrib_table", "overlay_img", "caption",
           "pred_state", "expl_state", "calibration_md")


def cleared_results() -> dict[str, Any]:
    """Every result of an earlier prediction or map, emptied."""
    return {name: "" if name in ("modality_md", "caption", "calibration_md") else None for name in RESULTS}


def scan_outputs(loaded: LoadedImage | None, slider: Any = None) -> dict[str, Any]:
    """Preview and summary of a scan (or empty), with the results cleared."""
    out = {"preview": loaded.image if loaded else None, "image_info": fmt.image_summary(loaded) if loaded else ""}
    if slider is not None:
        out["frame"] = slider
    return {**out, **cleared_results()}


def frame_slider(loaded: LoadedImage | None) -> dict:
    """The frame slider: shown for several frames only, counting from 1, at the loaded frame."""
    if loaded is None:
        return gr.update(visible=False, value=1)
    return gr.update(visible=loaded.n_frames > 1, minimum=1, maximum=max(2, loaded.n_frames),
                     value=loaded.frame + 1, step=1)


def class_editor(table: Any, current: str | None) -> dict[str, Any]:
    """The one-class editor after a table change: class picker (same class if still there) and its text."""
    names = fmt.class_choices(table)
    chosen = current if current in names else (names[0] if names else None)
    return {"gen_class": gr.update(choices=names, value=chosen), "desc_box": fmt.descriptions_text(table, chosen)}


def contributions(pred: Prediction, class_name: str) -> dict[str, pd.DataFrame]:
    """The contributions chart and table of one class."""
    rows = fmt.contribution_rows(pred, class_name)
    return {"contrib_plot": fmt.contributions_plot_frame(rows), "contrib_table": fmt.contributions_table_frame(rows)}


def prediction_outputs(pred: Prediction, check: ModalityCheck, header: str | None) -> dict[str, Any]:
    """A prediction: label, sources, notes, contributions of the predicted class, Grad-CAM target."""
    note = fmt.sources_note(pred)
    return {
        "label": fmt.label_value(pred),
        "sources": fmt.sources_frame(pred),
        "modality_md": fmt.modality_markdown(check, header) + (f"\n\n{note}" if note else ""),
        "contrib_class": gr.update(choices=pred.class_names, value=pred.prediction),
        **contributions(pred, pred.prediction),
        "target": gr.update(choices=[("Predicted class", PREDICTED)] + [(c, c) for c in pred.class_names],
                            value=PREDICTED),
        "calibration_md": trust_view.calibration_markdown(pred),
        "pred_state": pred,  # kept to redraw the contributions for another class without recomputing
    }


def overlay_image(expl: Explanation, alpha: float) -> Image.Image:
    """The overlay as the page and the API show it, tagged so that no two renders share a file.

    Gradio names a PIL output's cache file by the hash of its PNG bytes and rewrites that file
    every time; two identical overlays at once (two users on the same example) would truncate
    the file one of them is still downloading. A random PNG text chunk makes each render's
    bytes, and so its file, its own."""
    image = overlay(expl, float(alpha))
    image.info["render"] = uuid.uuid4().hex
    return image


def explanation_outputs(expl: Explanation, alpha: float) -> dict[str, Any]:
    """An attention map: the overlay, its caption (with the faithfulness line) and the map itself."""
    caption = "\n\n".join(t for t in (fmt.explanation_caption(expl), trust_view.faithfulness_line(expl)) if t)
    image = overlay_image(expl, alpha)
    return {"overlay_img": image, "caption": caption, "expl_state": expl}


def by_name(fn: Callable[..., dict[str, Any]], names: list[str]) -> Callable[..., tuple]:
    """``fn``'s dict (component name -> value) as a tuple in the order of ``names``; absent names are left as
    they are. A name outside ``names`` is a wiring bug, caught here rather than silently dropped."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> tuple:
        values = fn(*args, **kwargs)
        unknown = set(values) - set(names)
        if unknown:
            raise KeyError(f"{fn.__name__} returned components not wired as outputs: {sorted(unknown)}")
        return tuple(values.get(n, gr.update()) for n in names)

    return wrapper
