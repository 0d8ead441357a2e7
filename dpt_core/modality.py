"""Zero-shot modality check: does an image look like the modality its preset expects?

A preset's prompts (``a MR photo of a {} in the brain.``) assume the image is
of that modality; a CT slice scored against brain-MRI classes still gets
confident-looking probabilities. This module asks the backbone itself, zero
shot, which of the presets' imaging modalities the image resembles most, and
says so when that is clearly not the preset's.

- Candidates: the distinct modalities of the shipped presets, each as a small
  prompt ensemble ``a {modality} image of the {organ}`` over the organs the
  presets pair it with, plus an ``other`` candidate (ordinary photographs).
- Scores: softmax over candidates of ``tau * cos(image, mean prompt feature)``
  with the backbone's own tau (never a hard-coded temperature).
- Decision: mismatch when the best candidate is not the expected modality and
  beats it by at least ``margin`` in probability. The margin is a heuristic,
  chosen conservatively: a warning should mean "look again", not noise.
- A backbone with random weights cannot tell modalities apart: the check then
  says it is not meaningful instead of warning.

DICOM headers carry a Modality code; ``header_modality`` maps the common codes
to the same names so the app can compare the two (a deterministic check that
holds even with random weights).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from .backbone import Backbone
from .presets import list_presets, load_preset
from .prompt_bank import encode_cached

log = logging.getLogger(__name__)

OTHER = "other (not a medical image)"
OTHER_PROMPTS = ("a photograph.", "a photo of an everyday object.", "a natural photograph of a scene.")
DEFAULT_MARGIN = 0.3  # probability margin of the best modality over the expected one

# DICOM (0008,0060) Modality codes -> preset modality names (only the unambiguous ones).
_DICOM_CODES = {
    "MR": "MRI", "CT": "CT", "US": "ultrasound", "CR": "X-ray", "DX": "X-ray", "RG": "X-ray",
    "DR": "X-ray", "OCT": "OCT", "OPT": "OCT", "OP": "fundus photography", "SM": "histopathology",
    "ES": "endoscopy", "DMS": "dermatoscopy",
}


@dataclass(frozen=True)
class ModalityCheck:
    expected: str | None  # the preset's modality; None for custom classes
    best: str  # the best-matching candidate
    scores: dict[str, float] = field(default_factory=dict)  # candidate -> probability (sums to 1)
    mismatch: bool = False  # warn the user
    meaningful: bool = True  # False with random backbone weights
    message: str = ""  # one sentence for the UI ("" when there is nothing to say)


def _article(word: str) -> str:
    # "an MRI", "an X-ray", "an OCT", "an ultrasound", "a CT", "a dermatoscopy".
    first = word[:1]
    vowel_letter = first.lower() in "aeiou"
    acronym_vowel_sound = word[:2].isupper() and first in "AEFHILMNORSX"
    return "an" if vowel_letter or acronym_vowel_sound else "a"


@lru_cache(maxsize=1)
def modality_prompts() -> dict[str, tuple[str, ...]]:
    """Candidate -> prompts, from the shipped presets' (modality, organ) pairs, plus ``OTHER``."""
    organs: dict[str, list[str]] = {}
    for name in list_presets():
        p = load_preset(name)
        for organ in (o.strip() for o in p.organ.split(",")):
            if organ and organ not in organs.setdefault(p.modality, []):
                organs[p.modality].append(organ)
    prompts = {
        m: tuple(f"{_article(m)} {m} image of the {o}." for o in os_) for m, os_ in organs.items()
    }
    prompts[OTHER] = OTHER_PROMPTS
    return prompts


def modality_features(backbone: Backbone) -> tuple[list[str], torch.Tensor]:
    """(candidate names, [M, E] normalised mean prompt features); the sentences come from the
    backbone's text cache, so after the first call this is a few means (microseconds)."""
    prompts = modality_prompts()
    names = list(prompts)
    feats = torch.stack([F.normalize(encode_cached(backbone, list(prompts[n])).float().mean(dim=0), dim=-1)
                         for n in names])
    return names, feats


@torch.no_grad()
def check_modality(
    backbone: Backbone,
    feature: torch.Tensor,
    expected: str | None,
    margin: float = DEFAULT_MARGIN,
    meaningful: bool | None = None,
) -> ModalityCheck:
    """Compare a normalised image feature [E] (or [1, E]) with the modality candidates.

    ``meaningful`` defaults to ``not backbone.random_weights``; tests may force it.
    """
    if meaningful is None:
        meaningful = not backbone.random_weights
    names, text = modality_features(backbone)
    f = F.normalize(feature.reshape(-1).float().to(text.device), dim=-1)
    probs = torch.softmax(backbone.logit_scale().float().to(text.device) * (text @ f), dim=0)
    scores = {n: float(p) for n, p in zip(names, probs, strict=True)}
    best = max(scores, key=scores.get)
    expected_key = _match(expected, names)
    gap = scores[best] - scores[expected_key] if expected_key else 0.0
    if not meaningful:
        msg = "The modality check is not meaningful with a random-weight backbone."
        return ModalityCheck(expected, best, scores, False, False, msg)
    mismatch = expected_key is not None and best != expected_key and gap >= margin
    msg = ""
    if mismatch:
        looks = "not a medical image" if best == OTHER else f"{_article(best)} {best} image"
        msg = (f"This image looks more like {looks} ({scores[best]:.0%}) than {expected_key} "
               f"({scores[expected_key]:.0%}), the modality of the chosen preset: check the preset.")
    log.debug("modality check: best %s (%.3f), expected %s, gap %.3f", best, scores[best], expected_key, gap)
    return ModalityCheck(expected, best, scores, mismatch, True, msg)


def header_modality(code: str | None) -> str | None:
    """A DICOM Modality code (e.g. ``MR``) as a preset modality name (``MRI``), or None."""
    if not code:
        return None
    return _DICOM_CODES.get(code.strip().upper())


def header_mismatch(code: str | None, expected: str | None) -> str | None:
    """A message when the DICOM header's modality contradicts the preset's, else None."""
    found = header_modality(code)
    if found is None or not expected or found.casefold() == expected.casefold():
        return None
    return (f"The DICOM header says this is {_article(found)} {found} image, but the chosen preset "
            f"expects {expected}: check the preset.")


def _match(expected: str | None, names: list[str]) -> str | None:
    if not expected:
        return None
    for n in names:
        if n.casefold() == expected.strip().casefold():
            return n
    return None
