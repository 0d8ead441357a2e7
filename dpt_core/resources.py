"""Where the library's data lives: presets, description banks, the checkpoint registry.

Installed (``pip install .``), the repository's ``assets/`` and ``checkpoints/`` folders
are shipped inside the package as ``dpt_core/assets`` and ``dpt_core/checkpoints``
(``pyproject.toml`` maps them) and are found through ``importlib.resources``. In a source
checkout the package has no such folders, and the same names resolve to the
repository's own folders next to the package. Every data path of the library comes
from here, so nothing else guesses where the files are.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _data_dir(name: str) -> Path:
    packaged = Path(str(resources.files(__package__) / name))
    if packaged.is_dir():  # an installed copy (wheel or editable build with the mapping)
        return packaged
    return Path(__file__).resolve().parent.parent / name  # a source checkout: the repository's folder


ASSETS_DIR = _data_dir("assets")
CHECKPOINTS_DIR = _data_dir("checkpoints")

__all__ = ["ASSETS_DIR", "CHECKPOINTS_DIR"]
