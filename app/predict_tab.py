"""The Predict tab: one scan -> prediction, per-source probabilities, prompt contributions, attention.

Layout and event wiring live in ``create_predict_tab``; the handlers are methods
of ``PredictController`` (plain Python over ``Services``), so tests call them
without a browser. Every handler turns the errors users can cause into a
``gr.Error`` with a readable message; anything unexpected is logged (type only,
details at DEBUG: exception texts of decoders can quote file contents) and
shown as a generic message, never as a stack trace.

Public API endpoints (``/predict``, ``/explain``) are separate, simply-typed
functions on hidden components, so ``gradio_client`` can call them with an
image file and a preset name and nothing else; the UI's own events are private.
"""
from __future__ import annotations

import functools
import logging
import os
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import gradio as gr
import pandas as pd
from PIL import Image

from dpt_core.calibration import COVERAGES, DEFAULT_COVERAGE
from dpt_core.descriptions import DescriptionsError, class_key, same_classes, validate_descriptions
from dpt_core.explain import Explanation, overlay
from dpt_core.imageio import LoadedImage, load_image
from dpt_core.limits import parse_json_field
from dpt_core.modality import header_mismatch
from dpt_core.predictor import MAX_CLASSES, Prediction, check_class_names
from dpt_core.presets import list_presets, load_preset
from dpt_core.registry import checkpoint_choices as registry_choices
from dpt_core.registry import default_checkpoint, entry
from dpt_core.workflow import ClassSetup

from . import formatting as fmt
from . import trust_view
from .description_proposal import ACCEPT_LABEL, proposal_view
from .examples import EXAMPLES_DIR, ShippedExamples, examples_markdown, load_examples
from .redact import example_at
from .services import CUSTOM, Services
from .session import trained_checkpoints

log = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"  # checkpoint dropdown value: the preset's clinical template, no checkpoint
PREDICTED = "__predicted__"  # attention target dropdown value: the predicted class
DEFAULT_PRESET = "btmri"
DEFAULT_ALPHA = 0.45
# Typed local folders as checkpoint ids read the server's disk: off unless the operator allows it.
ALLOW_LOCAL_ENV = "DPT_ALLOW_LOCAL_CHECKPOINTS"
FileValue = str | None

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------- errors

def user_errors(action: str) -> Callable[[F], F]:
    """Expected errors -> gr.Error with their message; unexpected ones -> a generic gr.Error."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - the one place where everything becomes a message
                message = fmt.friendly_error(exc)
                if message is None:
                    log.error("%s failed: %s", action, type(exc).__name__)
                    log.debug("%s failed", action, exc_info=True)
                    message = f"Something went wrong while trying to {action}; the error was logged."
                raise gr.Error(message, print_exception=False) from None

        return inner  # type: ignore[return-value]

    return wrap


# ---------------------------------------------------------------------- choices

def preset_choices() -> list[tuple[str, str]]:
    return [(f"{load_preset(n).title} ({n})", n) for n in list_presets()] + [("Custom classes", CUSTOM)]


def checkpoint_choices(preset: str | None, state: dict | None) -> list[tuple[str, str]]:
    """Zero-shot, the registry's checkpoints of the preset (with their accuracy), then this session's trained ones."""
    out = [("Zero-shot (clinical template)", ZERO_SHOT)]
    if preset and preset != CUSTOM:
        out += registry_choices(preset)
    out += [(f"{label} (trained in this session)", path) for label, path in trained_checkpoints(state).items()]
    return out


def checkpoint_update(preset: str | None, state: dict | None, value: str | None = None) -> dict:
    """gr.update for the checkpoint dropdown; the Few-shot tab calls it with its new folder as ``value``.

    Without a value: the preset's registry Biomed-DPT checkpoint (16 shots, seed 1) when there is one,
    else zero-shot. Nothing is downloaded until the checkpoint is used.
    """
    return gr.update(choices=checkpoint_choices(preset, state), value=value or default_checkpoint_value(preset))


def default_checkpoint_value(preset: str | None) -> str:
    return (default_checkpoint(preset) if preset and preset != CUSTOM else None) or ZERO_SHOT


def preset_markdown(preset: str | None) -> str:
    if not preset or preset == CUSTOM:
        return ("Custom classes: prompt template `a photo of a {}.`; edit the class names below "
                "(at least two).")
    p = load_preset(preset)
    return (f"**{fmt.escape(p.title)}** — {fmt.escape(p.modality)}, {fmt.escape(p.organ)}. "
            f"Clinical template: `{p.template}` · {len(p.templates)} templates in the ensemble.")


def parse_classes_text(text: str | None) -> list[str] | None:
    """API ``classes``: a JSON list, one name per line, or comma-separated; None/blank -> the preset's."""
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith("["):
        value = parse_json_field(text, "classes")  # bounded size and nesting
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("classes: expected a JSON list of names (strings)")
        return value
    parts = text.splitlines() if "\n" in text else text.split(",")
    return [p.strip() for p in parts if p.strip()]


