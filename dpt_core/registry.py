"""The registry of known checkpoints (``checkpoints/registry.json``) and what the checkpoint picker shows.

Pure functions over registry entries: the choices of one preset (Biomed-DPT first,
each with its recorded accuracy), the default checkpoint of a preset, and the
entries ``publish`` writes. Nothing here downloads: a checkpoint is fetched only
when someone picks it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .resources import CHECKPOINTS_DIR

REGISTRY_PATH = CHECKPOINTS_DIR / "registry.json"
DEFAULT_SHOTS, DEFAULT_SEED = 16, 1  # the default checkpoint of a preset: 16 shots, seed 1
METHOD_NAMES = {"biomed-dpt": "Biomed-DPT", "biomedcoop": "BiomedCoOp"}


@dataclass(frozen=True)
class RegistryEntry:
    id: str  # checkpoint id: folder, hf-hub:..., or a .pth.tar
    label: str  # what the UI shows
    preset: str
    method: str  # "biomed-dpt" or "biomedcoop"
    protocol: str  # "few_shot" or "base2novel"
    shots: int
    seed: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict, compare=False)  # as the run recorded them

    @property
    def accuracy(self) -> float | None:
        """The recorded headline number: few-shot accuracy, or the base-to-novel harmonic mean."""
        key = "harmonic_mean" if self.protocol == "base2novel" else "accuracy"
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) else None


def entry_from_json(raw: Mapping[str, Any]) -> RegistryEntry:
    metrics = {k: float(v) for k, v in (raw.get("metrics") or {}).items() if isinstance(v, (int, float))}
    seed = raw.get("seed")
    return RegistryEntry(id=str(raw["id"]), label=str(raw["label"]), preset=str(raw["preset"]),
                         method=str(raw["method"]), protocol=str(raw["protocol"]), shots=int(raw["shots"]),
                         seed=int(seed) if seed is not None else None, metrics=metrics)


def read_registry(path: str | Path = REGISTRY_PATH) -> tuple[RegistryEntry, ...]:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(entry_from_json(e) for e in raw["checkpoints"])


@lru_cache(maxsize=1)
def registry_entries() -> tuple[RegistryEntry, ...]:
    return read_registry(REGISTRY_PATH)


def entry(checkpoint_id: str) -> RegistryEntry | None:
    """The registry entry of a checkpoint id, if it has one."""
    return next((e for e in registry_entries() if e.id == checkpoint_id), None)


def entries_for(preset: str | None, entries: Iterable[RegistryEntry] | None = None) -> list[RegistryEntry]:
    """Registry entries of one preset (all when ``preset`` is None), in picker order."""
    pool = registry_entries() if entries is None else entries
    return sorted((e for e in pool if preset is None or e.preset == preset), key=_picker_order)


def _picker_order(e: RegistryEntry) -> tuple:
    # Biomed-DPT before BiomedCoOp; few-shot before base-to-novel; more shots first; seed 1 first.
    return (e.preset, e.method != "biomed-dpt", e.protocol != "few_shot", -e.shots, e.seed or 0, e.label)


def grouped_by_preset(entries: Iterable[RegistryEntry] | None = None) -> dict[str, list[RegistryEntry]]:
    """``{preset: entries in picker order}``, presets sorted."""
    out: dict[str, list[RegistryEntry]] = {}
    for e in entries_for(None, entries):
        out.setdefault(e.preset, []).append(e)
    return out


def picker_label(e: RegistryEntry) -> str:
    """The entry's label with its recorded accuracy, e.g. '... - accuracy 73.5 %'."""
    m = e.metrics
    if e.protocol == "base2novel" and "base_accuracy" in m and "novel_accuracy" in m:
        return f"{e.label} - base {100 * m['base_accuracy']:.1f} %, novel {100 * m['novel_accuracy']:.1f} %"
    if e.accuracy is not None:
        return f"{e.label} - accuracy {100 * e.accuracy:.1f} %"
    return f"{e.label} - accuracy not recorded"


def checkpoint_choices(preset: str | None, entries: Iterable[RegistryEntry] | None = None) -> list[tuple[str, str]]:
    """(label, id) of the preset's registry checkpoints for a dropdown, in picker order."""
    if not preset:
        return []
    return [(f"{picker_label(e)} (downloaded from the Hub when picked)", e.id) for e in entries_for(preset, entries)]


def default_checkpoint(preset: str | None, entries: Iterable[RegistryEntry] | None = None) -> str | None:
    """The preset's Biomed-DPT few-shot checkpoint with 16 shots and seed 1, else None (the zero-shot prompt)."""
    for e in entries_for(preset, entries) if preset else []:
        if (e.method, e.protocol, e.shots, e.seed) == ("biomed-dpt", "few_shot", DEFAULT_SHOTS, DEFAULT_SEED):
            return e.id
    return None


# ------------------------------------------------------------------------------ writing (publish)

def entry_for_run(checkpoint_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The registry entry (JSON) of a published run, from its ``config.json``."""
    tr = config.get("training") or {}
    preset, protocol = config.get("preset"), tr.get("protocol", "few_shot")
    shots, seed = tr.get("shots"), tr.get("seed")
    method = METHOD_NAMES.get(config.get("method", ""), config.get("method", ""))
    kind = f"{shots}-shot" if protocol == "few_shot" else "base-to-novel, base classes"
    metrics = {k: v for k, v in (config.get("metrics") or {}).items() if isinstance(v, (int, float))}
    return {"id": checkpoint_id, "label": f"{method} {preset} {kind} (seed {seed})", "preset": preset,
            "method": config.get("method"), "protocol": protocol, "shots": shots, "seed": seed,
            "metrics": metrics,
            "recipe": {"mode": tr.get("mode"), "teacher": (config.get("teacher") or {}).get("mode"),
                       "class_position": config.get("class_token_position", "end"), "epochs": tr.get("epochs"),
                       "backbone": config.get("backbone")}}


def merge_entries(registry: Mapping[str, Any], new: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The registry JSON with ``new`` entries added; an entry with the same id is replaced in place."""
    out = dict(registry)
    by_id = {e["id"]: e for e in new}
    kept = [by_id.pop(e["id"], e) for e in registry.get("checkpoints", [])]
    out["checkpoints"] = kept + [e for e in new if e["id"] in by_id]
    return out


def write_registry_entries(new: Sequence[Mapping[str, Any]], path: str | Path = REGISTRY_PATH) -> Path:
    """Merge ``new`` into the registry file at ``path`` (created when missing)."""
    path = Path(path)
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"checkpoints": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merge_entries(current, new), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if path.resolve() == REGISTRY_PATH.resolve():
        registry_entries.cache_clear()
    return path
