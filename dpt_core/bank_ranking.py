"""Ranking of the shipped description banks, recorded in ``assets/descriptions/MANIFEST.json``.

Each sentence of a preset's bank gets the discrimination score of the ranked
teacher (``ranking.score_prompts`` without images): its cosine with its own
class's centroid minus its cosine with the closest other class's centroid,
the centroids taken over the preset's templates and descriptions as the model
sees them. The ranking tells a clinician editing a bank which sentences the
text encoder already separates well and which it confuses with a neighbour.

The score depends on the text encoder, so the MANIFEST records which backbone
(and revision) made it and the sha256 of each bank it ranked; a ranking whose
bank has changed since is stale and is not read back. A random-weight backbone
(``tiny``) ranks noise: it may write only to another manifest file (tests),
never to the shipped one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from .backbone import Backbone
from .descriptions import MANIFEST, bank_hash, load_bank
from .errors import InputError
from .presets import list_presets, load_preset
from .prompt_bank import build_prompt_bank
from .ranking import score_prompts

log = logging.getLogger(__name__)

RANKING_KEY = "ranking"
SCORE_DEFINITION = ("ranking.score_prompts without images: cosine with the own class centroid minus the "
                    "cosine with the closest other class centroid (templates and descriptions)")


class RankingError(InputError):
    """The ranking cannot be recorded as asked; the message says why."""


def rank_bank(backbone: Backbone, preset: str) -> dict[str, list[tuple[int, float]]]:
    """{class: [(sentence index in the bank file, score), ...] best first} for one preset's bank."""
    p = load_preset(preset)
    bank = load_bank(preset)
    prompts = build_prompt_bank(backbone, list(p.classes), list(p.templates), bank)
    scores = score_prompts(prompts).cpu()
    out: dict[str, list[tuple[int, float]]] = {}
    for c, name in enumerate(p.classes):
        sentences = bank.get(name, [])
        by_text = {prompts.prompts[i].text: float(scores[i]) for i in prompts.indices(c, "descriptions")}
        pairs = [(i, by_text[s]) for i, s in enumerate(sentences)]
        out[name] = sorted(pairs, key=lambda t: (-t[1], t[0]))
    return out


def rank_banks_into_manifest(
    backbone: Backbone,
    presets: Sequence[str] | None = None,
    manifest: str | Path | None = None,
) -> dict:
    """Rank the banks of ``presets`` (default: all) and write the ranking into ``manifest``.

    Returns the ranking section as written. Banks ranked before and not named here keep
    their entry when the backbone is the same; a different backbone starts a new section.
    """
    path = Path(manifest) if manifest is not None else MANIFEST
    if backbone.random_weights and path.resolve() == MANIFEST.resolve():
        raise RankingError(f"backbone {backbone.spec} has random weights, so its ranking is meaningless; "
                           "it is never written into the shipped MANIFEST (give --manifest to write elsewhere)")
    names = [n.lower() for n in presets] if presets else list_presets()
    unknown = sorted(set(names) - set(list_presets()))
    if unknown:
        raise RankingError(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(list_presets())}")
    doc = _read(path)
    about = backbone.describe()
    section = doc.get(RANKING_KEY) if isinstance(doc.get(RANKING_KEY), dict) else {}
    if {k: section.get(k) for k in about} != about:
        section = {}  # another encoder's scores do not mix with these
    section.update(about)
    section["score"] = SCORE_DEFINITION
    banks = section.setdefault("banks", {})
    for name in names:
        log.info("ranking the %s bank", name)
        ranked = rank_bank(backbone, name)
        banks[f"{name}.json"] = {
            "sha256": bank_hash(name),
            "classes": {c: {"order": [i for i, _ in r], "score": [round(s, 5) for _, s in r]}
                        for c, r in ranked.items()},
        }
    section["banks"] = dict(sorted(banks.items()))
    doc[RANKING_KEY] = section
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return section


def read_ranking(preset: str, manifest: str | Path | None = None) -> dict[str, list[tuple[str, float]]] | None:
    """{class: [(sentence, score), ...] best first} from the manifest, or None when absent or stale."""
    doc = _read(Path(manifest) if manifest is not None else MANIFEST)
    entry = (doc.get(RANKING_KEY) or {}).get("banks", {}).get(f"{preset.lower()}.json")
    if not entry or entry.get("sha256") != bank_hash(preset):
        return None
    bank = load_bank(preset)
    return {c: [(bank[c][i], s) for i, s in zip(r["order"], r["score"], strict=True)]
            for c, r in entry["classes"].items() if c in bank}


def keep_fresh(ranking: dict | None, hashes: dict[str, str]) -> dict | None:
    """The ranking section without the banks whose file changed since they were ranked."""
    if not isinstance(ranking, dict):
        return None
    banks = {f: e for f, e in ranking.get("banks", {}).items() if hashes.get(f) == e.get("sha256")}
    return {**ranking, "banks": banks} if banks else None


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RankingError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(doc, dict):
        raise RankingError(f"{path.name} is not a JSON object")
    return doc
