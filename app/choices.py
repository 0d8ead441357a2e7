"""Choices and parsing shared by the tabs: presets, checkpoints, API class lists and descriptions."""
from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import gradio as gr

from dpt_core.descriptions import DescriptionsError, validate_descriptions
from dpt_core.errors import InputError
from dpt_core.limits import parse_json_field
from dpt_core.presets import list_presets, load_preset
from dpt_core.registry import checkpoint_choices as registry_choices
from dpt_core.registry import default_checkpoint

from . import formatting as fmt
from .services import CUSTOM
from .session import trained_checkpoints
from .uploads import split_class_text

log = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"  # checkpoint dropdown value: the preset's clinical template, no checkpoint
PREDICTED = "__predicted__"  # attention target dropdown value: the predicted class
DEFAULT_PRESET = "btmri"
DEFAULT_ALPHA = 0.45
# Typed local folders as checkpoint ids read the server's disk: off unless the operator allows it.
ALLOW_LOCAL_ENV = "DPT_ALLOW_LOCAL_CHECKPOINTS"
FileValue = str | None

F = TypeVar("F", bound=Callable[..., Any])
# ---------------------------------------------------------------------- choices

def preset_choices() -> list[tuple[str, str]]:
    return [(f"{load_preset(n).title} ({n})", n) for n in list_presets()] + [("Custom classes", CUSTOM)]


def checkpoint_choices(preset: str | None, state: dict | None) -> list[tuple[str, str]]:
    """Zero-shot, the registry's checkpoints of the preset (with their accuracy), then this session's trained ones."""
    out = [("Zero-shot (clinical template)", ZERO_SHOT)]
    if preset and preset != CUSTOM:
        out += registry_choices(preset)
    # The value is the label, which only this session's state maps to a folder: no server path reaches the page.
    out += [(f"{label} (trained in this session)", label) for label in trained_checkpoints(state)]
    return out


def checkpoint_update(preset: str | None, state: dict | None, value: str | None = None) -> dict:
    """gr.update for the checkpoint dropdown; the Few-shot tab calls it with its new folder as ``value``.

    Without a value: the preset's registry Biomed-DPT checkpoint (16 shots, seed 1) when there is one,
    else zero-shot. Nothing is downloaded until the checkpoint is used.
    """
    return gr.update(choices=checkpoint_choices(preset, state), value=value or default_checkpoint_value(preset))


def default_checkpoint_value(preset: str | None) -> str:
    return (default_checkpoint(preset) if preset and preset != CUSTOM else None) or ZERO_SHOT


def preset_markdown(preset: str | None) -> str:
    if not preset or preset == CUSTOM:
        return ("Custom classes: prompt template `a photo of a {}.`; edit the class names below "
                "(at least two).")
    p = load_preset(preset)
    return (f"**{fmt.escape(p.title)}** — {fmt.escape(p.modality)}, {fmt.escape(p.organ)}. "
            f"Clinical template: `{p.template}` · {len(p.templates)} templates in the ensemble.")


def parse_classes_text(text: str | None) -> list[str] | None:
    """API ``classes``: a JSON list, one name per line, or comma-separated; None/blank -> the preset's."""
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith("["):
        value = parse_json_field(text, "classes")  # bounded size and nesting
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError("classes: expected a JSON list of names (strings)")
        return value
    return split_class_text(text)


def parse_descriptions_text(text: str | None) -> dict[str, list[str]] | None:
    """API ``descriptions``: a JSON object {class: [sentences]}; None/blank -> the preset's bank."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        raw = parse_json_field(text, "descriptions")  # bounded size and nesting
    except ValueError as exc:
        raise DescriptionsError(str(exc)) from None
    return validate_descriptions(raw, source="descriptions")
