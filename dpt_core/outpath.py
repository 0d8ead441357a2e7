"""Checks the command line makes before any long work: where the result goes, and what the data lacks.

``train --out`` used to train fully and only then fail on an existing file (losing the
result) or silently replace the README.md and config.json of an unrelated folder. Now
the output path is checked first: it may be new, an empty folder, or (with
``--overwrite``) a previous checkpoint folder, and its parent must be writable.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

CHECKPOINT_FILES = ("config.json", "prompts.safetensors")


class OutPathError(InputError):
    """The output path cannot take a checkpoint; the message says what to do instead."""


def is_checkpoint_folder(path: Path) -> bool:
    """A folder written by this project: both checkpoint files, and a config.json that says so."""
    if not all((path / name).is_file() for name in CHECKPOINT_FILES):
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and "format_version" in config


def check_out_path(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``out`` if a checkpoint may be written there, else OutPathError (nothing is created)."""
    path = Path(out).expanduser()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutPathError(f"--out {out} is an existing file; give a new folder name")
        if any(path.iterdir()):
            if not is_checkpoint_folder(path):
                raise OutPathError(f"--out {out} is a folder with other files in it; give a new or empty folder")
            if not overwrite:
                raise OutPathError(f"--out {out} already holds a checkpoint; add --overwrite to replace it")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutPathError(f"--out {out}: the folder is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():  # the first existing ancestor must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        raise OutPathError(f"--out {out}: {parent.name or parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutPathError(f"--out {out}: cannot create the folder there (no write permission)")
    return path


def empty_classes(class_names: Sequence[str], labels: Sequence[int]) -> list[str]:
    """Names of the classes with no image among ``labels`` (label ids into ``class_names``)."""
    present = set(labels)
    return [name for i, name in enumerate(class_names) if i not in present]


def error_line(exc: BaseException) -> str:
    """One line for ``error: …``: the message's first line, or the type when it has none."""
    text = " ".join(str(exc).split("\n", 1)[0].split())
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply"
    if isinstance(exc, MemoryError):
        return "out of memory"
    return text or type(exc).__name__
