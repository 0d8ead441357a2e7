"""Turning ``dpt_core`` results into what Gradio components show, and errors into messages.

No gradio import and no model call here: plain data in, plain data (dicts,
DataFrames, Markdown strings) out, so every function is unit-testable.
"""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import pandas as pd

from dpt_core.backbone import BackboneError
from dpt_core.checkpoint import CheckpointError
from dpt_core.describe import GenerationError
from dpt_core.descriptions import DescriptionsError
from dpt_core.errors import InputError, UserError
from dpt_core.explain import Explanation
from dpt_core.hub import HubError
from dpt_core.imageio import ImageLoadError, LoadedImage
from dpt_core.modality import ModalityCheck
from dpt_core.predictor import Prediction, PromptContribution

from .redact import hide_paths

# The class table: one row per class, its descriptions in one cell separated by " | ".
# (A Dataframe cell cannot take a line break while editing; " | " is easy to type and to read.)
CLASS_COL, DESC_COL = "class", "descriptions (separated by  |  )"
TABLE_HEADERS = [CLASS_COL, DESC_COL]
SEPARATOR = " | "
SOURCE_TITLES = {"learned": "learned prompt", "templates": "template ensemble", "descriptions": "expert descriptions"}
SOURCE_HEADERS = ["class", *SOURCE_TITLES.values()]
CONTRIB_COLUMNS = ["prompt", "contribution", "source"]
DETAIL_COLUMNS = ["#", "source", "prompt text", "weight", "contribution"]
ATTENTION_NOTE = "Model attention, not lesion localisation."


# ---------------------------------------------------------------------- class table

