"""Progress and stop requests between a running job and the page that watches it.

A few-shot training reports its progress and polls for a stop request at every step.
In the server process a ``MemoryChannel`` carries both. On a ZeroGPU Space the steps
run in a worker process that the server reaches only by pickle, so neither a
``threading.Event`` nor a callback into the server can get there; a ``FileChannel``
can: it is a folder path (it pickles), the stop request is a file, and the latest
status is a small JSON file replaced atomically. Both have the same four methods.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from dpt_core.fewshot import Status

__all__ = ["Channel", "FileChannel", "MemoryChannel", "Status"]


class Channel(Protocol):
    def report(self, status: Status) -> None: ...

    def status(self) -> Status | None: ...

    def request_stop(self) -> None: ...

    def stop_requested(self) -> bool: ...


class MemoryChannel:
    """The channel of a job whose every step runs in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: Status | None = None
        self._stop = threading.Event()

    def report(self, status: Status) -> None:
        with self._lock:
            self._status = status

    def status(self) -> Status | None:
        with self._lock:
            return self._status

    def request_stop(self) -> None:
        self._stop.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()


class FileChannel:
    """The channel of a job whose steps may run in another process on this machine.

    Per-step training reports are written at most once per ``min_interval_s`` (a GPU
    step takes milliseconds); every other report is written. The folder belongs to the
    session, so it goes when the session does.
    """

    def __init__(self, folder: str | Path, min_interval_s: float = 0.25):
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.min_interval_s = min_interval_s
        self._last: tuple[str | None, float] = (None, 0.0)

    @property
    def _stop_file(self) -> Path:
        return self.folder / "stop"

    @property
    def _status_file(self) -> Path:
        return self.folder / "status.json"

    def report(self, status: Status) -> None:
        now = time.monotonic()
        phase, last = self._last
        if status.phase == phase == "training" and now - last < self.min_interval_s:
            return
        self._last = (status.phase, now)
        tmp = self.folder / f"status.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(json.dumps(asdict(status)))
            os.replace(tmp, self._status_file)  # readers see the old or the new file, never half of one
        except OSError:
            pass  # the session folder went away (tab closed): nobody is watching any more

    def status(self) -> Status | None:
        try:
            return Status(**json.loads(self._status_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def request_stop(self) -> None:
        try:
            self._stop_file.touch()
        except OSError:
            pass

    def stop_requested(self) -> bool:
        # A vanished folder means the session ended: nobody would receive the result.
        return self._stop_file.exists() or not self.folder.is_dir()
