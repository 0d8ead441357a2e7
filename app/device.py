"""The GPU boundary: every call of the app that runs the backbone goes through this module.

On a Hugging Face ZeroGPU Space there is a GPU only inside functions decorated with
``spaces.GPU``, and such a call is not an ordinary call: it runs in a worker process
forked from the server, gets its arguments and returns its result by pickle, changes
nothing in the server's memory, must end within the duration it declared, and an
exception escaping it reaches the server only as "ZeroGPU worker error". Hence every
function here

- takes a ``ServicesRef`` (a picklable handle: the worker finds its own copy of the
  process's ``Services``, inherited at fork time) and plain data - images, class
  setups, loaded checkpoints, CPU tensors - never a model, a lock or a callback;
- returns a ``Result``: the value, or the exception meant for the user, which
  ``Result.unwrap`` raises again in the server with its type and message intact;
- declares a duration that covers its worst case on a ZeroGPU slice, including the
  first call's transfer of the weights. Training is cut into calls of
  ``TRAIN_SLICE_S`` seconds of epochs each (``dpt_core.train.fit_epochs``).

Anything that needs the network (Hub checkpoints, HF Inference) happens in the server
before the call, so no GPU time is spent waiting on a download. Off ZeroGPU the
decorator is a no-op and these are plain calls in the server process; with
``DPT_SIMULATE_ZEROGPU=1`` they run under ``app.zerogpu_sim``, which enforces the
rules above on any machine.
"""
from __future__ import annotations

import itertools
import logging
import os
import pickle
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from dpt_core import fewshot

from . import ZERO_GPU, gpu

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds of GPU slot asked for per call. The work itself is far below these on a GPU (a CPU
# prediction here is ~0.7 s, bench/README.md; no GPU timing exists yet): the slot is mostly
# headroom for a worker's first call, which moves the backbone (~0.8 GB of fp32) onto the GPU.
PREDICT_S = 30  # one image + (first time per class setup) its prompts
EXPLAIN_S = 30  # Grad-CAM: one forward and backward
TEXT_S = 60  # description retrieval: embeds the shipped banks once per worker
PREPARE_BASE_S, PREPARE_PER_PASS_S = 30, 0.025  # see prepare_duration
TRAIN_SLICE_S = 30  # seconds of epochs per training call...
TRAIN_CALL_S = 60  # ...in a slot with room for one more epoch and the model set-up
FINISH_S = 30  # held-out check and checkpoint

_REGISTRY: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # a dropped Services leaves it
_KEYS = itertools.count(1)


@dataclass(frozen=True)
class ServicesRef:
    """A picklable handle to a ``Services`` object of this process (or of the process it was forked from)."""

    key: int

    def get(self) -> Any:
        return _REGISTRY[self.key]


def register(services: Any) -> ServicesRef:
    key = next(_KEYS)
    _REGISTRY[key] = services
    return ServicesRef(key)


@dataclass
class Result(Generic[T]):
    value: T | None = None
    error: BaseException | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


_SERVER_PID = os.getpid()


def _guarded(fn: Callable[..., T], *args: Any) -> Result[T]:
    if os.getpid() != _SERVER_PID:
        _forked_worker_setup()
    try:
        return Result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - every error goes back to the server as a value
        return Result(error=_portable(exc))


def _forked_worker_setup() -> None:
    """Once per worker: CPU ops on one thread.

    A forked process inherits the server's OpenMP thread pool without its threads, so the
    first parallel CPU op (e.g. normalising an image tensor) would wait for them forever;
    on one thread no pool is used (DataLoader workers do the same). The model runs on the
    GPU there; only the small pre-processing is on the CPU.
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling (its type and message are what the UI words)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        log.error("unpicklable %s from a GPU call", type(exc).__name__, exc_info=exc)
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------ the calls (undecorated)

def _predict(ref: ServicesRef, setup, checkpoint_id, checkpoint, image, expected_modality) -> Result:
    return _guarded(ref.get().predict_here, setup, checkpoint_id, checkpoint, image, expected_modality)


def _explain(ref: ServicesRef, setup, checkpoint_id, checkpoint, image, method, target_class, phrase,
             faithfulness=False) -> Result:
    return _guarded(ref.get().explain_here, setup, checkpoint_id, checkpoint, image, method, target_class, phrase,
                    faithfulness)


def _describe(ref: ServicesRef, preset, request, backend, model) -> Result:
    return _guarded(ref.get().describe_here, preset, request, backend, model)


def prepare_duration(ref: ServicesRef, setup, data, settings, report=None, should_stop=None) -> float:
    """The preparation's slot: image passes (every image once; the training images once more per
    augmented view, the centre view being the first pass) x a CPU-side cost per pass (decoding is
    done; crop, resize and normalise on one thread), plus the worker's start-up. 4 classes x 8
    images with the GPU defaults (8 views): 30 + 0.025 x 32 x 8 = 36 s; the most the tab allows
    (8 x 32 images, 16 views): 30 + 0.025 x 256 x 16 = 132 s."""
    return PREPARE_BASE_S + PREPARE_PER_PASS_S * len(data) * int(settings.views)


# Progress and stop travel as bound methods of the job's channel: a FileChannel pickles, so the
# worker process of a GPU slot reports and polls through the session folder.
def _prepare(ref: ServicesRef, setup, data, settings, report, should_stop) -> Result:
    return _guarded(fewshot.prepare_run, ref.get().backbone, setup, data, settings, report, should_stop)


def _train(ref: ServicesRef, setup, settings, prepared, state, budget_s, report, should_stop) -> Result:
    return _guarded(fewshot.train_slice, ref.get().backbone, setup, settings, prepared, state, budget_s, report,
                    should_stop)


def _finish(ref: ServicesRef, setup, settings, prepared, state, out_dir, description, report,
            should_stop) -> Result:
    return _guarded(fewshot.finish_run, ref.get().backbone, setup, settings, prepared, state, out_dir, description,
                    report, should_stop)


@dataclass(frozen=True)
class DeviceCalls:
    """The decorated calls. ``CALLS`` uses the app's decorator; tests build others."""

    predict: Callable[..., Result]
    explain: Callable[..., Result]
    describe: Callable[..., Result]
    prepare: Callable[..., Result]
    train: Callable[..., Result]
    finish: Callable[..., Result]
    slice_s: float | None  # seconds of epochs per training call; None: one call

    def fewshot_phases(self, ref: ServicesRef) -> fewshot.Phases:
        """The few-shot run's three phases as calls of this kind, bound to ``ref``."""
        return fewshot.Phases(
            prepare=lambda *a: self.prepare(ref, *a).unwrap(),
            train=lambda *a: self.train(ref, *a).unwrap(),
            finish=lambda *a: self.finish(ref, *a).unwrap(),
        )


def make_calls(decorator: Callable[..., Any], slice_s: float | None = TRAIN_SLICE_S) -> DeviceCalls:
    return DeviceCalls(
        predict=decorator(duration=PREDICT_S)(_predict),
        explain=decorator(duration=EXPLAIN_S)(_explain),
        describe=decorator(duration=TEXT_S)(_describe),
        prepare=decorator(duration=prepare_duration)(_prepare),
        train=decorator(duration=TRAIN_CALL_S)(_train),
        finish=decorator(duration=FINISH_S)(_finish),
        slice_s=slice_s,
    )


# Decorated at import, as ZeroGPU wants: it looks for its functions when the Space starts. Training is
# cut into slots only there; elsewhere a run trains in one call (same result, no per-slice set-up).
CALLS = make_calls(gpu, TRAIN_SLICE_S if ZERO_GPU else None)
