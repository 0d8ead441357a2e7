"""The Few-shot tab's layout: components and event wiring only (handlers in ``.handlers``).

Class cards: Gradio cannot add components cheaply at run time, so the tab builds a fixed
set of ``LIMITS.max_classes`` (8) cards and shows one per class (visibility toggles;
``gr.render`` would rebuild the cards, and lose their uploads, on every edit of the class
list). Every shipped preset has at most 8 classes (chmnist and kvasir use all 8). Images
stay with the card position when the class list is edited.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gradio as gr

from dpt_core.fewshot import HELDOUT_MIN_PER_CLASS, TrainSettings
from dpt_core.presets import load_preset
from dpt_core.teacher import TEACHER_MODES
from dpt_core.visual import LAYOUTS

from ..choices import preset_choices
from ..errors import shown_beside
from ..services import Services
from ..uploads import DEFAULT_SETTINGS_NOTE
from .handlers import (
    CONSENT_TEXT,
    DEFAULT_PRESET,
    N_CARDS,
    PENDING_TTL_S,
    PRIVATE,
    TRAIN_GROUP,
    _uses_gpu,
    on_classes,
    on_description,
    on_files,
    on_preset,
    on_zip,
    prepare,
    push,
    stop,
    train_stream,
    use_in_predict,
)

TRAIN_HINT = "_Train is available once you confirm the consent box above._"

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
    train_hint: gr.Markdown
    train_msg: gr.Markdown
    zip_msg: gr.Markdown
    push_err: gr.Markdown
    pending: gr.State
    last: gr.State



# =========================================================================== layout

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
        zip_msg = gr.Markdown(elem_id="fewshot-zip-msg")
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
    adv = _advanced(d)
    with gr.Row():
        train = gr.Button("Train", variant="primary", interactive=False, elem_id="fewshot-train")
        # Idle: nothing to stop. Enabled while a run is queued or training.
        stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="fewshot-stop")
    train_hint = gr.Markdown(TRAIN_HINT, elem_id="fewshot-train-hint")  # why Train is disabled
    train_msg = gr.Markdown(elem_id="fewshot-msg")  # why Train could not start
    status = gr.Markdown(elem_id="fewshot-status")
    plot = gr.LinePlot(None, x="epoch", y="loss", color="part", title="Mean loss per epoch", height=260,
                       visible=False, elem_id="fewshot-loss")
    res = _result_column()
    return _Ui(
        preset=preset, classes=classes, classes_msg=classes_msg, zip_file=zip_file, zip_report=zip_report,
        cards=cards, headers=headers, files=files, galleries=galleries, counts=counts, description=description,
        consent=consent, train=train, stop=stop_btn, status=status, plot=plot, train_hint=train_hint,
        train_msg=train_msg, zip_msg=zip_msg,
        **{k: adv[k] for k in ("epochs", "views", "lr", "l1", "kl", "teacher", "layout", "seed")},
        **{k: res[k] for k in ("result", "summary", "per_class", "confusion", "use", "download", "repo", "token",
                               "private", "push_msg", "push_err")},
        push=res["push_btn"],
        pending=gr.State(None, time_to_live=PENDING_TTL_S),  # a validated run: upload paths and settings
        last=gr.State(None),  # the last result: label, folder, zip path, preset (strings only)
    )


def _advanced(d: TrainSettings) -> dict[str, Any]:
    """The Advanced accordion: the run's settings, at the defaults ``d``."""
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
    return {k: v for k, v in locals().items() if isinstance(v, gr.blocks.Block)}


def _result_column() -> dict[str, Any]:
    """Held-out check, Use in Predict, download and push (hidden until a run ends)."""
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
            push_err = gr.Markdown(elem_id="fewshot-push-msg")
    return {k: v for k, v in locals().items() if isinstance(v, gr.blocks.Block)}


def _wire(ui: _Ui, services: Services, session: gr.State, predict: Any, tabs: gr.Tabs) -> None:
    ui.preset.change(on_preset, ui.preset, [ui.classes, ui.l1, ui.kl], show_progress="hidden", **PRIVATE)
    ui.classes.change(on_classes, ui.classes, [*ui.cards, *ui.headers, ui.classes_msg], show_progress="hidden",
                      **PRIVATE)
    for f, g, c in zip(ui.files, ui.galleries, ui.counts):
        f.change(on_files, f, [g, c], show_progress="minimal", **PRIVATE)
    zip_outputs = [session, ui.classes, *ui.files, ui.zip_report]
    ui.zip_file.upload(shown_beside(on_zip, len(zip_outputs), "import the zip"),
                       [session, ui.zip_file, ui.preset, ui.classes], [*zip_outputs, ui.zip_msg], **PRIVATE)
    ui.consent.change(lambda ok: (gr.update(interactive=bool(ok)), "" if ok else TRAIN_HINT), ui.consent,
                      [ui.train, ui.train_hint], show_progress="hidden", **PRIVATE)

    settings_inputs = [ui.preset, ui.classes, ui.consent, ui.description, ui.epochs, ui.views, ui.lr, ui.l1,
                       ui.kl, ui.teacher, ui.layout, ui.seed]

    def _prepare(request: gr.Request, state, *values):
        settings, files = values[:len(settings_inputs)], values[len(settings_inputs):]
        # Stop becomes available as soon as the run is queued: it cancels a waiting run too.
        return (*prepare(state, services, *settings, files=files, session_key=_session_key(request)),
                gr.update(interactive=True))

    def _train(request: gr.Request, state, pending):
        if pending is None:  # the checks before queueing failed: their message is beside Train already
            yield {ui.pending: None}
            return
        yield from train_stream(services, state, pending, ui, _session_key(request))
        yield {ui.stop: gr.update(interactive=False)}  # idle again: nothing to stop

    def _stop(request: gr.Request) -> str:
        return stop(_session_key(request))

    prepare_outputs = [session, ui.pending, ui.status, ui.stop]
    ui.train.click(shown_beside(_prepare, len(prepare_outputs), "check the training set"),
                   [session, *settings_inputs, *ui.files], [*prepare_outputs, ui.train_msg],
                   show_progress="hidden", concurrency_limit=4, **PRIVATE).then(
        _train, [session, ui.pending],
        [ui.pending, ui.status, ui.plot, ui.result, ui.summary, ui.per_class, ui.confusion, ui.download, ui.last,
         ui.stop],
        concurrency_limit=1, concurrency_id=TRAIN_GROUP, show_progress="minimal", show_progress_on=[ui.status],
        **PRIVATE)
    ui.stop.click(_stop, None, ui.status, concurrency_limit=None, show_progress="hidden", **PRIVATE)

    use = ui.use.click(lambda state, last: use_in_predict(state, last, predict),
                       [session, ui.last], [session, predict.preset, predict.checkpoint, tabs], **PRIVATE)
    if predict.use_checkpoint is not None:
        predict.use_checkpoint(use)  # the checkpoint's classes into the table, old results cleared
    ui.description.blur(shown_beside(on_description, 1, "update the model card"), [ui.last, ui.description],
                        [ui.download, ui.train_msg], show_progress="hidden", **PRIVATE)
    ui.push.click(shown_beside(push, 1, "push the checkpoint"), [ui.last, ui.repo, ui.token, ui.private],
                  [ui.push_msg, ui.push_err], **PRIVATE)
