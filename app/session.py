"""Per-session state: one plain dict in one ``gr.State`` (created in ``app.main``).

``{"dir": <per-session temp dir path>, "trained": {label: checkpoint folder path}}``

- ``dir`` is a fresh path under one process-wide base folder; it is created only
  when something needs it (``session_dir``), so most sessions never touch disk.
- ``cleanup_session_state`` deletes it; ``app.main`` registers it both as the
  State's ``delete_callback`` and for ``demo.unload`` (tab closed), and the whole
  base folder is removed when the process exits.
- Handlers that call ``session_dir`` or ``add_trained`` must return the state as
  an output, so that Gradio records it for this session (and deletes it later).

No gradio import here: these are plain functions over a dict.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from .cleanup import owned_temp_root

log = logging.getLogger(__name__)

_BASE: Path | None = None
_BASE_LOCK = threading.Lock()

SessionState = dict[str, Any]


def _base_dir() -> Path:
    """One private folder per process for all session folders; removed at exit."""
    global _BASE
    with _BASE_LOCK:
        if _BASE is None or not _BASE.is_dir():
            # Inside the process's own folder, which the next start sweeps if this process is killed.
            _BASE = Path(tempfile.mkdtemp(prefix="dpt-sessions-", dir=owned_temp_root()))  # mode 0700
            atexit.register(shutil.rmtree, _BASE, True)
        return _BASE


def new_session_state() -> SessionState:
    """A new session's state; its folder is named now and created on first use."""
    return {"dir": str(_base_dir() / uuid.uuid4().hex), "trained": {}}


def session_dir(state: SessionState) -> Path:
    """The session's private folder (created when first asked for)."""
    if not state.get("dir"):
        state["dir"] = str(_base_dir() / uuid.uuid4().hex)
    path = Path(state["dir"])
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def add_trained(state: SessionState, label: str, folder: str | Path) -> SessionState:
    """Record a checkpoint trained in this session; a repeated label gets a numbered suffix."""
    trained = state.setdefault("trained", {})
    unique, k = label, 2
    while unique in trained and trained[unique] != str(folder):
        unique, k = f"{label} ({k})", k + 1
    trained[unique] = str(folder)
    return state


def trained_checkpoints(state: SessionState | None) -> dict[str, str]:
    """label -> folder of this session's checkpoints that still exist on disk."""
    if not state:
        return {}
    return {label: path for label, path in state.get("trained", {}).items() if Path(path).is_dir()}


def cleanup_session_state(state: SessionState | None) -> None:
    """Delete the session's folder and forget its checkpoints (idempotent, never raises)."""
    if not state:
        return
    folder = state.get("dir")
    state["trained"] = {}
    if not folder or not Path(folder).exists():
        return
    # Only ever delete inside our own base folder, whatever ended up in the dict.
    if _BASE is None or not Path(folder).resolve().is_relative_to(_BASE.resolve()):
        log.warning("not removing a session folder outside the session base folder")
        return
    shutil.rmtree(folder, ignore_errors=True)
    log.info("session folder removed")


# Sessions by Gradio's session hash, so that the page's unload event (which gets no inputs)
# finds the folder to delete through public API only (``gr.Request.session_hash``).
_BY_KEY: dict[str, SessionState] = {}
_BY_KEY_LOCK = threading.Lock()


def start_session(key: str | None) -> SessionState:
    """A new session's state, remembered under ``key`` until ``end_session``."""
    state = new_session_state()
    if key:
        with _BY_KEY_LOCK:
            _BY_KEY[key] = state
    return state


def end_session(key: str | None) -> None:
    """The tab closed: delete the session's folder now (the State's delete callback comes much later)."""
    with _BY_KEY_LOCK:
        state = _BY_KEY.pop(key, None) if key else None
    cleanup_session_state(state)
