"""A local stand-in for ``spaces.GPU`` that runs each call the way ZeroGPU does.

On a ZeroGPU Space a decorated call runs in a worker process forked from the server:
its arguments go there by pickle, its result comes back by pickle, nothing it changes
in memory reaches the server, and it must finish within its declared duration. Code
that breaks one of these rules works everywhere else and fails only on the Space.

``simulated_gpu`` enforces the same rules on any machine: every call forks a fresh
process (stricter than ZeroGPU, which may reuse a worker; so no call can rely on an
earlier one's memory), pickles both ways, and kills the call when it runs past
``duration x DPT_ZEROGPU_SIM_SCALE`` seconds. ``DPT_SIMULATE_ZEROGPU=1 python app.py``
runs the whole app this way; the tests use it to check every GPU call of both tabs.
It cannot check CUDA itself: the call runs on whatever device the backbone is on.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import sys
import threading
import time
from typing import Any, Callable

ENV = "DPT_SIMULATE_ZEROGPU"
SCALE_ENV = "DPT_ZEROGPU_SIM_SCALE"  # multiplies every duration (a slow CPU is not an H200)
DEFAULT_DURATION_S = 60  # spaces.GPU's default


class SimulatedSlotError(RuntimeError):
    """A call broke a ZeroGPU rule: unpicklable argument or result, or it ran past its slot."""


class CallLog:
    """What the simulator has run in this process: (function name, seconds) per call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.calls.append((name, seconds))

    def names(self) -> list[str]:
        with self._lock:
            return [n for n, _ in self.calls]


CALLS = CallLog()


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def simulated_gpu(fn: Callable | None = None, *, duration: float | Callable[..., float] | None = None,
                  **_kwargs: Any) -> Callable:
    """``spaces.GPU`` look-alike: ``@simulated_gpu`` or ``@simulated_gpu(duration=...)``."""
    if fn is None:
        return lambda f: simulated_gpu(f, duration=duration)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        seconds = duration(*args, **kwargs) if callable(duration) else duration
        limit = float(seconds or DEFAULT_DURATION_S) * float(os.environ.get(SCALE_ENV, "1") or 1)
        try:
            payload = pickle.dumps((args, kwargs))
        except Exception as exc:  # noqa: BLE001 - any pickling failure is the finding
            raise SimulatedSlotError(f"{fn.__name__}: an argument does not pickle ({exc})") from exc
        start = time.monotonic()
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_run_child, args=(fn, payload, send), daemon=True)
        proc.start()
        send.close()
        try:
            if not receive.poll(limit):
                proc.kill()
                raise SimulatedSlotError(f"{fn.__name__} ran past its {limit:.0f} s GPU slot")
            try:
                ok, value = pickle.loads(receive.recv_bytes())
            except EOFError:
                raise SimulatedSlotError(f"{fn.__name__}: the worker died (exit code {proc.exitcode})") from None
        finally:
            receive.close()
            proc.join(timeout=5)
            CALLS.add(fn.__name__, time.monotonic() - start)
        if not ok:
            if isinstance(value, SimulatedSlotError):  # the simulator's own finding (e.g. an unpicklable result)
                raise value
            # As on ZeroGPU, an exception escaping the call reaches the server only as its class name:
            # errors meant for the user must come back as values (see app.device).
            raise SimulatedSlotError(f"ZeroGPU worker error: {fn.__name__} raised {type(value).__name__}")
        return value

    return call


def _run_child(fn: Callable, payload: bytes, send: Any) -> None:
    try:
        args, kwargs = pickle.loads(payload)
        message = (True, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed back to the caller, as ZeroGPU does
        message = (False, exc)
    try:
        data = pickle.dumps(message)
    except Exception as exc:  # noqa: BLE001
        what = "the result" if message[0] else f"the {type(message[1]).__name__} it raised"
        data = pickle.dumps((False, SimulatedSlotError(f"{fn.__name__}: {what} does not pickle ({exc})")))
    send.send_bytes(data)
    send.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit handlers inherited from the server (they would delete its folders)