def class_table(class_names: Sequence[str], descriptions: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """The editable table of a class setup."""
    rows = [[c, SEPARATOR.join(descriptions.get(c, []))] for c in class_names]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def split_descriptions(cell: Any) -> list[str]:
    """A descriptions cell -> sentences (separated by '|' or line breaks; blanks dropped)."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    parts = str(cell).replace("\r", "\n").replace("\n", "|").split("|")
    return [" ".join(p.split()) for p in parts if p.strip()]


def _rows(table: Any) -> list[list[Any]]:
    if table is None:
        return []
    if isinstance(table, pd.DataFrame):
        return table.astype(object).where(pd.notna(table), None).values.tolist()
    if isinstance(table, Mapping) and "data" in table:  # the Dataframe's wire format
        return [list(r) for r in table["data"]]
    return [list(r) for r in table]


def table_rows(table: Any) -> list[tuple[str, list[str]]]:
    """(class name, sentences) per non-blank row, in order; duplicates are kept for the validator.

    Raises ValueError for a row with descriptions but no class name.
    """
    out: list[tuple[str, list[str]]] = []
    for i, row in enumerate(_rows(table), start=1):
        name = " ".join(str(row[0] if row and row[0] is not None else "").split())
        sentences = split_descriptions(row[1] if len(row) > 1 else None)
        if not name and not sentences:
            continue  # an empty row added in the table: ignore it
        if not name:
            raise InputError(f"row {i} of the class table has descriptions but no class name")
        out.append((name, sentences))
    return out


def replace_descriptions(table: Any, class_name: str, sentences: Sequence[str]) -> pd.DataFrame:
    """The table with one class's descriptions replaced."""
    rows = [[name, SEPARATOR.join(sentences) if name == class_name else SEPARATOR.join(s)]
            for name, s in table_rows(table)]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def descriptions_text(table: Any, class_name: str | None) -> str:
    """One class's descriptions, one per line, for the text box editor ("" if unknown)."""
    try:
        rows = table_rows(table)
    except ValueError:
        return ""
    return "\n".join(next((s for name, s in rows if name == class_name), []))


def class_choices(table: Any) -> list[str]:
    """Class names of the table for dropdowns (never raises: a half-edited table is normal)."""
    try:
        return list(dict.fromkeys(name for name, _ in table_rows(table)))
    except ValueError:
        return []


# ---------------------------------------------------------------------- prediction

def label_value(prediction: Prediction) -> dict[str, float]:
    """gr.Label's value: class -> probability of the learned prompt (the prediction itself)."""
    return dict(prediction.probs)


def sources_frame(prediction: Prediction) -> pd.DataFrame:
    """Per-source probabilities side by side, classes by decreasing prediction probability."""
    names = sorted(prediction.class_names, key=lambda c: -prediction.probs[c])
    cols: dict[str, list[str]] = {"class": names}
    for key, title in SOURCE_TITLES.items():
        probs = prediction.sources.get(key)
        cols[title] = [percent(probs[c]) if probs else "n/a" for c in names]
    return pd.DataFrame(cols)


def sources_note(prediction: Prediction) -> str:
    """Why a source column says n/a (a class without descriptions, usually)."""
    if prediction.sources.get("descriptions") is None:
        return ("Expert descriptions: n/a because at least one class has no description; "
                "such a class is represented by its templates only.")
    return ""


def contribution_rows(prediction: Prediction, class_name: str, k_templates: int = 5,
                      k_descriptions: int = 10) -> list[PromptContribution]:
    """The top prompts of one class per source, largest contribution first."""
    rows = (prediction.top_prompts(class_name, k_templates, "templates")
            + prediction.top_prompts(class_name, k_descriptions, "descriptions"))
    return sorted(rows, key=lambda p: p.contribution, reverse=True)


def contributions_plot_frame(rows: Sequence[PromptContribution]) -> pd.DataFrame:
    """BarPlot data: one bar per prompt, labelled "rank source: first words" (zero-padded: the axis
    sorts labels as text), coloured by source. The label names the source, so no legend is needed
    (Gradio's bottom legend is clipped in a narrow column)."""
    data = [[f"{i:02d} {_source_name(r.source)}: {_short(r.text, 36)}", round(r.contribution, 4),
             _source_name(r.source)]
            for i, r in enumerate(rows, start=1)]
    return pd.DataFrame(data, columns=CONTRIB_COLUMNS)


def contributions_table_frame(rows: Sequence[PromptContribution]) -> pd.DataFrame:
    data = [[i, _source_name(r.source), r.text, round(r.weight, 4), round(r.contribution, 4)]
            for i, r in enumerate(rows, start=1)]
    return pd.DataFrame(data, columns=DETAIL_COLUMNS)


def prediction_details(prediction: Prediction, check: ModalityCheck, loaded: LoadedImage,
                       checkpoint: str | None, header_note: str | None, top_k: int = 10) -> dict[str, Any]:
    """The JSON the /predict endpoint returns next to the label."""
    return {
        **prediction.to_json(top_k=top_k),
        "checkpoint": checkpoint,
        "modality_check": {"expected": check.expected, "best": check.best, "mismatch": check.mismatch,
                           "meaningful": check.meaningful, "scores": check.scores, "message": check.message,
                           "dicom_header": header_note},
        "image": {"format": loaded.format, "n_frames": loaded.n_frames, "frame": loaded.frame,
                  "size": list(loaded.image.size), "meta": dict(loaded.meta)},
    }


def modality_markdown(check: ModalityCheck, header_note: str | None = None) -> str:
    lines = []
    if header_note:
        lines.append(f"⚠️ {escape(header_note)}")
    if not check.meaningful:
        lines.append(f"ℹ️ {escape(check.message)}")
    elif check.mismatch:
        lines.append(f"⚠️ {escape(check.message)}")
    elif check.expected:
        lines.append(f"Modality check: the image looks most like **{escape(check.best)}** "
                     f"({check.scores[check.best]:.0%}), consistent with the preset.")
    else:
        lines.append(f"Modality check: the image looks most like **{escape(check.best)}** "
                     f"({check.scores[check.best]:.0%}); custom classes name no modality to compare with.")
    return "\n\n".join(lines)


# ---------------------------------------------------------------------- images and overlays

def image_summary(loaded: LoadedImage) -> str:
    """One line about the decoded image: format, allowlisted DICOM fields, frame, size."""
    parts = [loaded.format]
    labels = {"modality": "modality", "body_part": "body part", "photometric": "photometric"}
    parts += [f"{labels[k]} {escape(v)}" for k, v in loaded.meta.items() if k in labels]
    if loaded.n_frames > 1:
        parts.append(f"frame {loaded.frame + 1} of {loaded.n_frames}")
    parts.append(f"{loaded.image.width}×{loaded.image.height} px")
    return " · ".join(parts)


def explanation_caption(expl: Explanation) -> str:
    if expl.method == "rollout":
        what = "Attention rollout of the class token through the prompted forward"
    else:
        what = f"Grad-CAM of the similarity to “{escape(expl.target)}”"
    lines = [f"**{ATTENTION_NOTE}** {what}."]
    if expl.masked_cells:
        lines.append("Grey hatched cells hold the visual prompt tokens and carry no image.")
    if float(expl.heatmap.max()) <= 0.0:
        lines.append("The map is empty: no image region increases the score for this target.")
    return " ".join(lines)


def explanation_info(expl: Explanation) -> dict[str, Any]:
    return {"method": expl.method, "target": expl.target, "masked_cells": list(expl.masked_cells),
            "empty": bool(float(expl.heatmap.max()) <= 0.0), "note": ATTENTION_NOTE}


# ---------------------------------------------------------------------- errors

_PREFIXES: tuple[tuple[type[BaseException], str], ...] = (
    (ImageLoadError, ""),
    (DescriptionsError, "Descriptions: "),
    (CheckpointError, "Checkpoint: "),
    (HubError, "Could not load from the Hugging Face Hub: "),
    (BackboneError, "Backbone: "),
    (GenerationError, ""),
    (UserError, ""),  # dpt_core.errors: written for users. Any other ValueError (a shape error) is a bug.
)

HUB_HINT = (" Registry checkpoints are downloaded from the Hub; without network use the zero-shot "
            "prompt or a checkpoint trained in this session.")


def friendly_error(exc: BaseException) -> str | None:
    """The message to show for an expected error (HTML-escaped), or None for an unexpected one."""
    for kind, prefix in _PREFIXES:
        if isinstance(exc, kind):
            text = clip_message(hide_paths(str(exc).strip()) or type(exc).__name__)  # no server paths
            message = prefix + text if prefix else text[:1].upper() + text[1:]
            if isinstance(exc, HubError) and ("offline" in text or "reach" in text):
                message = message.rstrip(".") + "." + HUB_HINT
            return escape(message)
    return None


MAX_MESSAGE_CHARS = 600


def clip_message(text: str) -> str:
    """Error messages may quote user input (a class name, a preset): never echo megabytes back."""
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " ... (message shortened)"


def escape(text: Any) -> str:
    """User text goes into Markdown and HTML toasts: neutralise markup."""
    return html.escape(str(text), quote=False)


# ---------------------------------------------------------------------- helpers

def percent(p: float | None) -> str:
    """A fraction as the app writes percentages everywhere: one decimal, a space, '-' when unknown."""
    return "-" if p is None else f"{100.0 * p:.1f} %"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _source_name(source: str) -> str:
    return {"templates": "template", "descriptions": "description"}.get(source, source)
