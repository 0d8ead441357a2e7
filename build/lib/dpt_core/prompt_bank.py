"""The dual prompt bank of a set of classes: clinical templates + expert descriptions.

Each class owns T template prompts (the preset's ensemble filled with its name)
and N expert descriptions. Features are encoded once per sentence with the
frozen text tower and cached on the backbone, so rebuilding a bank after an
edit only encodes the sentences that changed.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .backbone import Backbone
from .text import TextEncoder, fill_template

SOURCES = ("templates", "descriptions")
_ENCODE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Prompt:
    class_index: int
    source: str  # "templates" or "descriptions"
    text: str


@dataclass
class PromptBank:
    class_names: list[str]
    prompts: list[Prompt]
    features: torch.Tensor  # [P, E], L2-normalised, on the backbone's device

    def __post_init__(self) -> None:
        self.class_index = torch.tensor([p.class_index for p in self.prompts], dtype=torch.long)
        self.is_description = torch.tensor([p.source == "descriptions" for p in self.prompts], dtype=torch.bool)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def indices(self, class_index: int, source: str | None = None) -> list[int]:
        return [
            i for i, p in enumerate(self.prompts)
            if p.class_index == class_index and (source is None or p.source == source)
        ]

    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]


def encode_cached(backbone: Backbone, texts: Sequence[str]) -> torch.Tensor:
    """Normalised features of ``texts`` [N, E]; only sentences not in the backbone's cache are encoded."""
    with _ENCODE_LOCK:
        cache = backbone.text_cache
        found = {t: f for t in dict.fromkeys(texts) if (f := cache.get(t)) is not None}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            feats = TextEncoder(backbone).encode_texts(missing).float().cpu()
            cache.put(missing, feats)
            found.update(zip(missing, feats))
        if not texts:
            return torch.zeros(0, backbone.embed_dim, device=backbone.device)
        return torch.stack([found[t] for t in texts]).to(backbone.device)


def build_prompt_bank(
    backbone: Backbone,
    class_names: Sequence[str],
    templates: Sequence[str],
    descriptions: Mapping[str, Sequence[str]],
) -> PromptBank:
    """Templates filled with each class name, then that class's descriptions (may be empty)."""
    if not templates:
        raise ValueError("at least one template is needed")
    prompts: list[Prompt] = []
    for c, name in enumerate(class_names):
        for t in dict.fromkeys(fill_template(t, name) for t in templates):
            prompts.append(Prompt(c, "templates", t))
        for d in dict.fromkeys(descriptions.get(name, [])):
            prompts.append(Prompt(c, "descriptions", d))
    feats = encode_cached(backbone, [p.text for p in prompts])
    return PromptBank(list(class_names), prompts, feats)
