"""The training job: a few-shot run on a thread, its progress and Stop through a ``Channel``, one at a time.

The run itself is ``dpt_core.fewshot`` (which ``python -m dpt_core train --holdout`` runs too).
"""
from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from dpt_core import fewshot
from dpt_core.backbone import Backbone
from dpt_core.data import LabelledImages
from dpt_core.errors import FewShotError, TrainingStopped
from dpt_core.fewshot import FewShotResult, Phases, TrainSettings
from dpt_core.workflow import ClassSetup

from .job_channel import Channel, MemoryChannel, Status

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the training run (dpt_core.fewshot)

Reporter = Callable[[Status], None]


def run_fewshot(
    where: Backbone | Phases,
    setup: ClassSetup,
    data: LabelledImages,
    settings: TrainSettings,
    out_dir: str | Path,
    data_description: str = "",
    channel: Channel | None = None,
    slice_s: float | None = None,
) -> FewShotResult:
    """``dpt_core.fewshot.run_fewshot`` with its progress and stop carried by a ``Channel``."""
    channel = channel or MemoryChannel()
    return fewshot.run_fewshot(where, setup, data, settings, out_dir, data_description, channel.report,
                               channel.stop_requested, slice_s)


# --------------------------------------------------------------------------- jobs: thread, stop, one at a time

T = TypeVar("T")


class TrainingJob(Generic[T]):
    """Runs ``work(channel)`` on a thread; the UI polls ``status`` and may ``stop()``.

    Stopping is cooperative: the channel's stop flag is polled by ``fit`` before every
    step (and between feature batches), so the work ends at a step boundary with the
    best state so far; no thread or process is ever killed. With a ``lock``, the job
    first waits for it (one training per process) and reports that it is waiting.
    ``channel``: a ``FileChannel`` when steps may run in another process (ZeroGPU).
    """

    def __init__(self, work: Callable[[Channel], T], lock: threading.Lock | None = None,
                 channel: Channel | None = None):
        self._work, self._lock = work, lock
        self.channel: Channel = channel if channel is not None else MemoryChannel()
        self._done = threading.Event()
        self.channel.report(Status("waiting", "Starting..."))
        self.result: T | None = None
        self.error: BaseException | None = None
        # The thread runs in a copy of the caller's context: per-request context (e.g. what
        # ZeroGPU's decorator reads to account GPU time) follows the work onto the thread.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="fewshot-train", daemon=True)

    def start(self) -> TrainingJob[T]:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.channel.request_stop()

    @property
    def stop_requested(self) -> bool:
        return self.channel.stop_requested()

    @property
    def status(self) -> Status:
        return self.channel.status() or Status("waiting", "Starting...")

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (result or error set)."""
        return self._done.wait(timeout)

    def _report(self, status: Status) -> None:
        self.channel.report(status)

    def _run(self) -> None:
        acquired = False
        try:
            if self._lock is not None:
                acquired = self._acquire()
                if not acquired:
                    raise TrainingStopped("Stopped while waiting; nothing was trained.")
            self.result = self._work(self.channel)
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread, which words it
            self.error = exc
        finally:
            if acquired:
                self._lock.release()
            self._done.set()

    def _acquire(self) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self._report(Status("waiting", "Waiting for another training to finish (one at a time)..."))
        while not self.channel.stop_requested():
            if self._lock.acquire(timeout=0.2):
                return True
        return False


class JobRegistry:
    """The job of each session (keyed by Gradio's session hash), so Stop finds it.

    A request waiting in Gradio's queue has no job yet: ``enqueue`` records it, so that
    Stop can cancel it before it starts (``dequeue`` tells the Train handler).
    """

    def __init__(self) -> None:
        self._jobs: dict[str, TrainingJob] = {}
        self._queued: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def enqueue(self, key: str) -> None:
        with self._lock:
            self._queued[key] = threading.Event()

    def dequeue(self, key: str) -> bool:
        """Forget the queued request; True when Stop cancelled it meanwhile."""
        with self._lock:
            flag = self._queued.pop(key, None)
        return flag is not None and flag.is_set()

    def add(self, key: str, job: TrainingJob) -> None:
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and not old.wait(0):
                raise FewShotError("A training of this session is still running; stop it or wait for it.")
            self._jobs[key] = job

    def stop(self, key: str) -> bool:
        """Ask the session's job to stop (or its queued request not to start); False when there is none."""
        with self._lock:
            job = self._jobs.get(key)
            queued = self._queued.get(key)
        if job is not None and not job.wait(0):
            job.stop()
            return True
        if queued is not None:
            queued.set()
            return True
        return False

    def busy(self, key: str) -> bool:
        """Whether this session has a job that has not finished."""
        with self._lock:
            job = self._jobs.get(key)
        return job is not None and not job.wait(0)

    def remove(self, key: str, job: TrainingJob) -> None:
        with self._lock:
            if self._jobs.get(key) is job:
                del self._jobs[key]

    def running(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.wait(0))


JOBS = JobRegistry()
