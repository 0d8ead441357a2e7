"""Where the app keeps visitors' files on disk, and how they are removed even after a crash.

Each app process owns one private folder, ``<tmp>/dpt-app-<pid>-<start>/``, holding the
session folders (``sessions/``: zip imports, trained checkpoints) and, unless the
operator set ``GRADIO_TEMP_DIR``, Gradio's uploads (``gradio/``). The folder is removed:

* at a normal exit (``atexit``), and on SIGTERM — what systemd, docker and a plain
  ``kill`` send — which is turned into the same graceful shutdown as Ctrl-C;
* by the next start of the app, when the process that owned it is gone (``kill -9``,
  a crash, a power cut): ``sweep_leftovers`` removes the folders of dead processes, and
  in an operator-chosen ``GRADIO_TEMP_DIR`` everything older than the retention time.

No gradio import here: plain functions over folders and signals.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT_PREFIX = "dpt-app-"
_ROOT_NAME = re.compile(rf"{re.escape(ROOT_PREFIX)}(\d+)-(\d+)")
LEGACY_SESSION_PREFIX = "dpt-sessions-"  # session bases of versions before the per-process folder

_root: Path | None = None
_owner_pid = 0  # the process that created _root: a forked worker inherits atexit handlers, not the folder
_lock = threading.Lock()


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), so a reused pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 counted after the ")" that ends the command name (which may itself hold spaces).
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _alive(pid: int, start: int) -> bool:
    ticks = _start_ticks(pid)
    if ticks is not None:
        return ticks == start
    if Path("/proc").is_dir():  # Linux, and no such process
        return False
    try:  # elsewhere: whether the pid exists at all
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_temp_root() -> Path:
    """This process's private folder (mode 0700), created on first use and removed at exit."""
    global _root, _owner_pid
    with _lock:
        if _root is None or not _root.is_dir():
            pid = os.getpid()
            path = Path(tempfile.gettempdir()) / f"{ROOT_PREFIX}{pid}-{_start_ticks(pid) or 0}"
            path.mkdir(mode=0o700, exist_ok=True)
            _root, _owner_pid = path, pid
            atexit.register(remove_owned_root)
        return _root


def remove_owned_root() -> None:
    """Delete this process's folder (idempotent, never raises; a forked child leaves it alone)."""
    if _root is not None and os.getpid() == _owner_pid:
        shutil.rmtree(_root, ignore_errors=True)


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:  # another user's folder, a busy file: leave it, say so
        log.warning("could not remove a leftover temporary item (%s)", type(exc).__name__)
        return False


def _older_than(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.lstat().st_mtime > seconds
    except OSError:
        return False


def sweep_leftovers(retention_s: float, temp_dir: str | os.PathLike | None = None,
                    gradio_dir: str | os.PathLike | None = None) -> int:
    """Remove what earlier processes of this app left behind; returns how many items went.

    * ``dpt-app-<pid>-<start>`` folders whose process is gone (whatever their age);
    * legacy ``dpt-sessions-*`` folders older than ``retention_s``;
    * entries of ``gradio_dir`` (an operator-chosen Gradio upload folder) older than ``retention_s``.
    """
    tmp = Path(temp_dir or tempfile.gettempdir())
    now, removed = time.time(), 0
    me = os.getpid()
    for path in tmp.glob(f"{ROOT_PREFIX}*"):
        m = _ROOT_NAME.fullmatch(path.name)
        if m and int(m[1]) != me and not _alive(int(m[1]), int(m[2])):
            removed += _remove(path)
    for path in tmp.glob(f"{LEGACY_SESSION_PREFIX}*"):
        if _older_than(path, retention_s, now):
            removed += _remove(path)
    if gradio_dir and Path(gradio_dir).is_dir():
        for path in Path(gradio_dir).iterdir():
            if _older_than(path, retention_s, now):
                removed += _remove(path)
    if removed:
        log.info("removed %d leftover temporary item(s) of earlier runs", removed)
    return removed


IMPORTS_GLOB = "dpt-sessions-*/*/zip-imports/*"  # images extracted from zips, per session, per import


def sweep_stale(root: Path, pattern: str, max_age_s: float) -> int:
    """Remove the items under ``root`` matching ``pattern`` that are older than ``max_age_s``."""
    now = time.time()
    return sum(_remove(p) for p in list(root.glob(pattern)) if _older_than(p, max_age_s, now))


def start_import_sweeper(interval_s: float, retention_s: float) -> threading.Thread:
    """Every ``interval_s``, remove zip imports older than ``retention_s`` from this process's sessions.

    A session's folder goes when its page closes, but a client of the queue protocol never
    closes a page (no heartbeat, no unload): its uploaded images must still go on time. The
    cards already hold Gradio's own copies, which Gradio's cache sweep removes the same way."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                if removed := sweep_stale(owned_temp_root(), IMPORTS_GLOB, retention_s):
                    log.info("removed %d zip import(s) past the retention time", removed)
            except Exception:  # noqa: BLE001 - a sweep must never take the server down
                log.exception("zip-import sweep failed")

    thread = threading.Thread(target=loop, name="import-sweeper", daemon=True)
    thread.start()
    return thread


def use_owned_upload_folder() -> Path:
    """Point Gradio's uploads into this process's folder, unless the operator chose a folder."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return Path(os.environ["GRADIO_TEMP_DIR"])
    folder = owned_temp_root() / "gradio"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def _on_sigterm(signum: int, _frame: object) -> None:
    # The same path as Ctrl-C: Gradio closes its server, then atexit removes our folder.
    log.info("SIGTERM received: shutting down")
    raise KeyboardInterrupt


def install_sigterm_handler() -> None:
    """SIGTERM becomes a graceful shutdown (only possible from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def prepare(retention_s: float) -> None:
    """At start, before Gradio is built: sweep leftovers, own the upload folder, handle SIGTERM."""
    explicit = os.environ.get("GRADIO_TEMP_DIR")
    sweep_leftovers(retention_s, gradio_dir=explicit)
    use_owned_upload_folder()
    install_sigterm_handler()
