"""The one job runner: few-shot trainings on a process-wide single-worker executor.

One worker thread means one training at a time per process; the others wait in the
executor's queue, each with a ``Job`` that says it is queued and can be stopped there.
A job's progress and its Stop travel through the session's ``Channel``
(``app.job_channel``): a ``FileChannel`` when steps run in another process (ZeroGPU).
Prediction never goes through this runner, so other users keep predicting meanwhile.
The run itself is ``dpt_core.fewshot`` (which ``python -m dpt_core train --holdout`` runs too).
"""
from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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

T = TypeVar("T")
STARTING = "Starting..."
QUEUED = "Waiting for another training to finish (one at a time)..."
MAX_WAITING = 16  # jobs queued behind the running one; more is refused rather than held in memory


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


class Job(Generic[T]):
    """One submitted ``work(channel)``: queued, then running, then done (``result`` or ``error``).

    Stopping is cooperative: a queued job is cancelled before it starts; a running one
    sees the channel's stop flag (polled by ``fit`` before every step) and ends at a step
    boundary with the best state so far. No thread or process is ever killed.
    """

    def __init__(self, work: Callable[[Channel], T], channel: Channel):
        self._work = work
        self.channel = channel
        self.result: T | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._future: Future | None = None

    @property
    def state(self) -> str:
        """``queued``, ``running`` or ``done``."""
        return "done" if self._done.is_set() else "running" if self._started.is_set() else "queued"

    @property
    def status(self) -> Status:
        return self.channel.status() or Status("waiting", STARTING)

    @property
    def stop_requested(self) -> bool:
        return self.channel.stop_requested()

    def stop(self) -> None:
        self.channel.request_stop()
        if self._future is not None and self._future.cancel():  # still queued: it never starts
            self._finish(error=TrainingStopped("Stopped while waiting; nothing was trained."))

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (result or error set)."""
        return self._done.wait(timeout)

    def _run(self) -> None:
        self._started.set()
        try:
            if self.channel.stop_requested():  # stopped (or its session gone) just before its turn
                raise TrainingStopped("Stopped while waiting; nothing was trained.")
            self.channel.report(Status("waiting", STARTING))
            self._finish(result=self._work(self.channel))
        except BaseException as exc:  # noqa: BLE001 - handed to the page's handler, which words it
            self._finish(error=exc)

    def _finish(self, result: T | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()


class JobRunner:
    """The executor plus each session's job (keyed by Gradio's session hash), so Stop finds it.

    Between the quick checks of a Train click and the job's submission, a session is
    ``reserve``d: a Stop then cancels the run before anything is submitted (``claim``).
    """

    def __init__(self, max_waiting: int = MAX_WAITING) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fewshot-train")
        self.max_waiting = max_waiting
        self._jobs: dict[str, Job] = {}
        self._reserved: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, work: Callable[[Channel], T], channel: Channel | None = None) -> Job[T]:
        """Queue ``work`` for the session ``key``; FewShotError when that session already has a job."""
        job: Job[T] = Job(work, channel if channel is not None else MemoryChannel())
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and not old.wait(0):
                raise FewShotError("A training of this session is still running; stop it or wait for it.")
            active = self._active()
            if active > self.max_waiting:
                raise FewShotError("Too many trainings are waiting on this server; try again later.")
            self._jobs[key] = job
            job.channel.report(Status("waiting", QUEUED if active else STARTING))
            # The worker runs in a copy of the caller's context: per-request context (e.g. what
            # ZeroGPU's decorator reads to account GPU time) follows the work onto the thread.
            job._future = self._executor.submit(contextvars.copy_context().run, job._run)
        return job

    def reserve(self, key: str) -> None:
        with self._lock:
            self._reserved[key] = threading.Event()

    def claim(self, key: str) -> bool:
        """Forget the reservation; True when Stop cancelled it meanwhile."""
        with self._lock:
            flag = self._reserved.pop(key, None)
        return flag is not None and flag.is_set()

    def stop(self, key: str) -> bool:
        """Stop the session's job (or its reserved run); False when there is none."""
        with self._lock:
            job = self._jobs.get(key)
            reserved = self._reserved.get(key)
        if job is not None and not job.wait(0):
            job.stop()
            return True
        if reserved is not None:
            reserved.set()
            return True
        return False

    def job(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def busy(self, key: str | None = None) -> bool:
        """Whether this session (any session, for None) has a job that has not finished."""
        with self._lock:
            if key is None:
                return self._active() > 0
            job = self._jobs.get(key)
        return job is not None and not job.wait(0)

    def remove(self, key: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(key) is job:
                del self._jobs[key]

    def _active(self) -> int:
        return sum(1 for j in self._jobs.values() if not j.wait(0))


RUNNER = JobRunner()
