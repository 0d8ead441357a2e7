"""The "Few-shot adaptation" tab: a handful of labelled uploads -> an adapted prompt checkpoint.

Layout and wiring only; the logic (checks, zip import, the training job, export) is in
``app.fewshot_jobs``. Design choices:

- Class cards: Gradio cannot add components cheaply at run time, so the tab builds a
  fixed set of ``LIMITS.max_classes`` (8) cards and shows one per class (visibility
  toggles; ``gr.render`` would rebuild the cards, and lose their uploads, on every edit of
  the class list). Every shipped preset has at most 8 classes (chmnist and kvasir use all
  8). Images stay with the card position when the class list is edited.
- One training per process: the Train event runs in the concurrency group
  ``fewshot-train`` with a limit of 1 (Gradio's queue holds the others), and the job also
  takes ``services.train_lock``. A quick first step validates the uploads at once and says
  when the user will have to wait; prediction events are in other groups and keep running.
- Stop is cooperative: a per-session flag polled by ``fit`` before every step; the best
  completed epoch is kept and saved. No thread is killed.
- Nothing uploaded leaves the session: decoded images and features live in memory during
  the job, files under the session folder (deleted at session end); the checkpoint holds
  prompt tensors only.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from dpt_core.backbone import default_device
from dpt_core.data import LabelledImages
from dpt_core.presets import list_presets, load_preset
from dpt_core.teacher import TEACHER_MODES
from dpt_core.visual import LAYOUTS
from dpt_core.workflow import ClassSetup

from .fewshot_jobs import (
    DEFAULT_SETTINGS_NOTE,
    HELDOUT_MIN_PER_CLASS,
    JOBS,
    LIMITS,
    FewShotError,
    FewShotResult,
    Status,
    TrainingJob,
    TrainingStopped,
    TrainSettings,
    check_consent,
    clear_dir,
    default_batch,
    import_zip,
    load_class_images,
    new_checkpoint_dir,
    parse_class_names,
    push_checkpoint,
    set_data_description,
    split_class_text,
    summarize_card,
    zip_checkpoint,
)
from .formatting import clip_message, escape
from .job_channel import FileChannel
from . import trust_view
from .services import CUSTOM, Services
from .session import add_trained, new_session_state, session_dir

log = logging.getLogger(__name__)

N_CARDS = LIMITS.max_classes
DEFAULT_PRESET = "btmri"  # 4 classes: the "4 classes x 8 images in about a minute" case
TRAIN_GROUP = "fewshot-train"  # concurrency_id of the training event: one at a time per process
POLL_S = 0.5  # how often the streamed status is refreshed
PENDING_TTL_S = 1800  # validated images waiting in the queue are dropped after this (memory only)
PRIVATE = {"api_visibility": "private"}  # UI events only: training is not part of the public API
CONSENT_TEXT = "These images are de-identified and I may use them for this purpose."


@dataclass
class PendingRun:
    """A validated request waiting for its turn (kept in a per-session gr.State, in memory)."""

    setup: ClassSetup
    data: LabelledImages
    settings: TrainSettings
    description: str


@dataclass
class _Ui:
    """The components the handlers read or write (built by ``create_fewshot_tab``)."""

    preset: gr.Dropdown
    classes: gr.Textbox
    classes_msg: gr.Markdown
    zip_file: gr.File
    zip_report: gr.Markdown
    cards: list[gr.Column]
    headers: list[gr.Markdown]
    files: list[gr.File]
    galleries: list[gr.Gallery]
    counts: list[gr.Markdown]
    description: gr.Textbox
    consent: gr.Checkbox
    epochs: gr.Slider
    views: gr.Slider
    lr: gr.Number
    l1: gr.Number
    kl: gr.Number
    teacher: gr.Radio
    layout: gr.Radio
    seed: gr.Number
    train: gr.Button
    stop: gr.Button
    status: gr.Markdown
    plot: gr.LinePlot
    result: gr.Column
    summary: gr.Markdown
    per_class: gr.Dataframe
    confusion: gr.Dataframe
    use: gr.Button
    download: gr.DownloadButton
    repo: gr.Textbox
    token: gr.Textbox
    private: gr.Checkbox
    push: gr.Button
    push_msg: gr.Markdown
    pending: gr.State
    last: gr.State


# =========================================================================== formatting

def _error(message: str, title: str = "Error") -> gr.Error:
    """A user-facing error: escaped (the modal renders HTML), line breaks kept, no server-side traceback."""
    return gr.Error(escape(clip_message(message)).replace("\n", "<br>"), title=title, print_exception=False)


def preset_choices() -> list[tuple[str, str]]:
    return [(f"{load_preset(n).title} ({n})", n) for n in list_presets()] + [("Custom classes", CUSTOM)]


def loss_frame(epochs: Sequence[dict]) -> pd.DataFrame:
    """Per-epoch mean losses in long form for gr.LinePlot (one line per loss part)."""
    rows = [(int(e["epoch"]), float(e[k]), k) for e in epochs for k in ("total", "ce", "l1", "kl") if k in e]
    # Typed columns even when empty: the plot must see numbers from the first update on.
    return pd.DataFrame({
        "epoch": pd.Series([r[0] for r in rows], dtype="int64"),
        "loss": pd.Series([r[1] for r in rows], dtype="float64"),
        "part": pd.Series([r[2] for r in rows], dtype="object"),
    })


def plot_value(epochs: Sequence[dict]) -> pd.DataFrame | None:
    """What the loss plot gets: None until an epoch is done (an empty frame stops later updates drawing)."""
    return loss_frame(epochs) if epochs else None


def status_markdown(status: Status, stopping: bool = False) -> str:
    text = status.text
    if status.phase == "training":
        filled = round(status.fraction * 20)
        text = f"`{'█' * filled}{'░' * (20 - filled)}` {status.fraction:.0%}  \n{text}"
    if stopping:
        text += "  \n**Stopping** at the next step; the best completed epoch will be kept..."
    return text


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def summary_markdown(r: FewShotResult) -> str:
    t = r.timings
    lines = [(f"**Trained** on {r.n_train} images of {len(r.class_names)} classes: {r.epochs_completed} of "
              f"{r.settings.epochs} epochs in {_secs(t.get('total_s', 0))} (encoding {_secs(t.get('encode_s', 0))}, "
              f"augmented views {_secs(t.get('views_s', 0))}, prompt training "
              f"{_secs(t.get('fit_s', 0))}).")]
    if r.stopped:
        lines.append("**Stopped early.** The checkpoint holds the best completed epoch (lowest mean loss)"
                     + (" - no epoch had completed, so it equals the zero-shot prompt." if not r.history else "."))
    if r.check is not None:
        c = r.check
        right_a = round(c.adapted.accuracy * c.n_images)
        right_z = round(c.zero_shot.accuracy * c.n_images)
        lines.append(
            f"**Held-out check** on {c.n_images} images that training never saw "
            f"({', '.join(map(str, c.per_class_counts))} per class): adapted prompt **{_pct(c.adapted.accuracy)}** "
            f"({right_a}/{c.n_images}) vs zero-shot prompt **{_pct(c.zero_shot.accuracy)}** ({right_z}/{c.n_images}). "
            f"Each image moves accuracy by {100 / c.n_images:.1f} points: a sanity check, not a validation.")
        if r.calibration is not None:
            lines.append(trust_view.ece_line(r.calibration))
    else:
        lines.append(escape(r.no_check_reason))
    if r.random_weights:
        lines.append("_The backbone has random weights: these numbers are meaningless._")
    return "\n\n".join(lines)


def per_class_frame(r: FewShotResult) -> pd.DataFrame:
    cols = ["class", "held-out images", "adapted (%)", "zero-shot (%)"]
    if r.check is None:
        return pd.DataFrame(columns=cols)
    c = r.check
    rows = [[name, n, _round_pct(c.adapted.per_class[name]), _round_pct(c.zero_shot.per_class[name])]
            for name, n in zip(r.class_names, c.per_class_counts)]
    return pd.DataFrame(rows, columns=cols)


def _round_pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def confusion_frame(r: FewShotResult) -> pd.DataFrame:
    """Adapted prompt's confusion matrix: rows true class, columns predicted class."""
    head = ["true \\ predicted", *r.class_names]
    if r.check is None:
        return pd.DataFrame(columns=head)
    rows = [[name, *counts] for name, counts in zip(r.class_names, r.check.adapted.confusion_matrix)]
    return pd.DataFrame(rows, columns=head)


