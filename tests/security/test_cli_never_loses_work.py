"""Threat: the command line trains for minutes and then loses the result, or replaces the user's files.

``train --out`` an existing file trained fully and then died with a traceback; an existing
folder had its README.md and config.json silently replaced; ``import-dassl`` on a missing
file printed a traceback. Now ``--out`` is checked before any work, and every error is one
``error: …`` line with exit status 1.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as run
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["glioma_tumor", "meningioma_tumor", "pituitary_tumor", "normal_brain"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def train_args(images, out, *extra):
    return ["train", "--backbone", "tiny", "--preset", "btmri", "--data", images, "--shots", "1",
            "--epochs", "1", "--views", "1", "--out", out, *extra]


def assert_one_error_line(code, err):
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in err


def test_out_an_existing_file_is_refused_before_training(capsys, images, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = run(capsys, *train_args(images, target))
    assert_one_error_line(code, err)
    assert "existing file" in err and "training on" not in err  # nothing was trained
    assert target.read_text() == "mine"


def test_out_a_folder_of_other_files_is_left_alone(capsys, images, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "README.md").write_text("my readme")
    (folder / "config.json").write_text("{}")
    code, _, err = run(capsys, *train_args(images, folder, "--overwrite"))
    assert_one_error_line(code, err)
    assert "other files" in err
    assert (folder / "README.md").read_text() == "my readme" and (folder / "config.json").read_text() == "{}"


def test_out_under_a_file_is_refused(capsys, images, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, *train_args(images, tmp_path / "file" / "ck"))
    assert_one_error_line(code, err)
    assert "cannot be created" in err


def test_a_previous_checkpoint_needs_overwrite(capsys, images, tmp_path):
    out = tmp_path / "ck"
    assert run(capsys, *train_args(images, out))[0] == 0
    before = (out / "prompts.safetensors").read_bytes()
    code, _, err = run(capsys, *train_args(images, out, "--seed", "2"))
    assert_one_error_line(code, err)
    assert "--overwrite" in err and (out / "prompts.safetensors").read_bytes() == before
    code, _, _ = run(capsys, *train_args(images, out, "--seed", "2", "--overwrite"))
    assert code == 0 and (out / "prompts.safetensors").read_bytes() != before


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"), ("--seed", str(10**30)), ("--kl", "nan")])
def test_non_finite_settings_fail_before_training(capsys, images, tmp_path, flag, value):
    code, _, err = run(capsys, *train_args(images, tmp_path / "ck", flag, value))
    assert_one_error_line(code, err)
    assert "training on" not in err and not (tmp_path / "ck").exists()


def test_empty_class_folders_are_named(capsys, images, tmp_path):
    data = tmp_path / "data"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
        if name != "pituitary_tumor":
            for src in (images / name).iterdir():
                (data / name / src.name).write_bytes(src.read_bytes())
    code, _, err = run(capsys, *train_args(data, tmp_path / "ck"))
    assert_one_error_line(code, err)
    assert "pituitary_tumor" in err or "pituitary tumor" in err


@pytest.mark.parametrize("make", ["missing", "folder"])
def test_import_dassl_on_a_missing_file_or_a_folder(capsys, tmp_path, make):
    target = tmp_path / "model.pth.tar-100"
    if make == "folder":
        target.mkdir()
    code, _, err = run(capsys, "import-dassl", target, "--preset", "busi", "--out", tmp_path / "out")
    assert_one_error_line(code, err)
    assert "no such file" in err


def test_unexpected_errors_are_one_line_too():
    # A real process: what a user sees in the terminal, exit status included.
    done = subprocess.run([sys.executable, "-m", "dpt_core", "aggregate", "/nonexistent-folder-for-sure"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
