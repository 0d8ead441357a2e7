"""A trained checkpoint leaves the session: its folder, the zip download, the model card text, the Hub push.

Files go under the session's folder, which the app deletes when the session ends; a
checkpoint holds prompt tensors only (see ``tensor_names``).
"""
from __future__ import annotations

import logging
import shutil
import time
import uuid
import zipfile
from pathlib import Path

from dpt_core.checkpoint import CheckpointError, read_folder, write_checkpoint
from dpt_core.errors import FewShotError
from dpt_core.hub import HubError, push_folder, valid_repo_id
from dpt_core.limits import check_data_description

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- export

def new_checkpoint_dir(session_dir: str | Path, preset: str | None) -> Path:
    """A fresh folder name under the session's folder (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(session_dir) / "fewshot" / f"biomed-dpt-{preset or 'custom'}-{stamp}-{uuid.uuid4().hex[:6]}"


def zip_checkpoint(folder: str | Path, dest: str | Path | None = None) -> Path:
    """The checkpoint folder as ``<folder name>.zip`` (next to it unless ``dest``), files inside ``<name>/``."""
    folder = Path(folder)
    dest = Path(dest) if dest else folder.with_suffix(".zip")
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.name}")
    return dest


def set_data_description(folder: str | Path, text: str) -> None:
    """Rewrite config.json and the model card with a new training-data description."""
    text = check_data_description(text)  # before reading: an oversized text costs nothing
    try:
        ckpt = read_folder(folder)
    except CheckpointError as exc:
        raise FewShotError(f"The checkpoint cannot be read any more ({exc}).") from None
    ckpt.config["data_description"] = text
    write_checkpoint(ckpt, folder)


def tensor_names(folder: str | Path) -> dict[str, list[int]]:
    """Tensor names and shapes in a checkpoint's prompts.safetensors (what leaves the session)."""
    return {k: list(v.shape) for k, v in read_folder(folder).tensors.items()}


def push_checkpoint(folder: str | Path, repo_id: str, token: str | None, private: bool = True) -> str:
    """Upload the folder with its model card; returns the repo URL. The token is never stored or logged."""
    repo_id = (repo_id or "").strip()
    if not token:
        raise FewShotError("Pushing needs a Hugging Face token with write access (or log in on Spaces).")
    if not valid_repo_id(repo_id):  # checked here too, to word it for the form
        raise FewShotError("Name the repository as ORG/NAME, e.g. your-name/biomed-dpt-btmri.")
    try:
        return push_folder(folder, repo_id, token=token, private=private)
    except HubError as exc:
        raise FewShotError(f"Push failed: {exc}.") from None


def clear_dir(path: str | Path) -> None:
    """Remove a folder of this session (old zip imports); missing is fine."""
    shutil.rmtree(path, ignore_errors=True)