def checkpoint_label(r: FewShotResult) -> str:
    return f"Few-shot {r.preset or 'custom'} {time.strftime('%H:%M:%S')} ({r.n_images} images)"


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
        names = parse_class_names(classes_text)
        setup = services.setup(preset, names, None)
        settings = TrainSettings(epochs, views, lr, default_batch(_uses_gpu(services)), l1, kl, teacher, layout,
                                 seed).checked()
        data = load_class_images(names, files)
    except (FewShotError, ValueError) as err:
        raise _error(str(err), "Cannot train yet") from None
    if JOBS.busy(session_key):
        raise _error("A training of this session is still running; stop it or wait for it.")
    busy = JOBS.running() > 0 or services.train_lock.locked()
    status = ("Queued: **waiting for another training to finish** (one training at a time on this "
              "server). Prediction keeps working meanwhile." if busy else "Starting...")
    session_dir(state)
    JOBS.enqueue(session_key)  # Stop can cancel it while it waits in the queue
    return state, PendingRun(setup, data, settings, description or ""), status


def train_stream(services: Services, state: dict | None, pending: PendingRun | None, ui: _Ui, session_key: str):
    """Generator for the Train event: runs the job on a thread and streams its status."""
    if JOBS.dequeue(session_key):
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

    job: TrainingJob[FewShotResult] = TrainingJob(work, lock=services.train_lock, channel=channel)
    try:
        JOBS.add(session_key, job)
    except FewShotError as err:
        raise _error(str(err)) from None
    job.start()
    try:
        yield {ui.pending: None, ui.result: gr.update(visible=False), ui.plot: gr.update(value=None, visible=True),
               ui.status: "Starting..."}
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
        JOBS.remove(session_key, job)
    yield _finish(job, ui)


