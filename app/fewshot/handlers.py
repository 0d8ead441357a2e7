"""The Few-shot tab's handlers: plain functions from input values to component updates.

They call ``app.uploads``, ``app.zip_import``, ``app.jobs`` and ``app.export`` and, through them,
``dpt_core.fewshot`` (the run). Design choices:

- One training per process: the run is submitted to ``app.jobs.RUNNER``, a single-worker
  executor; a second user's run waits in its queue and their status says so (Stop cancels
  it there). A quick first step validates the uploads at once and says when the user will
  have to wait; prediction never goes through the runner and keeps running.
- Stop is cooperative: a per-session flag polled by ``fit`` before every step; the best
  completed epoch is kept and saved. No thread is killed.
- Nothing uploaded leaves the session: decoded images and features live in memory during
  the job, files under the session folder (deleted at session end); the checkpoint holds
  prompt tensors only.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from dpt_core.backbone import default_device
from dpt_core.data import LabelledImages
from dpt_core.errors import FewShotError, TrainingStopped
from dpt_core.fewshot import FewShotResult, TrainSettings, default_batch
from dpt_core.limits import BudgetError, check_data_description
from dpt_core.presets import load_preset
from dpt_core.workflow import ClassSetup

from ..errors import user_message
from ..export import (
    clear_dir,
    new_checkpoint_dir,
    push_checkpoint,
    set_data_description,
    zip_checkpoint,
)
from ..formatting import clip_message, escape
from ..job_channel import FileChannel
from ..jobs import RUNNER, Job
from ..services import CUSTOM, Services
from ..session import add_trained, new_session_state, session_dir
from ..uploads import (
    LIMITS,
    check_consent,
    load_class_images,
    parse_class_names,
    split_class_text,
    summarize_card,
)
from ..zip_import import import_zip
from .view import (
    checkpoint_label,
    confusion_frame,
    per_class_frame,
    plot_value,
    status_markdown,
    summary_markdown,
)

log = logging.getLogger(__name__)

N_CARDS = LIMITS.max_classes
DEFAULT_PRESET = "btmri"  # 4 classes: the "4 classes x 8 images in about a minute" case
POLL_S = 0.5  # how often the streamed status is refreshed
PENDING_TTL_S = 1800  # validated images waiting in the queue are dropped after this (memory only)
PRIVATE = {"api_visibility": "private"}  # UI events only: training is not part of the public API
CONSENT_TEXT = "These images are de-identified and I may use them for this purpose."


@dataclass
class PendingRun:
    """A validated request waiting for its turn (kept in a per-session gr.State).

    It holds the upload paths, not decoded images: a run waiting in the queue costs no
    memory, and the images are decoded again (cheap next to training) when it starts.
    """

    setup: ClassSetup
    files: list[list[str]]  # per class, in class order: files in the session's upload cache
    settings: TrainSettings
    description: str

    @property
    def data(self) -> LabelledImages:
        """The images, decoded and checked now (the files were checked when the run was queued)."""
        return load_class_images(self.setup.class_names, self.files)


# =========================================================================== errors

def _error(message: str, title: str = "Error") -> gr.Error:
    """A user-facing error: escaped (the modal renders HTML), line breaks kept, no server-side traceback."""
    return gr.Error(escape(clip_message(message)).replace("\n", "<br>"), title=title, print_exception=False)


# =========================================================================== handlers (plain functions)

def on_preset(preset: str) -> tuple[Any, Any, Any]:
    """Preset -> its classes and few-shot loss weights; custom -> an empty class list."""
    if not preset or preset == CUSTOM:
        return gr.update(value=""), gr.update(value=0.0), gr.update(value=0.0)
    p = load_preset(preset)
    w = p.weights("few_shot")
    return gr.update(value="\n".join(p.classes)), gr.update(value=w.l1), gr.update(value=w.kl)


def on_classes(text: str) -> list[Any]:
    """Show one card per class (up to N_CARDS), titled with the class name; explain problems."""
    names = split_class_text(text)
    msg = ""
    try:
        parse_class_names(text)
    except FewShotError as err:
        msg = f"⚠️ {escape(err)}" if names else "Type the class names, one per line (or pick a preset)."
    cards = [gr.update(visible=i < len(names)) for i in range(N_CARDS)]
    headers = [gr.update(value=f"**{i + 1}. {escape(names[i])}**" if i < len(names) else "") for i in range(N_CARDS)]
    return [*cards, *headers, gr.update(value=msg)]


def on_files(paths: Sequence[str] | None) -> tuple[Any, str]:
    summary = summarize_card(paths)
    return summary.thumbnails, escape(summary.text())


def on_zip(state: dict | None, zip_path: str | None, preset: str, classes_text: str) -> list[Any]:
    """Sort a zip's images into the cards (the zip's folders become the classes for empty custom classes)."""
    state = state or new_session_state()
    if not zip_path:
        return [state, gr.update(), *([gr.update()] * N_CARDS), ""]
    custom_empty = (preset == CUSTOM or not preset) and not (classes_text or "").strip()
    try:
        names = None if custom_empty else parse_class_names(classes_text)
        imports = session_dir(state) / "zip-imports"
        clear_dir(imports)  # an earlier import is replaced by this one
        result = import_zip(zip_path, names, imports / f"{time.time_ns()}")
    except FewShotError as err:
        raise _error(str(err)) from None
    files = [[str(p) for p in f] for f in result.files] + [[]] * (N_CARDS - len(result.files))
    classes_update = gr.update(value="\n".join(result.class_names)) if custom_empty else gr.update()
    return [state, classes_update, *[f or None for f in files], escape(result.report())]


def prepare(state: dict | None, services: Services, preset: str, classes_text: str, consent: bool,
            description: str, epochs: float, views: float, lr: float, l1: float, kl: float, teacher: str,
            layout: str, seed: float, files: Sequence[Sequence[str] | None],
            session_key: str) -> tuple[dict, PendingRun, str]:
    """Validate everything before queueing, so a bad file is reported at once, not after a wait."""
    state = state or new_session_state()
    try:
        check_consent(consent)
        description = check_data_description(description)
        names = parse_class_names(classes_text)
        setup = services.setup(preset, names, None)
        settings = TrainSettings(epochs, views, lr, default_batch(_uses_gpu(services)), l1, kl, teacher, layout,
                                 seed).checked()
        data = load_class_images(names, files)
    except (FewShotError, ValueError) as err:
        raise _error(str(err), "Cannot train yet") from None
    if RUNNER.busy(session_key):
        raise _error("A training of this session is still running; stop it or wait for it.")
    busy = RUNNER.busy()
    status = ("Queued: **waiting for another training to finish** (one training at a time on this "
              "server). Prediction keeps working meanwhile." if busy else "Starting...")
    session_dir(state)
    RUNNER.reserve(session_key)  # Stop can cancel it before it is submitted
    paths = [[str(p) for p in (f or [])] for f in files[:len(names)]]
    del data  # checked; the pending run keeps the paths only
    return state, PendingRun(setup, paths, settings, description or ""), status


def train_stream(services: Services, state: dict | None, pending: PendingRun | None, ui: Any, session_key: str):
    """Generator for the Train event: submits the job to the runner and streams its status."""
    if RUNNER.claim(session_key):
        yield {ui.pending: None, ui.status: "**Stopped** before it started; nothing was trained."}
        return
    if pending is None:
        raise _error("Nothing to train: press Train again.")
    state = state or new_session_state()
    folder = new_checkpoint_dir(session_dir(state), pending.setup.preset.name if pending.setup.preset else None)

    run = pending  # the job's own reference: the generator drops its name below

    # The run's three phases are GPU calls on ZeroGPU (app.device), so progress and the stop
    # request travel through files in the session folder, which a worker process can reach.
    channel = FileChannel(session_dir(state) / "jobs" / uuid.uuid4().hex)

    def work(ch) -> FewShotResult:
        return services.run_fewshot(run.setup, run.data, run.settings, folder, run.description, ch)

    try:
        job: Job[FewShotResult] = RUNNER.submit(session_key, work, channel)
    except FewShotError as err:
        raise _error(str(err)) from None
    try:
        yield {ui.pending: None, ui.result: gr.update(visible=False), ui.plot: gr.update(value=None, visible=True),
               ui.status: status_markdown(job.status)}
        shown_epochs = 0
        while not job.wait(POLL_S):
            st = job.status
            out: dict = {ui.status: status_markdown(st, job.stop_requested)}
            if len(st.epochs) != shown_epochs:
                shown_epochs = len(st.epochs)
                out[ui.plot] = plot_value(st.epochs)
            yield out
    finally:
        if not job.wait(0):
            job.stop()  # the page went away mid-run: end at the next step boundary
        else:
            clear_dir(channel.folder)
        RUNNER.remove(session_key, job)
    yield _finish(job, ui)


def _finish(job: Job[FewShotResult], ui: Any) -> dict:
    err = job.error
    if isinstance(err, TrainingStopped):
        return {ui.status: f"**Stopped.** {escape(err)}"}
    if err is not None:
        # A message in the status line (and a toast), never an error badge over the outputs.
        text = user_message(err, "train") if not isinstance(err, FewShotError) else escape(clip_message(str(err)))
        gr.Warning(text)
        return {ui.status: f"**Training failed.** {text}"}
    r = job.result
    archive = zip_checkpoint(r.folder)
    last = {"label": checkpoint_label(r), "folder": str(r.folder), "zip": str(archive), "preset": r.preset}
    return {
        ui.status: ("**Done.**" if not r.stopped else
                    "**Stopped early** - the best completed epoch was kept." if r.history else
                    "**Stopped** before the first epoch completed - the checkpoint is the zero-shot prompt."),
        ui.plot: plot_value(r.history),
        ui.result: gr.update(visible=True),
        ui.summary: summary_markdown(r),
        ui.per_class: per_class_frame(r),
        ui.confusion: confusion_frame(r),
        ui.download: gr.update(value=str(archive), visible=True),
        ui.last: last,
    }


def stop(session_key: str) -> str:
    job = RUNNER.job(session_key)
    running = job is not None and job.state == "running"
    if not RUNNER.stop(session_key):
        return "Nothing is training in this session."
    if running:
        return "**Stopping** at the next step; the best completed epoch will be kept..."
    return "**Cancelled**: the queued training will not start."


def use_in_predict(state: dict | None, last: dict | None, predict: Any) -> tuple[dict, Any, Any, Any]:
    """Add the checkpoint to this session and point the Predict tab at it (this session only).

    The preset and the checkpoint are set together; the Predict tab keeps a checkpoint
    trained in this session selected when its preset changes, and loads its classes.
    """
    if not last:
        raise _error("Train a checkpoint first.")
    state = add_trained(state or new_session_state(), last["label"], last["folder"])
    label = next(k for k, v in state["trained"].items() if v == str(last["folder"]))  # as add_trained named it
    preset = last.get("preset") or CUSTOM
    checkpoint = predict.checkpoint_update(preset, state, label)
    return state, gr.update(value=preset), checkpoint, gr.Tabs(selected="predict")


def on_description(last: dict | None, description: str) -> Any:
    """A description edited after training goes into the card and the download too."""
    if not last:
        return gr.update()
    try:
        set_data_description(last["folder"], description)
    except (FewShotError, BudgetError) as err:
        raise _error(str(err)) from None
    return gr.update(value=str(zip_checkpoint(last["folder"], last["zip"])))


def push(last: dict | None, repo: str, token: str, private: bool, oauth_token: gr.OAuthToken | None = None) -> str:
    if not last:
        raise _error("Train a checkpoint first.")
    secret = (token or "").strip() or (oauth_token.token if oauth_token is not None else None)
    try:
        url = push_checkpoint(last["folder"], repo, secret, bool(private))
    except FewShotError as err:
        raise _error(str(err), "Push failed") from None
    return f"Pushed to [{url}]({url}) ({'private' if private else 'public'})."


def _uses_gpu(services: Services) -> bool:
    """Whether training will run on CUDA, without loading the backbone (build time must stay cheap)."""
    if services.loaded:
        return services.backbone.device.type == "cuda"
    return str(services.device or default_device()).startswith("cuda")
