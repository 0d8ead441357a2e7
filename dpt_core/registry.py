"""The registry of known checkpoints (``checkpoints/registry.json``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .resources import CHECKPOINTS_DIR

REGISTRY_PATH = CHECKPOINTS_DIR / "registry.json"


@dataclass(frozen=True)
class RegistryEntry:
    id: str  # checkpoint id: folder, hf-hub:..., or a .pth.tar
    label: str  # what the UI shows
    preset: str
    method: str  # "biomed-dpt" or "biomedcoop"
    protocol: str
    shots: int


@lru_cache(maxsize=1)
def registry_entries() -> tuple[RegistryEntry, ...]:
    raw = json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))
    return tuple(RegistryEntry(**e) for e in raw["checkpoints"])


def entry(checkpoint_id: str) -> RegistryEntry | None:
    """The registry entry of a checkpoint id, if it has one."""
    return next((e for e in registry_entries() if e.id == checkpoint_id), None)


def entries_for(preset: str | None) -> list[RegistryEntry]:
    """Registry entries of one preset (all when ``preset`` is None)."""
    return [e for e in registry_entries() if preset is None or e.preset == preset]