def _finish(job: TrainingJob[FewShotResult], ui: _Ui) -> dict:
    err = job.error
    if isinstance(err, TrainingStopped):
        return {ui.status: f"**Stopped.** {escape(err)}"}
    if isinstance(err, (FewShotError, ValueError)):
        raise _error(str(err), "Training failed")
    if err is not None:
        # Type only at ERROR: decoder messages can quote file contents; the traceback is for debugging.
        log.error("few-shot training failed: %s", type(err).__name__)
        log.debug("few-shot training failed", exc_info=err)
        raise _error("Training failed unexpectedly; the server log has the details.", "Training failed")
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
    running = JOBS.busy(session_key)
    if not JOBS.stop(session_key):
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
    preset = last.get("preset") or CUSTOM
    checkpoint = predict.checkpoint_update(preset, state, last["folder"])
    return state, gr.update(value=preset), checkpoint, gr.Tabs(selected="predict")


def on_description(last: dict | None, description: str) -> Any:
    """A description edited after training goes into the card and the download too."""
    if not last:
        return gr.update()
    try:
        set_data_description(last["folder"], description)
    except FewShotError as err:
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


# =========================================================================== layout

def _uses_gpu(services: Services) -> bool:
    """Whether training will run on CUDA, without loading the backbone (build time must stay cheap)."""
    if services.loaded:
        return services.backbone.device.type == "cuda"
    return str(services.device or default_device()).startswith("cuda")


def _session_key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def create_fewshot_tab(services: Services, session: gr.State, predict: Any, tabs: gr.Tabs) -> None:
    """Build the tab's components inside the current ``gr.Tab`` and wire their events."""
    ui = _build(services)
    _wire(ui, services, session, predict, tabs)


