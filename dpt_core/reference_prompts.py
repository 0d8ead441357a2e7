"""Convert the reference code's teacher sentences into a descriptions file - without running that code.

For exact reproduction the teacher must see the reference's own sentences: its
``trainers/prompt_templates.py`` holds a ``BIOMEDDPT_TEMPLATES`` dict
``{class name: [sentence, ...]}`` and the reference takes the first 50 per
class (its ``N_PROMPTS``). The user downloads that file; this module parses it
with ``ast`` and reads only the literal value of that one assignment - the
file is never imported or executed - matches the keys to our presets' class
names (``_`` -> space, case folding) and returns our descriptions format. The
sentences are not shipped with this project.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from .descriptions import DescriptionsError, class_key
from .presets import list_presets, load_preset

REFERENCE_DICT = "BIOMEDDPT_TEMPLATES"
N_PROMPTS = 50  # the reference's TRAINER.BIOMEDDPT.N_PROMPTS


def _literal_dict(tree: ast.Module, name: str, source: str) -> dict:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)  # literals only: nothing is evaluated
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
                raise DescriptionsError(f"{source}: {name} is not a plain literal dict ({exc})") from None
            if not isinstance(value, dict):
                raise DescriptionsError(f"{source}: {name} is not a dict")
            return value
    raise DescriptionsError(f"{source}: no top-level assignment to {name}")


def _flatten(value: dict, source: str) -> dict[str, list[str]]:
    """``{class: [sentences]}``; a dict of such dicts (one per dataset) is merged."""
    out: dict[str, list[str]] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flatten(item, source))
        elif isinstance(item, (list, tuple)) and all(isinstance(s, str) for s in item):
            out[str(key)] = [" ".join(s.split()) for s in item if s.strip()]
        else:
            raise DescriptionsError(f"{source}: the entry {key!r} is not a list of sentences")
    return out


def our_class_names(preset: str | None = None) -> dict[str, str]:
    """``class_key -> class name`` over one preset, or over all shipped presets."""
    names: dict[str, str] = {}
    for p in [preset] if preset else list_presets():
        for c in load_preset(p).classes:
            names.setdefault(class_key(c), c)
    return names


def import_reference_descriptions(path: str | Path, preset: str | None = None,
                                  n_prompts: int = N_PROMPTS) -> tuple[dict[str, list[str]], list[str]]:
    """(descriptions under our class names, the reference's keys that match none of them).

    Unmatched keys are left out; with ``preset`` only that preset's classes are kept.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=path.name)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise DescriptionsError(f"cannot parse {path.name}: {exc}") from None
    reference = _flatten(_literal_dict(tree, REFERENCE_DICT, path.name), path.name)
    ours = our_class_names(preset)
    bank: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for key, sentences in reference.items():
        name = ours.get(class_key(key))
        if name is None:
            unmatched.append(key)
        elif sentences:
            bank[name] = sentences[:n_prompts]
    if not bank:
        raise DescriptionsError(f"{path.name}: no key of {REFERENCE_DICT} matches a class of "
                                f"{preset or 'any preset'}")
    return bank, unmatched


def summary(bank: dict[str, Any]) -> str:
    return f"{len(bank)} classes, {sum(len(v) for v in bank.values())} sentences"
