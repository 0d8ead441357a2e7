"""The Predict tab's layout: components and event wiring only (handlers in ``.handlers``)."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr

from dpt_core.calibration import COVERAGES, DEFAULT_COVERAGE

from .. import formatting as fmt
from ..choices import (
    DEFAULT_ALPHA,
    DEFAULT_PRESET,
    PREDICTED,
    checkpoint_choices,
    checkpoint_update,
    default_checkpoint_value,
    preset_choices,
    preset_markdown,
)
from ..description_proposal import ACCEPT_LABEL
from ..errors import shown_beside
from ..examples import EXAMPLES_DIR, examples_markdown, load_examples
from ..services import Services
from . import view
from .handlers import PredictController

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- layout

@dataclass
class PredictHandles:
    """What other tabs may wire to."""

    preset: gr.Dropdown
    checkpoint: gr.Dropdown
    # Wire ``event.then(use_checkpoint...)`` after setting preset and checkpoint from another tab.
    use_checkpoint: Callable[[Any], Any] | None = None
    # (preset, session state, value=None) -> gr.update for ``checkpoint``; the Few-shot tab uses it.
    checkpoint_update: Callable[..., dict] = checkpoint_update


def create_predict_tab(services: Services, session: gr.State) -> PredictHandles:
    """Build the tab's components inside the current ``gr.Tab`` and wire its events."""
    examples = load_examples()
    ctl = PredictController(services, examples)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            parts = _scan_column(examples)
        with gr.Column(scale=7):
            parts |= _class_column(ctl)
    parts |= _prediction_section()
    parts |= _attention_section()
    ui = SimpleNamespace(**parts)
    use_checkpoint = _wire(ui, ctl, session, examples)
    _api_endpoints(ctl)
    return PredictHandles(ui.preset, ui.checkpoint, use_checkpoint)