def _build(services: Services) -> _Ui:
    gr.Markdown(
        "Adapt the prompts to a handful of your own labelled images. Pick a preset (its classes, "
        "templates, descriptions and loss weights) or type your own classes, add 1-32 images per "
        f"class, and train: 4 classes x 8 images take a minute or so on a small CPU, seconds on a GPU. "
        f"With at least "
        f"{HELDOUT_MIN_PER_CLASS} images in every class, a quarter is held out to compare the adapted "
        "prompt with the zero-shot one. **Research use only, not for diagnosis.** Uploads are kept only "
        "for this session; the result holds prompt vectors only."
    )
    with gr.Row():
        preset = gr.Dropdown(preset_choices(), value=DEFAULT_PRESET, label="Start from", scale=1,
                             elem_id="fewshot-preset")
        classes = gr.Textbox("\n".join(load_preset(DEFAULT_PRESET).classes), lines=4, max_lines=N_CARDS + 2,
                             label="Classes (one per line)", scale=2, elem_id="fewshot-classes")
    classes_msg = gr.Markdown(
        f"Up to {N_CARDS} classes, one card each (every preset fits; chmnist and kvasir use all {N_CARDS}).")
    with gr.Accordion("Or upload one zip with a folder per class", open=False):
        gr.Markdown("Folder names match classes after `_` -> space, ignoring case (e.g. `glioma_tumor/`). "
                    "With *Custom classes* and an empty class list, the folders become the classes.")
        zip_file = gr.File(label="Zip", file_types=[".zip"], type="filepath", elem_id="fewshot-zip")
        zip_report = gr.Markdown()
    names = load_preset(DEFAULT_PRESET).classes
    cards, headers, files, galleries, counts = [], [], [], [], []
    with gr.Row(equal_height=False):
        for i in range(N_CARDS):
            with gr.Column(visible=i < len(names), min_width=260, variant="panel") as card:
                headers.append(gr.Markdown(f"**{i + 1}. {names[i]}**" if i < len(names) else ""))
                files.append(gr.File(file_count="multiple", type="filepath", label="Images (PNG, JPEG, TIFF, DICOM)",
                                     height=140, elem_id=f"fewshot-files-{i}"))
                galleries.append(gr.Gallery(show_label=False, columns=6, height=110, allow_preview=False,
                                            interactive=False, format="png", elem_id=f"fewshot-gallery-{i}"))
                counts.append(gr.Markdown("0 images", elem_id=f"fewshot-count-{i}"))
            cards.append(card)
    description = gr.Textbox(label="Training data description (goes into the model card)", lines=2,
                             placeholder="e.g. 8 axial T1 MR slices per class from our teaching archive, 2024; "
                                         "no patient identifiers.")
    consent = gr.Checkbox(False, label=CONSENT_TEXT, elem_id="fewshot-consent")
    d = TrainSettings.from_setup(services.setup(DEFAULT_PRESET), gpu=_uses_gpu(services))
    with gr.Accordion("Advanced", open=False):
        gr.Markdown(DEFAULT_SETTINGS_NOTE)
        with gr.Row():
            epochs = gr.Slider(1, 200, value=d.epochs, step=1, label="Epochs", elem_id="fewshot-epochs")
            views = gr.Slider(1, 16, value=d.views, step=1, label="Augmented views per image",
                              elem_id="fewshot-views")
            lr = gr.Number(d.lr, label="Learning rate", minimum=0)
            seed = gr.Number(d.seed, label="Seed", precision=0)
        with gr.Row():
            l1 = gr.Number(d.l1, label="λ_L1 (semantic regularisation)", minimum=0)
            kl = gr.Number(d.kl, label="λ_KL (distillation)", minimum=0)
            teacher = gr.Radio(list(TEACHER_MODES), value=d.teacher, label="Teacher (mean: paper v1; ranked: journal)")
            layout = gr.Radio(list(LAYOUTS), value=d.layout, label="Visual prompt layout")
    with gr.Row():
        train = gr.Button("Train", variant="primary", interactive=False, elem_id="fewshot-train")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="fewshot-stop")
    status = gr.Markdown(elem_id="fewshot-status")
    plot = gr.LinePlot(None, x="epoch", y="loss", color="part", title="Mean loss per epoch", height=260,
                       visible=False, elem_id="fewshot-loss")
    with gr.Column(visible=False, elem_id="fewshot-result") as result:
        summary = gr.Markdown(elem_id="fewshot-summary")
        with gr.Row():
            per_class = gr.Dataframe(label="Held-out accuracy per class", interactive=False)
            confusion = gr.Dataframe(label="Confusion matrix of the adapted prompt (rows: true, columns: predicted)",
                                     interactive=False)
        with gr.Row():
            use = gr.Button("Use in Predict", variant="primary", elem_id="fewshot-use")
            download = gr.DownloadButton("Download checkpoint (.zip)", visible=False, elem_id="fewshot-download")
        with gr.Accordion("Push to the Hugging Face Hub", open=False):
            with gr.Row():
                repo = gr.Textbox(label="Repository (ORG/NAME)", placeholder="your-name/biomed-dpt-btmri")
                token = gr.Textbox(label="Token with write access (used once, never stored)", type="password")
                private = gr.Checkbox(True, label="Private repository")
            if os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"):
                gr.LoginButton()  # Spaces OAuth: the token arrives as a gr.OAuthToken parameter
            push_btn = gr.Button("Push")
            push_msg = gr.Markdown()
    return _Ui(
        preset=preset, classes=classes, classes_msg=classes_msg, zip_file=zip_file, zip_report=zip_report,
        cards=cards, headers=headers, files=files, galleries=galleries, counts=counts, description=description,
        consent=consent, epochs=epochs, views=views, lr=lr, l1=l1, kl=kl, teacher=teacher, layout=layout,
        seed=seed, train=train, stop=stop_btn, status=status, plot=plot, result=result, summary=summary,
        per_class=per_class, confusion=confusion, use=use, download=download, repo=repo, token=token,
        private=private, push=push_btn, push_msg=push_msg,
        pending=gr.State(None, time_to_live=PENDING_TTL_S),  # validated images, memory only
        last=gr.State(None),  # the last result: label, folder, zip path, preset (strings only)
    )


