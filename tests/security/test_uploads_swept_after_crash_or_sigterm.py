"""Threat: visitors' files (DICOMs with patient names, zips, checkpoints) left on disk for good.

After ``kill -9`` and a restart, and after a plain ``kill`` (SIGTERM, what systemd and docker
send), a process's session folders and Gradio uploads were never removed. Now each process
keeps them in its own folder, removed on exit and on SIGTERM, and swept by the next start
when the process is gone (``app.cleanup``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import cleanup

REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_folders_of_dead_processes_only(tmp_path):
    dead = tmp_path / f"{cleanup.ROOT_PREFIX}{dead_pid()}-12345"
    (dead / "sessions" / "abc").mkdir(parents=True)
    (dead / "gradio" / "upload.dcm").parent.mkdir(parents=True)
    (dead / "gradio" / "upload.dcm").write_bytes(b"patient data")
    me = os.getpid()
    mine = tmp_path / f"{cleanup.ROOT_PREFIX}{me}-{cleanup._start_ticks(me) or 0}"
    mine.mkdir()
    parent = os.getppid()  # alive, but the start time recorded does not match: a reused pid
    reused = tmp_path / f"{cleanup.ROOT_PREFIX}{parent}-1"
    reused.mkdir()
    unrelated = tmp_path / "someone-elses-folder"
    unrelated.mkdir()
    cleanup.sweep_leftovers(1800, temp_dir=tmp_path)
    assert not dead.exists() and mine.exists() and unrelated.exists()
    assert not reused.exists() or cleanup._start_ticks(parent) is None


def test_sweep_honours_retention_in_an_operator_upload_folder(tmp_path):
    uploads = tmp_path / "gradio"
    old, new = uploads / "old", uploads / "new"
    old.mkdir(parents=True)
    new.mkdir()
    (old / "scan.dcm").write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    legacy = tmp_path / f"{cleanup.LEGACY_SESSION_PREFIX}xyz"
    legacy.mkdir()
    os.utime(legacy, (hour_ago, hour_ago))
    cleanup.sweep_leftovers(1800, temp_dir=tmp_path, gradio_dir=uploads)
    assert not old.exists() and new.exists() and not legacy.exists()


def test_session_folders_live_in_the_process_folder():
    from app.session import cleanup_session_state, new_session_state, session_dir

    state = new_session_state()
    folder = session_dir(state)
    assert folder.is_relative_to(cleanup.owned_temp_root())
    cleanup_session_state(state)
    assert not folder.exists()


# ---------------------------------------------------------------------------- real processes

def start_app(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_TEMP_DIR", None)
    return subprocess.Popen([sys.executable, "app.py", "--backbone", "tiny", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_up(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the app did not start")


def upload(url: str) -> Path:
    import httpx

    r = httpx.post(f"{url}/gradio_api/upload", files={"files": ("patient_scan.dcm", b"DICM patient data")}, timeout=30)
    r.raise_for_status()
    return Path(r.json()[0])


def owned_folders(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob(f"{cleanup.ROOT_PREFIX}*"))


@pytest.mark.slow
def test_kill_9_leftovers_are_swept_by_the_next_start_and_sigterm_cleans_up(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    first = start_app(tmp_path, port)
    try:
        wait_up(first, url)
        uploaded = upload(url)
        [folder] = owned_folders(tmp_path)
        assert uploaded.is_file() and uploaded.is_relative_to(folder)
        first.send_signal(signal.SIGKILL)  # no chance to clean anything
        first.wait(30)
        assert uploaded.is_file()  # the crash left the upload behind ...

        second = start_app(tmp_path, port)
        try:
            wait_up(second, url)
            assert not folder.exists()  # ... and the next start swept it
            upload(url)
            [folder2] = owned_folders(tmp_path)
            second.send_signal(signal.SIGTERM)  # a plain `kill`
            assert second.wait(60) == 0
            assert not folder2.exists() and owned_folders(tmp_path) == []
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()


def test_a_forked_worker_never_removes_the_servers_folder():
    # On ZeroGPU every model call runs in a process forked from the server; it inherits atexit.
    root = cleanup.owned_temp_root()
    pid = os.fork()
    if pid == 0:  # the child runs the inherited exit handler, then leaves without the others
        cleanup.remove_owned_root()
        os._exit(0)
    os.waitpid(pid, 0)
    assert root.is_dir()


def test_zip_imports_of_sessions_that_never_end_are_swept_by_age(tmp_path):
    """A queue-protocol client never closes its page, so its session never ends: the images extracted
    from its zip still go once they are older than the retention time."""
    import os
    import time

    from app.cleanup import IMPORTS_GLOB, sweep_stale

    old = tmp_path / "dpt-sessions-x" / "session1" / "zip-imports" / "1"
    new = tmp_path / "dpt-sessions-x" / "session2" / "zip-imports" / "2"
    checkpoint = tmp_path / "dpt-sessions-x" / "session1" / "fewshot" / "ck"
    for folder in (old, new, checkpoint):
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(b"x")
    past = time.time() - 3600
    for path in (old, checkpoint):
        os.utime(path, (past, past))
    assert sweep_stale(tmp_path, IMPORTS_GLOB, 1800) == 1
    assert not old.exists() and new.exists() and checkpoint.exists()  # only imports past the retention time