def _scan_column(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Upload, frame, preview and the examples gallery."""
    image = gr.File(label="Scan (PNG, JPEG, TIFF, DICOM)", file_count="single",
                    type="filepath", height=150, elem_id="scan-file")
    frame = gr.Slider(1, 2, value=1, step=1, label="Frame (multi-frame files; 1 = first)", visible=False,
                      elem_id="frame")
    preview = gr.Image(label="Decoded image", type="pil", interactive=False, height=300, format="png",
                       buttons=[])
    image_info = gr.Markdown(elem_id="image-info")
    scan_msg = gr.Markdown(elem_id="scan-msg")
    with gr.Accordion("Examples (with sources and licences)", open=True):
        gallery = gr.Gallery(value=[(str(EXAMPLES_DIR / e["file"]), e["title"]) for e in examples],
                             elem_id="examples",
                             columns=4, height=270, allow_preview=False, show_label=False,
                             object_fit="cover", interactive=False, buttons=[])
        with gr.Accordion("Sources and licences", open=False):
            gr.Markdown(examples_markdown(examples))
    return {k: v for k, v in locals().items() if isinstance(v, gr.components.Component)}


def _class_column(ctl: PredictController) -> dict[str, Any]:
    """Preset, checkpoint, the class table, Predict, and the one-class description editor."""
    preset = gr.Dropdown(preset_choices(), value=DEFAULT_PRESET, label="Modality preset", elem_id="preset")
    preset_info = gr.Markdown(preset_markdown(DEFAULT_PRESET))
    checkpoint = gr.Dropdown(checkpoint_choices(DEFAULT_PRESET, None), value=default_checkpoint_value(DEFAULT_PRESET),
                             allow_custom_value=True, label="Prompt checkpoint", elem_id="checkpoint",
                             info="Registry checkpoints need the network; any hf-hub: id can be typed.")
    initial = ctl.preset_table(DEFAULT_PRESET)
    table = gr.Dataframe(
        value=initial,
        headers=fmt.TABLE_HEADERS, datatype="str", interactive=True, wrap=False,
        column_widths=["28%", "72%"], max_height=260,
        column_count=(2, "fixed"),  # rows are classes (add or delete them); the two columns are fixed
        label="Classes and expert descriptions: double-click a cell to rename or edit; "
              "right-click a row to add or delete a class",
        elem_id="class-table",
    )
    with gr.Row():
        predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
        reset_btn = gr.Button("Reset to preset", variant="secondary")
    classes_msg = gr.Markdown(elem_id="classes-msg")  # preset, checkpoint and table problems
    predict_msg = gr.Markdown(elem_id="predict-msg")
    with gr.Accordion("Descriptions of one class: edit or generate", open=False):
        with gr.Row():
            names = fmt.class_choices(initial)
            gen_class = gr.Dropdown(names, value=names[0], label="Class", allow_custom_value=True, scale=2)
            apply_btn = gr.Button(ACCEPT_LABEL, scale=1)
        desc_box = gr.Textbox(fmt.descriptions_text(initial, names[0]),
                              label="Descriptions, one sentence per line",
                              lines=5, max_lines=12)
        with gr.Row():
            gen_backend = gr.Radio([("Shipped bank (offline)", "retrieval"),
                                    ("HF Inference", "hf-inference"), ("Local model", "local")],
                                   value="retrieval", label="Generate with")
            gen_n = gr.Slider(1, 30, value=10, step=1, label="Sentences")
        with gr.Row():
            gen_model = gr.Textbox(label="Model id (from this server's list)",
                                   placeholder="the server's first listed model")
            gen_token = gr.Textbox(label="HF token (used for this request only, never stored)",
                                   type="password", placeholder="your own token (needed for HF Inference)")
        gen_btn = gr.Button("Generate descriptions")
        gen_note = gr.Markdown()
        gen_msg = gr.Markdown(elem_id="generate-msg")
    return {k: v for k, v in locals().items() if isinstance(v, gr.components.Component)}


def _prediction_section() -> dict[str, Any]:
    """The prediction, per-source probabilities and prompt contributions."""
    gr.Markdown("### Prediction")
    with gr.Row(equal_height=False):
        label = gr.Label(label="Prediction (learned prompt)", num_top_classes=10, elem_id="prediction-label")
        sources = gr.Dataframe(headers=fmt.SOURCE_HEADERS, label="Probability by prompt source", interactive=False,
                               wrap=True, column_widths=["31%", "23%", "23%", "23%"], elem_id="sources-table")
    with gr.Row(equal_height=False):
        calibration_md = gr.Markdown(elem_id="calibration")
        coverage = gr.Radio([(f"{c:.0%}", c) for c in COVERAGES], value=DEFAULT_COVERAGE, scale=0, min_width=260,
                            label="Prediction-set coverage (calibrated checkpoints)", elem_id="coverage")
    modality_md = gr.Markdown(elem_id="modality-check")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            contrib_class = gr.Dropdown([], label="Prompt contributions for class", allow_custom_value=True,
                                        elem_id="contrib-class")
            # Horizontal bars (a number on x, the prompt on y): the prompt text reads left to right.
            # Bars start at 0; the labels' zero-padded ranks keep the largest contribution on top.
            contrib_plot = gr.BarPlot(x="contribution", y="prompt", color="source", x_lim=[0, None],
                                      colors_in_legend=[],
                                      height=520, label="Top prompt contributions", elem_id="contrib-chart",
                                      x_title="weight × τ × cosine", y_title="")
        with gr.Column(scale=4):
            contrib_table = gr.Dataframe(headers=fmt.DETAIL_COLUMNS, column_widths=["5%", "18%", "45%", "11%", "21%"],
                                         label="Contributions (weight × τ × cosine with the image)",
                                         interactive=False, wrap=True, max_height=400, elem_id="contrib-table")
    return {k: v for k, v in locals().items() if isinstance(v, gr.components.Component)}


def _attention_section() -> dict[str, Any]:
    """Grad-CAM / rollout controls and the overlay."""
    gr.Markdown("### Attention overlay — model attention, not lesion localisation")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            method = gr.Radio([("Grad-CAM", "gradcam"), ("Attention rollout", "rollout")], value="gradcam",
                              label="Method")
            target = gr.Dropdown([("Predicted class", PREDICTED)], value=PREDICTED, allow_custom_value=True,
                                 label="Grad-CAM target class")
            phrase = gr.Textbox(label="…or a phrase (Grad-CAM towards this text instead)", max_lines=1)
            alpha = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="Overlay opacity")
            faithful = gr.Checkbox(False, label="Check faithfulness (deletion test, 8 extra forward passes)",
                                   elem_id="faithfulness")
            explain_btn = gr.Button("Show attention", elem_id="explain-btn")
            explain_msg = gr.Markdown(elem_id="explain-msg")
        with gr.Column(scale=5):
            overlay_img = gr.Image(label="Model attention, not lesion localisation", type="pil", format="png",
                                   interactive=False, height=360, elem_id="overlay")
            caption = gr.Markdown(elem_id="overlay-caption")
    return {k: v for k, v in locals().items() if isinstance(v, gr.components.Component)}


PRIVATE = {"api_visibility": "private"}
RESULTS = list(view.RESULTS)


def _wire(ui: SimpleNamespace, ctl: PredictController, session: gr.State,
          examples: list[dict[str, Any]]) -> Callable[[Any], Any]:
    """The tab's events; returns the hook that "Use in Predict" chains after setting preset and checkpoint."""
    ui.examples_state = gr.State(examples)
    ui.pred_state = gr.State(None)
    ui.expl_state = gr.State(None)
    on = functools.partial(_on, ui)
    _wire_scan_and_classes(ui, ctl, session, on)
    _wire_results(ui, ctl, session, on)

    def use_checkpoint(event: Any) -> Any:
        return on(event.success, ctl.on_use_checkpoint, [ui.preset, ui.checkpoint, session],
                  ["table", "preset_info", "gen_class", "desc_box"], ui.classes_msg, "use the checkpoint").then(
            view.by_name(ctl.cleared_results, RESULTS), None, [getattr(ui, n) for n in RESULTS],
            show_progress="hidden", **PRIVATE)

    return use_checkpoint


def _on(ui: SimpleNamespace, event: Any, fn: Callable[..., Any], inputs: list | None, names: list[str],
        msg: gr.Markdown | None, action: str = "", **options: Any) -> Any:
    """Wire ``fn`` (returning a dict keyed by component name) to ``event`` with the components ``names``.

    With ``msg``, the event goes through app.errors.shown_beside: a failure is a note beside its
    control (and a toast) that stays until that event runs again; outputs are never turned into badges.
    """
    keyed = view.by_name(fn, names)
    outputs = [getattr(ui, n) for n in names]
    if msg is None:
        return event(keyed, inputs, outputs, **PRIVATE, **options)
    return event(shown_beside(keyed, len(outputs), action), inputs, [*outputs, msg], **PRIVATE, **options)


def _wire_scan_and_classes(ui: SimpleNamespace, ctl: PredictController, session: gr.State,
                           on: Callable[..., Any]) -> None:
    """Upload, frame, examples, preset, checkpoint and the class table."""
    on(ui.image.change, ctl.on_upload, [ui.image], ["frame", "preview", "image_info", *RESULTS], ui.scan_msg,
       "read the image")
    # .input: typing a number and the arrow keys move the preview too, not only a mouse release
    on(ui.frame.input, ctl.on_frame, [ui.image, ui.frame], ["preview", "image_info", *RESULTS], ui.scan_msg,
       "read that frame", trigger_mode="always_last")
    preset_outputs = ["table", "checkpoint", "preset_info", "gen_class", "desc_box"]
    on(ui.gallery.select, ctl.on_example_click, [ui.examples_state, ui.preset, session, ui.table, ui.checkpoint],
       ["image", "preset", *preset_outputs], ui.scan_msg, "open the example")
    # .input, not .change: only the user's own choice triggers these. Programmatic updates
    # (an example click, "Use in Predict") bring everything they change in one handler, so
    # no two events race over the table and the checkpoint.
    on(ui.preset.input, ctl.on_preset, [ui.preset, session, ui.table, ui.checkpoint], preset_outputs, ui.classes_msg,
       "change the preset")
    on(ui.checkpoint.input, ctl.on_checkpoint, [ui.checkpoint, ui.preset, ui.table, session], ["table", "checkpoint"],
       ui.classes_msg, "load the checkpoint")
    for control in (ui.preset, ui.checkpoint, ui.table):  # results of other inputs are not left beside these
        on(control.input, ctl.cleared_results, None, RESULTS, None, show_progress="hidden")
    on(ui.reset_btn.click, ctl.on_reset, [ui.preset], ["table", "gen_class", "desc_box"], ui.classes_msg,
       "reset the classes")
    ui.table.change(ctl.on_table_edit, [ui.table, ui.gen_class], [ui.gen_class], show_progress="hidden", **PRIVATE)
    ui.gen_class.change(ctl.on_class_pick, [ui.table, ui.gen_class], [ui.desc_box], show_progress="hidden", **PRIVATE)
    ui.apply_btn.click(shown_beside(ctl.on_apply, 1, "update the descriptions"), [ui.table, ui.gen_class, ui.desc_box],
                       [ui.table, ui.gen_msg], **PRIVATE)
    on(ui.gen_btn.click, ctl.on_generate, [ui.preset, ui.table, ui.gen_class, ui.gen_backend, ui.gen_n, ui.gen_token,
                                           ui.gen_model], ["desc_box", "gen_note"], ui.gen_msg, "generate descriptions")


def _wire_results(ui: SimpleNamespace, ctl: PredictController, session: gr.State, on: Callable[..., Any]) -> None:
    """Predict, its contributions and prediction set, and the attention map."""
    inputs = [ui.image, ui.frame, ui.preset, ui.checkpoint, ui.table, session]
    on(ui.predict_btn.click, ctl.on_predict, [*inputs, ui.coverage],
       ["label", "sources", "modality_md", "contrib_class", "contrib_plot", "contrib_table", "target",
        "calibration_md", "pred_state"], ui.predict_msg, "predict", concurrency_id="model", concurrency_limit=4)
    ui.coverage.change(ctl.on_coverage, [ui.coverage, ui.pred_state], [ui.calibration_md], show_progress="hidden",
                       **PRIVATE)
    on(ui.contrib_class.change, ctl.on_contrib_class, [ui.contrib_class, ui.pred_state],
       ["contrib_plot", "contrib_table"], None)
    explained = ["overlay_img", "caption", "expl_state"]
    on(ui.explain_btn.click, ctl.on_explain, [*inputs, ui.method, ui.target, ui.phrase, ui.alpha, ui.faithful],
       explained, ui.explain_msg, "compute the attention map", concurrency_id="model")
    ui.alpha.release(ctl.on_alpha, [ui.alpha, ui.expl_state], [ui.overlay_img], **PRIVATE)
    # Rollout has no target: its controls grey out. A map already shown is redrawn with the new method.
    on(ui.method.input, ctl.on_method, [ui.method], ["target", "phrase"], None, show_progress="hidden")
    on(ui.method.input, ctl.on_method_redraw, [*inputs, ui.method, ui.target, ui.phrase, ui.alpha, ui.expl_state],
       explained, ui.explain_msg, "compute the attention map", concurrency_id="model")


def _api_endpoints(ctl: PredictController) -> None:
    """Hidden components carrying the public, simply-typed /predict and /explain endpoints."""
    with gr.Column(visible=False):
        image = gr.File(label="image", type="filepath")
        preset = gr.Textbox(label="preset", value=None)
        checkpoint = gr.Textbox(label="checkpoint", value=None)
        classes = gr.Textbox(label="classes", value=None)
        descriptions = gr.Textbox(label="descriptions", value=None)
        frame = gr.Number(label="frame", value=None, precision=0)
        coverage = gr.Number(label="coverage", value=DEFAULT_COVERAGE)
        target = gr.Textbox(label="target", value=None)
        method = gr.Textbox(label="method", value="gradcam")
        alpha = gr.Number(label="alpha", value=DEFAULT_ALPHA)
        faithfulness = gr.Checkbox(label="faithfulness", value=False)
        label = gr.Label(label="prediction")
        details = gr.JSON(label="details")
        overlay_img = gr.Image(label="overlay", type="pil", format="png")
        info = gr.JSON(label="explanation")
        predict_btn = gr.Button("api predict")
        explain_btn = gr.Button("api explain")
    predict_btn.click(ctl.api_predict, [image, preset, checkpoint, classes, descriptions, frame, coverage],
                      [label, details],
                      api_name="predict", concurrency_id="model")
    explain_btn.click(ctl.api_explain, [image, preset, target, method, alpha, checkpoint, classes, descriptions, frame,
                                        faithfulness],
                      [overlay_img, info], api_name="explain", concurrency_id="model")
