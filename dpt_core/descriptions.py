"""Expert description banks and user description files.

A descriptions file is JSON ``{class name: [sentence, ...]}``. The shipped bank
(``assets/descriptions/<preset>.json``, written by this project) has the same
shape; a user's file replaces the bank for the classes it names. Class names
match after ``_`` -> space and case folding.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

from .errors import InputError
from .presets import ASSETS_DIR

DESCRIPTIONS_DIR = ASSETS_DIR / "descriptions"
MAX_SENTENCE_CHARS = 400  # well inside BERT's 256 tokens
MAX_SENTENCES_PER_CLASS = 200

Descriptions = dict[str, list[str]]


class DescriptionsError(InputError):
    """A descriptions file is malformed; the message names the problem."""


def class_key(name: str) -> str:
    """The matching key of a class name: underscores as spaces, case-folded, single spaces."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def same_classes(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two class lists name the same classes in the same order (matched by ``class_key``)."""
    return [class_key(n) for n in a] == [class_key(n) for n in b]


def load_bank(preset: str) -> Descriptions:
    """The shipped expert description bank of a preset ({} if there is none); a fresh copy each call."""
    return {cls: list(sentences) for cls, sentences in _shipped_bank(preset.lower())}


@lru_cache(maxsize=None)
def _shipped_bank(preset: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    # Shipped files do not change while the process runs; the app resolves a bank on every
    # request, so each file is read and validated once.
    path = DESCRIPTIONS_DIR / f"{preset}.json"
    if not path.is_file():
        return ()
    bank = validate_descriptions(json.loads(path.read_text(encoding="utf-8")), source=path.name)
    return tuple((cls, tuple(sentences)) for cls, sentences in bank.items())


def bank_hash(preset: str) -> str | None:
    """sha256 of the bank file's bytes, recorded in checkpoints to say which bank taught them."""
    path = DESCRIPTIONS_DIR / f"{preset.lower()}.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def descriptions_hash(descriptions: Mapping[str, Sequence[str]]) -> str:
    """Content hash of a descriptions mapping (order of classes and sentences matters)."""
    blob = json.dumps({k: list(v) for k, v in descriptions.items()}, ensure_ascii=False, sort_keys=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_descriptions_file(path: str | Path) -> Descriptions:
    """Read and validate a user's ``{class: [sentences]}`` JSON file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptionsError(f"cannot read descriptions file {path.name}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DescriptionsError(f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return validate_descriptions(raw, source=path.name)


def validate_descriptions(raw: object, source: str = "descriptions") -> Descriptions:
    """Check shape and clean whitespace; duplicate sentences within a class are dropped."""
    if not isinstance(raw, dict):
        raise DescriptionsError(f"{source}: expected a JSON object {{class name: [sentences]}}")
    out: Descriptions = {}
    seen_keys: dict[str, str] = {}
    for name, sentences in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise DescriptionsError(f"{source}: class names must be non-empty strings")
        key = class_key(name)
        if key in seen_keys:
            raise DescriptionsError(f"{source}: classes {seen_keys[key]!r} and {name!r} are the same class")
        seen_keys[key] = name
        if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
            raise DescriptionsError(f"{source}: {name!r} must map to a list of sentences")
        if len(sentences) > MAX_SENTENCES_PER_CLASS:
            raise DescriptionsError(f"{source}: {name!r} has {len(sentences)} sentences; at most {MAX_SENTENCES_PER_CLASS}")
        clean: list[str] = []
        for s in sentences:
            if not isinstance(s, str):
                raise DescriptionsError(f"{source}: {name!r} holds a non-text entry")
            s = " ".join(s.split())
            if len(s) > MAX_SENTENCE_CHARS:
                raise DescriptionsError(f"{source}: a sentence of {name!r} is longer than {MAX_SENTENCE_CHARS} characters")
            if s and s.casefold() not in {c.casefold() for c in clean}:
                clean.append(s)
        out[name.strip()] = clean
    return out


def resolve_descriptions(
    class_names: Sequence[str],
    preset: str | None = None,
    overrides: Mapping[str, Sequence[str]] | None = None,
) -> Descriptions:
    """Descriptions for ``class_names``: the user's overrides first, else the preset's bank, else [].

    A class with no description anywhere gets [] here; its teacher then uses
    its clinical template(s) (see ``prompt_bank.build_prompt_bank``).
    """
    by_key: dict[str, list[str]] = {}
    if preset:
        by_key.update({class_key(k): list(v) for k, v in load_bank(preset).items()})
    if overrides:
        by_key.update({class_key(k): list(v) for k, v in overrides.items()})
    return {c: list(by_key.get(class_key(c), [])) for c in class_names}


MANIFEST = DESCRIPTIONS_DIR / "MANIFEST.json"


def write_manifest() -> dict[str, str]:
    """Recompute ``MANIFEST.json`` (sha256 per bank file) after editing a bank on purpose."""
    hashes = {p.name: bank_hash(p.stem) for p in sorted(DESCRIPTIONS_DIR.glob("*.json")) if p.name != MANIFEST.name}
    doc = {"_comment": "sha256 of each description bank file; checkpoints record the hash of the bank "
                       "that taught them. Update with: python -m dpt_core.descriptions",
           "sha256": hashes}
    from .bank_ranking import RANKING_KEY, keep_fresh  # local: bank_ranking imports this module

    old = json.loads(MANIFEST.read_text(encoding="utf-8")) if MANIFEST.is_file() else {}
    ranking = keep_fresh(old.get(RANKING_KEY), hashes)  # a ranking of an edited bank is dropped
    if ranking:
        doc[RANKING_KEY] = ranking
    MANIFEST.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return hashes


if __name__ == "__main__":
    write_manifest()