def _wire(ui: _Ui, services: Services, session: gr.State, predict: Any, tabs: gr.Tabs) -> None:
    ui.preset.change(on_preset, ui.preset, [ui.classes, ui.l1, ui.kl], show_progress="hidden", **PRIVATE)
    ui.classes.change(on_classes, ui.classes, [*ui.cards, *ui.headers, ui.classes_msg], show_progress="hidden",
                      **PRIVATE)
    for f, g, c in zip(ui.files, ui.galleries, ui.counts):
        f.change(on_files, f, [g, c], show_progress="minimal", **PRIVATE)
    ui.zip_file.upload(on_zip, [session, ui.zip_file, ui.preset, ui.classes],
                       [session, ui.classes, *ui.files, ui.zip_report], **PRIVATE)
    ui.consent.change(lambda ok: gr.update(interactive=bool(ok)), ui.consent, ui.train, show_progress="hidden",
                      **PRIVATE)

    settings_inputs = [ui.preset, ui.classes, ui.consent, ui.description, ui.epochs, ui.views, ui.lr, ui.l1,
                       ui.kl, ui.teacher, ui.layout, ui.seed]

    def _prepare(request: gr.Request, state, *values):
        settings, files = values[:len(settings_inputs)], values[len(settings_inputs):]
        return prepare(state, services, *settings, files=files, session_key=_session_key(request))

    def _train(request: gr.Request, state, pending):
        yield from train_stream(services, state, pending, ui, _session_key(request))

    def _stop(request: gr.Request) -> str:
        return stop(_session_key(request))

    ui.train.click(_prepare, [session, *settings_inputs, *ui.files], [session, ui.pending, ui.status],
                   show_progress="hidden", concurrency_limit=4, **PRIVATE).success(
        _train, [session, ui.pending],
        [ui.pending, ui.status, ui.plot, ui.result, ui.summary, ui.per_class, ui.confusion, ui.download, ui.last],
        concurrency_limit=1, concurrency_id=TRAIN_GROUP, show_progress="minimal", show_progress_on=[ui.status],
        **PRIVATE)
    ui.stop.click(_stop, None, ui.status, concurrency_limit=None, show_progress="hidden", **PRIVATE)

    ui.use.click(lambda state, last: use_in_predict(state, last, predict),
                 [session, ui.last], [session, predict.preset, predict.checkpoint, tabs], **PRIVATE)
    ui.description.blur(on_description, [ui.last, ui.description], ui.download, show_progress="hidden", **PRIVATE)
    ui.push.click(push, [ui.last, ui.repo, ui.token, ui.private], ui.push_msg, **PRIVATE)
