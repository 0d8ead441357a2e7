"""The shipped examples: their list, their sources and licences, and telling them apart from uploads.

A prediction on a shipped example with a shipped configuration (a preset's own classes
and descriptions, the zero-shot prompt or a Hub checkpoint) holds nothing of any user's,
so it may be kept for everyone: ``Services.predict_example`` caches it lazily (computed
on first use, served from memory afterwards; on ZeroGPU that saves a GPU call per click).
Uploads, edited tables and checkpoints trained in a session are never cached.
Whether an image *is* a shipped example is decided by its content (size, then
SHA-256), not by its name or path, because Gradio hands handlers a copy of the file.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from dpt_core.data import file_sha256
from dpt_core.presets import ASSETS_DIR

from . import formatting as fmt

log = logging.getLogger(__name__)

EXAMPLES_DIR = ASSETS_DIR / "examples"


def load_examples() -> list[dict[str, Any]]:
    path = EXAMPLES_DIR / "examples.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("no usable examples.json; the examples gallery is empty")
        return []


def examples_markdown(examples: list[dict[str, Any]]) -> str:
    rows = ["| Example | Modality | Source | Licence |", "|---|---|---|---|"]
    for e in examples:
        cells = [e.get("title", ""), e.get("modality", ""), e.get("source", ""), e.get("licence", "")]
        rows.append("| " + " | ".join(fmt.escape(c).replace("|", "/") for c in cells) + " |")
    return ("Demonstration inputs only: none is from the presets' datasets and the output on them "
            "has no diagnostic meaning.\n\n" + "\n".join(rows))


class ShippedExamples:
    """Recognises the files of ``examples.json`` (PNG and DICOM originals) by content."""

    def __init__(self, examples: list[dict[str, Any]] | None = None, folder: Path = EXAMPLES_DIR):
        self._files = [folder / f for e in (examples if examples is not None else load_examples())
                       for f in (e.get("file"), e.get("dicom")) if f]
        self._index: dict[tuple[int, str], str] | None = None  # (size, sha256) -> file name
        self._lock = threading.Lock()

    def _build(self) -> dict[tuple[int, str], str]:
        with self._lock:
            if self._index is None:
                index = {}
                for f in self._files:
                    try:
                        index[(f.stat().st_size, file_sha256(f))] = f.name
                    except OSError:
                        log.warning("example file missing: %s", f.name)
                self._index = index
            return self._index

    def match(self, path: str | Path | None) -> str | None:
        """The example's file name when ``path`` has the content of a shipped example, else None."""
        if not path:
            return None
        index = self._build()
        try:
            size = os.path.getsize(path)
            if not any(s == size for s, _ in index):
                return None  # most uploads end here, unhashed
            return index.get((size, file_sha256(path)))
        except OSError:
            return None
