"""Threat: a small archive that inflates into gigabytes when the server reads it.

A 408 KB ``.pth.tar`` whose ``data.pkl`` was inflated whole before parsing took the server
from 1.0 to 1.75 GB; ``hf-hub:…/*.pth.tar`` ids reach the same reader. Every member is now
read with a cap before it is parsed. The app's zip import checks sizes and ratios before
writing anything.
"""
from __future__ import annotations

import tracemalloc
import zipfile
from collections import OrderedDict

import pytest
import torch

from dpt_core.checkpoint import load_checkpoint
from dpt_core.dassl_import import (
    MAX_PICKLE_BYTES,
    CheckpointFormatError,
    read_dassl_context,
)


def bomb_checkpoint(path, member: str = "archive/data.pkl", size: int = MAX_PICKLE_BYTES + 2**20):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(member, b"\x80\x02" + bytes(size))
        zf.writestr("archive/byteorder", b"little")
    return path


def test_inflating_data_pkl_is_refused_without_reading_it(tmp_path):
    path = bomb_checkpoint(tmp_path / "model.pth.tar-100")
    assert path.stat().st_size < 200_000  # small on disk ...
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointFormatError, match="larger than"):
            read_dassl_context(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # ... and never inflated in memory
    with pytest.raises(ValueError, match="larger than") as err:  # the checkpoint loader says the same
        load_checkpoint(str(path), preset="btmri")
    assert str(tmp_path) not in str(err.value)


def test_oversized_byteorder_record_is_refused(tmp_path):
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": OrderedDict(ctx=torch.randn(4, 8))}, path)
    with zipfile.ZipFile(path, "a") as zf:
        prefix = zf.namelist()[0].split("/")[0]
        names = zf.namelist()
    # Rebuild the archive with a byteorder record far over its cap.
    rebuilt = tmp_path / "rebuilt.pth.tar"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_DEFLATED) as dst:
        for n in names:
            data = b"little" + b" " * 2**20 if n == f"{prefix}/byteorder" else src.read(n)
            dst.writestr(n, data)
    with pytest.raises(CheckpointFormatError, match="byteorder"):
        read_dassl_context(rebuilt)


def test_error_messages_name_the_file_not_the_server_folder(tmp_path):
    path = bomb_checkpoint(tmp_path / "model.pth.tar-100")
    with pytest.raises(CheckpointFormatError) as err:
        read_dassl_context(path)
    assert str(tmp_path) not in str(err.value)


def test_zip_bomb_upload_is_refused_before_writing(tmp_path):
    from app.zip_import import import_zip
    from dpt_core.errors import FewShotError

    upload = tmp_path / "upload.zip"
    with zipfile.ZipFile(upload, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("glioma/a.png", bytes(300 * 2**20))  # 300 MB of zeros in ~300 KB
    dest = tmp_path / "dest"
    with pytest.raises(FewShotError, match="unpacks to|zip bomb"):
        import_zip(upload, ["glioma", "normal"], dest)
    assert not dest.exists()
