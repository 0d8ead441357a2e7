"""Packaging and lint: ``pip install .`` ships dpt_core with its data; ruff is clean."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (requirements-dev.txt)")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]


@pytest.mark.slow
def test_wheel_ships_the_data_and_finds_it_through_the_package(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for name in ("dpt_core", "assets", "checkpoints"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "examples"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PIP_NO_INDEX": "1"})
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert {"dpt_core/assets/presets/btmri.json", "dpt_core/checkpoints/registry.json",
            "dpt_core/cli.py"} <= names
    assert not any(n.startswith("app/") or n.startswith("dpt_core/assets/examples/") for n in names)
    # Imported from the unpacked wheel, far from the repository: the data comes from the package.
    code = ("from dpt_core.presets import PRESETS_DIR, load_preset; from dpt_core.registry import REGISTRY_PATH;"
            "import dpt_core; print(PRESETS_DIR); print(REGISTRY_PATH); print(load_preset('btmri').classes[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr[-2000:]
    presets_dir, registry, first = out.stdout.split("\n")[:3]
    site = str(tmp_path / "site")
    assert presets_dir.startswith(site) and registry.startswith(site) and first == "glioma tumor"