def parse_descriptions_text(text: str | None) -> dict[str, list[str]] | None:
    """API ``descriptions``: a JSON object {class: [sentences]}; None/blank -> the preset's bank."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        raw = parse_json_field(text, "descriptions")  # bounded size and nesting
    except ValueError as exc:
        raise DescriptionsError(str(exc)) from None
    return validate_descriptions(raw, source="descriptions")


# ---------------------------------------------------------------------- handlers

@dataclass
class PredictRequest:
    """Everything one prediction needs, resolved and validated."""

    loaded: LoadedImage
    setup: ClassSetup
    checkpoint: str | None
    path: str  # the uploaded file (a shipped example is recognised by its content, see app.examples)


class PredictController:
    """The Predict tab's logic over ``Services``: every method is one event handler."""

    def __init__(self, services: Services, examples: list[dict[str, Any]] | None = None):
        self.services = services
        self.examples = ShippedExamples(examples)

    # -------------------------------------------------------------- resolving inputs
    @staticmethod
    def load(path: FileValue, frame: float | int | None = None) -> LoadedImage:
        if not path:
            raise ValueError("upload a scan first (PNG, JPEG, TIFF or DICOM)")
        return load_image(path, None if frame is None else int(frame))

    def setup_from_table(self, preset: str | None, table: Any) -> ClassSetup:
        rows = fmt.table_rows(table)
        if len(rows) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} classes are supported, got {len(rows)}")
        names = check_class_names([name for name, _ in rows])  # duplicates, empties, counts
        descriptions = validate_descriptions(dict(rows), source="the class table")
        return self.services.setup(preset, names, descriptions)

    def checkpoint_id(self, value: str | None, state: dict | None) -> str | None:
        """The dropdown's value as a checkpoint id (None = zero-shot); refuses ids that read local disk."""
        value = (value or "").strip()
        if not value or value == ZERO_SHOT:
            return None
        trained = trained_checkpoints(state)
        if value in trained:  # a typed label
            return trained[value]
        if value in trained.values() or value.startswith("hf-hub:"):
            return value
        if entry(value) is not None:  # registry ids need not be hf-hub: ones
            return value
        if os.environ.get(ALLOW_LOCAL_ENV, "").strip().lower() in ("1", "true", "yes"):
            return value
        raise ValueError("a checkpoint must be 'hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]', a registry entry or "
                         "one trained in this session")

    def resolve(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                table: Any, state: dict | None) -> PredictRequest:
        setup = self.setup_from_table(preset, table)
        ckpt = self.checkpoint_id(checkpoint, state)
        return PredictRequest(self.load(path, frame), setup, ckpt, str(path))

    # -------------------------------------------------------------- image input
    @user_errors("read the image")
    def on_upload(self, path: FileValue) -> tuple:
        """New file: frame slider (several frames only, at the middle one), preview, summary; results cleared."""
        cleared = self.cleared_results()
        if not path:
            return (gr.update(visible=False, value=0), None, "", *cleared)
        loaded = self.load(path)
        slider = gr.update(visible=loaded.n_frames > 1, minimum=0, maximum=max(1, loaded.n_frames - 1),
                           value=loaded.frame, step=1)
        return (slider, loaded.image, fmt.image_summary(loaded), *cleared)

    @user_errors("read that frame")
    def on_frame(self, path: FileValue, frame: float) -> tuple:
        """Another frame: its preview; results of the previous frame are cleared."""
        if not path:
            return (None, "", *self.cleared_results())
        loaded = self.load(path, frame)
        return (loaded.image, fmt.image_summary(loaded), *self.cleared_results())

    @staticmethod
    def cleared_results() -> tuple:
        """Label, sources, modality note, plot, contributions table, overlay, caption, states, calibration."""
        return (None, None, "", None, None, None, "", None, None, "")

    def on_example(self, examples: list[dict[str, Any]], preset: str | None,
                   evt: gr.SelectData) -> tuple[str, str | None]:
        """A gallery click: its DICOM original when there is one, and its suggested preset."""
        try:
            example = example_at(examples, evt.index)  # any client can send any index
        except ValueError:
            raise gr.Error("No such example.", print_exception=False) from None
        file = example.get("dicom") or example["file"]
        return str(EXAMPLES_DIR / file), example.get("suggested_preset") or preset

    # -------------------------------------------------------------- classes
    @user_errors("change the preset")
    def on_preset(self, preset: str | None, state: dict | None, table: Any, checkpoint: str | None = None) -> tuple:
        """Preset changed: its classes and descriptions, its checkpoints, its description.

        A checkpoint trained in this session stays selected (the Few-shot tab sets the
        preset and the checkpoint together); anything else goes back to zero-shot.
        """
        new_table = self.preset_table(preset, table)
        keep = checkpoint if checkpoint in trained_checkpoints(state).values() else None
        if keep:  # its classes, whichever of this event and the checkpoint's own runs first
            update = self.table_for_checkpoint(keep, preset, new_table)
            new_table = update if isinstance(update, pd.DataFrame) else new_table
        return (new_table, checkpoint_update(preset, state, keep), preset_markdown(preset),
                *self.class_editor(new_table, None))

    def preset_table(self, preset: str | None, current: Any = None) -> pd.DataFrame:
        if not preset or preset == CUSTOM:
            # Custom classes start from what is in the table (edit from there), or two blank rows.
            rows = fmt.table_rows(current) if current is not None else []
            if rows:
                return pd.DataFrame([[n, fmt.SEPARATOR.join(s)] for n, s in rows], columns=fmt.TABLE_HEADERS)
            return pd.DataFrame([["", ""], ["", ""]], columns=fmt.TABLE_HEADERS)
        setup = self.services.setup(preset)
        return fmt.class_table(setup.class_names, setup.descriptions)

    @staticmethod
    def class_editor(table: Any, current: str | None) -> tuple[dict, str]:
        """The one-class editor after a table change: class picker (same class if still there) and its text."""
        names = fmt.class_choices(table)
        chosen = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=chosen), fmt.descriptions_text(table, chosen)

    @user_errors("reset the classes")
    def on_reset(self, preset: str | None) -> tuple:
        table = self.preset_table(preset, None)
        return (table, *self.class_editor(table, None))

    @staticmethod
    def on_table_edit(table: Any, current: str | None) -> dict:
        """Keep the class picker in step with the table (the text box keeps unapplied edits)."""
        return PredictController.class_editor(table, current)[0]

    @staticmethod
    def on_class_pick(table: Any, class_name: str | None) -> str:
        return fmt.descriptions_text(table, class_name)

    @user_errors("update the descriptions")
    def on_apply(self, table: Any, class_name: str | None, text: str | None) -> pd.DataFrame:
        """The text box (one sentence per line) becomes the class's descriptions in the table."""
        if not class_name or class_name not in fmt.class_choices(table):
            raise ValueError("choose a class of the table first")
        sentences = fmt.split_descriptions(text)
        validate_descriptions({class_name: sentences}, source="the descriptions")
        return fmt.replace_descriptions(table, class_name, sentences)

    @user_errors("generate descriptions")
    def on_generate(self, preset: str | None, table: Any, class_name: str | None, backend: str,
                    n: float, token: str | None, model: str | None) -> tuple[str, str]:
        """A proposal in the one-class box; the table changes only when the user applies it."""
        if not class_name:
            raise ValueError("choose the class to describe")
        setup = self.setup_from_table(preset, table)
        if class_name not in setup.class_names:
            raise ValueError(f"{reprlib.repr(class_name)} is not in the class table")
        result = self.services.generate_descriptions(setup, class_name, backend, int(n), token, model)
        return proposal_view(class_name, result)

    @user_errors("load the checkpoint")
    def on_checkpoint(self, checkpoint: str | None, preset: str | None, table: Any, state: dict | None) -> tuple:
        """Load a newly chosen checkpoint at once, so problems (offline, wrong backbone) show early.

        A checkpoint that cannot be loaded is a warning and the dropdown goes back to
        zero-shot; a checkpoint trained on other classes brings its classes into the table.
        """
        try:
            ckpt_id = self.checkpoint_id(checkpoint, state)
            if ckpt_id is None:
                return gr.update(), gr.update()
            table_update = self.table_for_checkpoint(ckpt_id, preset, table)
        except Exception as exc:  # noqa: BLE001 - expected ones become a warning, others an error
            message = fmt.friendly_error(exc)
            if message is None:
                raise
            gr.Warning(f"{message} The zero-shot prompt is selected instead.")
            return gr.update(), gr.update(value=ZERO_SHOT)
        return table_update, gr.update()

    def table_for_checkpoint(self, ckpt_id: str, preset: str | None, table: Any) -> Any:
        """The class table to use with a checkpoint: unchanged, or the checkpoint's own classes."""
        ckpt = self.services.load_checkpoint(ckpt_id, None if preset == CUSTOM else preset)
        if entry(ckpt_id) is not None:
            return gr.update()  # registry checkpoints are made for the preset's classes
        rows = fmt.table_rows(table) if table is not None else []
        if same_classes([n for n, _ in rows], ckpt.class_names):
            return gr.update()
        setup = self.services.setup(ckpt.preset, ckpt.class_names, dict(rows) or None)
        gr.Info("The class table now holds the checkpoint's classes.")
        return fmt.class_table(setup.class_names, setup.descriptions)

    # -------------------------------------------------------------- prediction
    def shipped_configuration(self, req: PredictRequest) -> bool:
        """Whether the request uses only what the app ships: a preset's own classes and descriptions,
        with the zero-shot prompt or a Hub checkpoint. Only then may a result outlive the session:
        an edited table or a checkpoint trained in the session is the user's."""
        preset = req.setup.preset
        if preset is None or (req.checkpoint and not req.checkpoint.startswith("hf-hub:")):
            return False
        default = self.services.setup(preset.name)
        return req.setup.class_names == default.class_names and req.setup.descriptions == default.descriptions

    def run_predict(self, req: PredictRequest):
        expected = req.setup.preset.modality if req.setup.preset else None
        # A shipped example with a shipped configuration is cached for everyone (app.examples).
        example = self.examples.match(req.path) if self.shipped_configuration(req) else None
        if example is not None:
            outcome = self.services.predict_example(f"{example}#{req.loaded.frame}", req.setup, req.checkpoint,
                                                    req.loaded.image, expected)
        else:
            outcome = self.services.predict(req.setup, req.checkpoint, req.loaded.image, expected)
        header = header_mismatch(req.loaded.meta.get("modality"), expected)
        return outcome, header

    @user_errors("predict")
    def on_predict(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                   table: Any, state: dict | None, coverage: Any = DEFAULT_COVERAGE) -> tuple:
        coverage = trust_view.checked_coverage(coverage)
        req = self.resolve(path, frame, preset, checkpoint, table, state)
        outcome, header = self.run_predict(req)
        pred, check = outcome.prediction.with_coverage(coverage), outcome.modality
        for note in (header, check.message if check.mismatch else None):
            if note:
                gr.Warning(fmt.escape(note))
        rows = fmt.contribution_rows(pred, pred.prediction)
        modality_md = fmt.modality_markdown(check, header)
        note = fmt.sources_note(pred)
        return (
            fmt.label_value(pred),
            fmt.sources_frame(pred),
            modality_md + (f"\n\n{note}" if note else ""),
            gr.update(choices=pred.class_names, value=pred.prediction),
            fmt.contributions_plot_frame(rows),
            fmt.contributions_table_frame(rows),
            gr.update(choices=[("Predicted class", PREDICTED)] + [(c, c) for c in pred.class_names], value=PREDICTED),
            trust_view.calibration_markdown(pred),
            pred,  # kept to redraw the contributions for another class without recomputing
        )

    @staticmethod
    @user_errors("show the prediction set")
    def on_coverage(coverage: Any, pred: Prediction | None) -> Any:
        """Another coverage: the set redrawn from the last prediction (no recomputation)."""
        if pred is None:
            return gr.update()
        return trust_view.calibration_markdown(pred.with_coverage(trust_view.checked_coverage(coverage)))

    @staticmethod
    def on_contrib_class(class_name: str | None, pred: Prediction | None) -> tuple:
        if pred is None or not class_name:
            return None, None
        rows = fmt.contribution_rows(pred, class_name)
        return fmt.contributions_plot_frame(rows), fmt.contributions_table_frame(rows)

    # -------------------------------------------------------------- attention
    def run_explain(self, req: PredictRequest, method: str, target: str | None, phrase: str | None,
                    faithfulness: bool = False) -> Explanation:
        target_class = None if not target or target == PREDICTED else target
        return self.services.explain(req.setup, req.checkpoint, req.loaded.image, method, target_class, phrase,
                                     faithfulness=bool(faithfulness))

    @user_errors("compute the attention map")
    def on_explain(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                   table: Any, state: dict | None, method: str, target: str | None, phrase: str | None,
                   alpha: float, faithfulness: bool = False) -> tuple[Image.Image, str, Explanation]:
        req = self.resolve(path, frame, preset, checkpoint, table, state)
        expl = self.run_explain(req, method, target, phrase, faithfulness)
        caption = "\n\n".join(t for t in (fmt.explanation_caption(expl), trust_view.faithfulness_line(expl)) if t)
        return overlay(expl, float(alpha)), caption, expl

    @staticmethod
    def on_alpha(alpha: float, expl: Explanation | None) -> Any:
        """Re-blend the last map at a new opacity (no recomputation)."""
        return overlay(expl, float(alpha)) if expl is not None else gr.update()

    # -------------------------------------------------------------- public API (gradio_client)
    def _api_request(self, image: str | None, preset: str | None, checkpoint: str | None, classes: str | None,
                     descriptions: str | None, frame: float | None) -> PredictRequest:
        preset = (preset or "").strip().lower() or None
        if preset and preset != CUSTOM and preset not in list_presets():
            # reprlib: an error must not echo a multi-megabyte argument back to the caller
            raise ValueError(f"unknown preset {reprlib.repr(preset)}; known presets: {', '.join(list_presets())}, custom")
        setup = self.services.setup(preset, parse_classes_text(classes), parse_descriptions_text(descriptions))
        return PredictRequest(self.load(image, None if frame is None or frame < 0 else frame), setup,
                              self.checkpoint_id(checkpoint, None), str(image))

    @user_errors("predict")
    def api_predict(
        self,
        image: str,
        preset: str,
        checkpoint: str | None = None,
        classes: str | None = None,
        descriptions: str | None = None,
        frame: float | None = None,
        coverage: float | None = DEFAULT_COVERAGE,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Classify one scan (PNG, JPEG, TIFF or DICOM) with a modality preset.

        Args:
            image: the scan file.
            preset: a preset name (btmri, busi, chmnist, covid, ctkidney, dermamnist, kneexray, kvasir,
                lungcolon, octmnist, retina) or "custom".
            checkpoint: "" or "zero-shot" for the clinical template, else an hf-hub: checkpoint id.
            classes: "" for the preset's classes, else a JSON list or one name per line (or comma-separated).
            descriptions: "" for the shipped bank, else a JSON object {class: [sentences]}.
            frame: frame of a multi-frame file (0-based); empty or negative for the middle one.
            coverage: of the prediction set of a calibrated checkpoint: 0.8, 0.9 (default) or 0.95.
        Returns:
            The label with confidences, and the details: probabilities per prompt source, top prompt
            contributions, modality check, image info.
        """
        coverage = trust_view.checked_coverage(DEFAULT_COVERAGE if coverage is None else coverage)
        req = self._api_request(image, preset, checkpoint, classes, descriptions, frame)
        outcome, header = self.run_predict(req)
        pred = outcome.prediction.with_coverage(coverage)
        details = fmt.prediction_details(pred, outcome.modality, req.loaded, req.checkpoint, header)
        return fmt.label_value(pred), details

    @user_errors("compute the attention map")
    def api_explain(
        self,
        image: str,
        preset: str,
        target: str | None = None,
        method: str | None = "gradcam",
        alpha: float | None = DEFAULT_ALPHA,
        checkpoint: str | None = None,
        classes: str | None = None,
        descriptions: str | None = None,
        frame: float | None = None,
        faithfulness: bool | None = False,
    ) -> tuple[Image.Image, dict[str, Any]]:
        """Attention overlay of one scan (model attention, not lesion localisation).

        Args:
            image: the scan file.
            preset: a preset name or "custom".
            target: "" for the predicted class, a class name, or any phrase (Grad-CAM towards its text feature).
            method: "gradcam" or "rollout".
            alpha: overlay opacity in [0, 1].
            checkpoint: as for /predict.
            classes: as for /predict.
            descriptions: as for /predict.
            frame: as for /predict.
            faithfulness: true to add the deletion test of the map (8 extra forwards):
                {"faithfulness": {"deletion_auc", "random_auc", "steps"}} in the info; lower
                deletion AUC than random means the map points at what the model uses.
        Returns:
            The overlay image and a description of the map.
        """
        req = self._api_request(image, preset, checkpoint, classes, descriptions, frame)
        target = " ".join((target or "").split())
        by_key = {class_key(c): c for c in req.setup.class_names}
        target_class, phrase = (by_key[class_key(target)], None) if class_key(target) in by_key else (None, target)
        expl = self.run_explain(req, (method or "gradcam").strip().lower(), target_class, phrase, bool(faithfulness))
        return (overlay(expl, DEFAULT_ALPHA if alpha is None else float(alpha)),
                {**fmt.explanation_info(expl), **trust_view.faithfulness_info(expl)})


# ---------------------------------------------------------------------- layout

@dataclass
class PredictHandles:
    """What other tabs may wire to."""

    preset: gr.Dropdown
    checkpoint: gr.Dropdown
    # (preset, session state, value=None) -> gr.update for ``checkpoint``; the Few-shot tab uses it.
    checkpoint_update: Callable[..., dict] = checkpoint_update


def create_predict_tab(services: Services, session: gr.State) -> PredictHandles:
    """Build the tab's components inside the current ``gr.Tab`` and wire its events."""
    examples = load_examples()
    ctl = PredictController(services, examples)

    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            image = gr.File(label="Scan (PNG, JPEG, TIFF or DICOM, with or without .dcm)", file_count="single",
                            type="filepath", height=150, elem_id="scan-file")
            frame = gr.Slider(0, 1, value=0, step=1, label="Frame (multi-frame files)", visible=False)
            preview = gr.Image(label="Decoded image", type="pil", interactive=False, height=300, format="png",
                               buttons=[])
            image_info = gr.Markdown(elem_id="image-info")
            with gr.Accordion("Examples (with sources and licences)", open=True):
                gallery = gr.Gallery(value=[(str(EXAMPLES_DIR / e["file"]), e["title"]) for e in examples],
                                     elem_id="examples",
                                     columns=4, height=270, allow_preview=False, show_label=False,
                                     object_fit="cover", interactive=False, buttons=[])
                with gr.Accordion("Sources and licences", open=False):
                    gr.Markdown(examples_markdown(examples))
        with gr.Column(scale=7):
            preset = gr.Dropdown(preset_choices(), value=DEFAULT_PRESET, label="Modality preset", elem_id="preset")
            preset_info = gr.Markdown(preset_markdown(DEFAULT_PRESET))
            checkpoint = gr.Dropdown(checkpoint_choices(DEFAULT_PRESET, None), value=default_checkpoint_value(DEFAULT_PRESET),
                                     allow_custom_value=True, label="Prompt checkpoint",
                                     info="Registry checkpoints need the network; any hf-hub: id can be typed.")
            initial = ctl.preset_table(DEFAULT_PRESET)
            table = gr.Dataframe(
                value=initial,
                headers=fmt.TABLE_HEADERS, datatype="str", interactive=True, wrap=False,
                column_widths=["28%", "72%"], max_height=260,
                label="Classes and expert descriptions: double-click a cell to rename or edit; "
                      "right-click a row to add or delete a class",
                elem_id="class-table",
            )
            with gr.Row():
                predict_btn = gr.Button("Predict", variant="primary", elem_id="predict-btn")
                reset_btn = gr.Button("Reset to preset", variant="secondary")
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
                    gen_model = gr.Textbox(label="Model id (from this server's list)", placeholder="the server's first listed model")
                    gen_token = gr.Textbox(label="HF token (used for this request only, never stored)",
                                           type="password", placeholder="your own token (needed for HF Inference)")
                gen_btn = gr.Button("Generate descriptions")
                gen_note = gr.Markdown()

    gr.Markdown("### Prediction")
    with gr.Row(equal_height=False):
        label = gr.Label(label="Prediction (learned prompt)", num_top_classes=10, elem_id="prediction-label")
        sources = gr.Dataframe(headers=fmt.SOURCE_HEADERS, label="Probability by prompt source", interactive=False,
                               wrap=True)
    with gr.Row(equal_height=False):
        calibration_md = gr.Markdown(elem_id="calibration")
        coverage = gr.Radio([(f"{c:.0%}", c) for c in COVERAGES], value=DEFAULT_COVERAGE, scale=0, min_width=260,
                            label="Prediction-set coverage (calibrated checkpoints)", elem_id="coverage")
    modality_md = gr.Markdown(elem_id="modality-check")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            contrib_class = gr.Dropdown([], label="Prompt contributions for class", allow_custom_value=True,
                                        elem_id="contrib-class")
            contrib_plot = gr.BarPlot(x="prompt", y="contribution", color="source", sort="-y",
                                      x_label_angle=-35, height=320, label="Top prompt contributions",
                                      x_title="prompt", y_title="weight × τ × cosine")
        with gr.Column(scale=4):
            contrib_table = gr.Dataframe(headers=fmt.DETAIL_COLUMNS, column_widths=["6%", "17%", "53%", "12%", "12%"],
                                         label="Contributions (weight × τ × cosine with the image)",
                                         interactive=False, wrap=True, max_height=400, elem_id="contrib-table")

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
        with gr.Column(scale=5):
            overlay_img = gr.Image(label="Model attention, not lesion localisation", type="pil", format="png",
                                   interactive=False, height=360, elem_id="overlay")
            caption = gr.Markdown(elem_id="overlay-caption")

    examples_state = gr.State(examples)
    pred_state = gr.State(None)
    expl_state = gr.State(None)
    results = [label, sources, modality_md, contrib_plot, contrib_table, overlay_img, caption, pred_state, expl_state,
               calibration_md]
    private = {"api_visibility": "private"}

    image.change(ctl.on_upload, [image], [frame, preview, image_info, *results], **private)
    frame.release(ctl.on_frame, [image, frame], [preview, image_info, *results], **private)
    gallery.select(ctl.on_example, [examples_state, preset], [image, preset], **private)
    preset.change(ctl.on_preset, [preset, session, table, checkpoint],
                  [table, checkpoint, preset_info, gen_class, desc_box], **private)
    checkpoint.change(ctl.on_checkpoint, [checkpoint, preset, table, session], [table, checkpoint], **private)
    reset_btn.click(ctl.on_reset, [preset], [table, gen_class, desc_box], **private)
    table.change(ctl.on_table_edit, [table, gen_class], [gen_class], show_progress="hidden", **private)
    gen_class.change(ctl.on_class_pick, [table, gen_class], [desc_box], show_progress="hidden", **private)
    apply_btn.click(ctl.on_apply, [table, gen_class, desc_box], [table], **private)
    gen_btn.click(ctl.on_generate, [preset, table, gen_class, gen_backend, gen_n, gen_token, gen_model],
                  [desc_box, gen_note], **private)
    inputs = [image, frame, preset, checkpoint, table, session]
    predict_btn.click(ctl.on_predict, [*inputs, coverage],
                      [label, sources, modality_md, contrib_class, contrib_plot, contrib_table, target,
                       calibration_md, pred_state],
                      concurrency_id="model", concurrency_limit=4, **private)
    coverage.change(ctl.on_coverage, [coverage, pred_state], [calibration_md], show_progress="hidden", **private)
    contrib_class.change(ctl.on_contrib_class, [contrib_class, pred_state], [contrib_plot, contrib_table], **private)
    explain_btn.click(ctl.on_explain, [*inputs, method, target, phrase, alpha, faithful],
                      [overlay_img, caption, expl_state],
                      concurrency_id="model", **private)
    alpha.release(ctl.on_alpha, [alpha, expl_state], [overlay_img], **private)

    _api_endpoints(ctl)
    return PredictHandles(preset, checkpoint)


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
