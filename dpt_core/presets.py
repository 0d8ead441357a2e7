"""Dataset presets (method.md section 4): classes in label order, template, n_ctx, loss weights.

Presets are data: one JSON file per dataset under ``assets/presets/``, named by
BiomedCoOp's dataset ids. This module only reads and validates them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .errors import InputError
from .losses import LossWeights
from .resources import ASSETS_DIR

PRESETS_DIR = ASSETS_DIR / "presets"
PROTOCOLS = ("few_shot", "base2novel")


@dataclass(frozen=True)
class Preset:
    name: str  # BiomedCoOp dataset id, e.g. "btmri"
    title: str  # human-readable name for the UI
    modality: str  # e.g. "MRI"
    organ: str  # e.g. "brain"
    classes: tuple[str, ...]  # label order 0..C-1 (matters for checkpoints and base-to-novel)
    template: str  # the clinical template of the paper, with one "{}" for the class name
    n_ctx: int  # leading template word-pieces that the learned context replaces
    templates: tuple[str, ...]  # the template ensemble (journal version); includes `template`
    loss_weights: dict[str, LossWeights]  # per protocol: "few_shot" / "base2novel"

    def weights(self, protocol: str = "few_shot") -> LossWeights:
        key = protocol.replace("-", "_")
        if key not in self.loss_weights:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        return self.loss_weights[key]


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def load_preset(name: str) -> Preset:
    """Load a shipped preset by its dataset id (case-insensitive)."""
    key = name.strip().lower()
    path = PRESETS_DIR / f"{key}.json"
    if not path.is_file():
        raise InputError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    preset = Preset(
        name=raw["name"],
        title=raw["title"],
        modality=raw["modality"],
        organ=raw["organ"],
        classes=tuple(raw["classes"]),
        template=raw["template"],
        n_ctx=int(raw["n_ctx"]),
        templates=tuple(raw["templates"]),
        loss_weights={k: LossWeights(**v) for k, v in raw["loss_weights"].items()},
    )
    _check(preset)
    return preset


def _check(p: Preset) -> None:
    if p.template.count("{}") != 1 or any(t.count("{}") != 1 for t in p.templates):
        raise ValueError(f"preset {p.name}: every template needs exactly one '{{}}'")
    if len(set(p.classes)) != len(p.classes):
        raise ValueError(f"preset {p.name}: duplicate class names")
    if set(p.loss_weights) != set(PROTOCOLS):
        raise ValueError(f"preset {p.name}: loss_weights must name {PROTOCOLS}")
