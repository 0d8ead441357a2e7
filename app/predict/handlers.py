"""The Predict tab's handlers: one scan -> prediction, per-source probabilities, contributions, attention.

The handlers are methods of ``PredictController`` (plain Python over ``Services``), so tests
call them without a browser. Each turns the errors users can cause into a ``gr.Error`` with a
readable message (``app.errors.user_errors``); the UI wires them through
``app.errors.shown_beside``, which shows that message beside the control instead.

Public API endpoints (``/predict``, ``/explain``) are separate, simply-typed methods on
hidden components, so ``gradio_client`` can call them with an image file and a preset
name and nothing else; the UI's own events are private.
"""
from __future__ import annotations

import logging
import os
import reprlib
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from dpt_core.calibration import DEFAULT_COVERAGE
from dpt_core.descriptions import class_key, same_classes, validate_descriptions
from dpt_core.errors import InputError
from dpt_core.explain import Explanation, overlay
from dpt_core.imageio import ImageLoadError, LoadedImage, load_image
from dpt_core.modality import header_mismatch
from dpt_core.predictor import MAX_CLASSES, Prediction, check_class_names
from dpt_core.presets import list_presets
from dpt_core.registry import entry
from dpt_core.workflow import ClassSetup

from .. import formatting as fmt
from .. import trust_view
from ..choices import (
    ALLOW_LOCAL_ENV,
    DEFAULT_ALPHA,
    PREDICTED,
    ZERO_SHOT,
    FileValue,
    checkpoint_update,
    parse_classes_text,
    parse_descriptions_text,
    preset_markdown,
)
from ..description_proposal import proposal_view
from ..errors import user_errors
from ..examples import EXAMPLES_DIR, ShippedExamples
from ..redact import example_at
from ..services import CUSTOM, Services
from ..session import trained_checkpoints

log = logging.getLogger(__name__)


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
            raise InputError("upload a scan first (PNG, JPEG, TIFF or DICOM)")
        return load_image(path, None if frame is None else int(frame))

    @classmethod
    def load_frame(cls, path: FileValue, frame: float | int | None) -> LoadedImage:
        """The UI's frame numbers count from 1, as the image summary does ("frame 3 of 5");
        0 or empty means the default (middle) frame."""
        number = int(frame) if frame not in (None, "") else 0
        if number <= 0:
            return cls.load(path)
        try:
            return cls.load(path, number - 1)
        except ImageLoadError:
            n_frames = cls.load(path).n_frames
            if number <= n_frames:
                raise
            raise InputError(f"frame {number} does not exist; this image has frames 1 to {n_frames}") from None

    def setup_from_table(self, preset: str | None, table: Any) -> ClassSetup:
        rows = fmt.table_rows(table)
        if len(rows) > MAX_CLASSES:
            raise InputError(f"at most {MAX_CLASSES} classes are supported, got {len(rows)}")
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
        raise InputError("a checkpoint must be 'hf-hub:ORG/REPO[/SUBFOLDER][@REVISION]', a registry entry or "
                         "one trained in this session")

    def resolve(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                table: Any, state: dict | None) -> PredictRequest:
        setup = self.setup_from_table(preset, table)
        ckpt = self.checkpoint_id(checkpoint, state)
        return PredictRequest(self.load_frame(path, frame), setup, ckpt, str(path))

    # -------------------------------------------------------------- image input
    @user_errors("read the image")
    def on_upload(self, path: FileValue) -> tuple:
        """New file: frame slider (several frames only, at the middle one), preview, summary; results cleared."""
        cleared = self.cleared_results()
        if not path:
            return (gr.update(visible=False, value=1), None, "", *cleared)
        loaded = self.load(path)
        slider = gr.update(visible=loaded.n_frames > 1, minimum=1, maximum=max(2, loaded.n_frames),
                           value=loaded.frame + 1, step=1)
        return (slider, loaded.image, fmt.image_summary(loaded), *cleared)

    @user_errors("read that frame")
    def on_frame(self, path: FileValue, frame: float) -> tuple:
        """Another frame: its preview; results of the previous frame are cleared."""
        if not path:
            return (None, "", *self.cleared_results())
        loaded = self.load_frame(path, frame)
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

    def on_example_click(self, examples: list[dict[str, Any]], preset: str | None, evt: gr.SelectData,
                         state: dict | None, table: Any, checkpoint: str | None) -> tuple:
        """``on_example``, plus the new preset's classes and checkpoints when the preset changes.

        Preset listeners react to user input only (so that programmatic updates cannot race
        each other), hence a preset changed here brings its classes and checkpoints itself.
        """
        path, new_preset = self.on_example(examples, preset, evt)
        if new_preset == preset:
            return (path, gr.update(), *([gr.update()] * 5))
        return (path, new_preset, *self.on_preset(new_preset, state, table, checkpoint))

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
            raise InputError("choose a class of the table first")
        sentences = fmt.split_descriptions(text)
        validate_descriptions({class_name: sentences}, source="the descriptions")
        return fmt.replace_descriptions(table, class_name, sentences)

    @user_errors("generate descriptions")
    def on_generate(self, preset: str | None, table: Any, class_name: str | None, backend: str,
                    n: float, token: str | None, model: str | None) -> tuple[str, str]:
        """A proposal in the one-class box; the table changes only when the user applies it."""
        if not class_name:
            raise InputError("choose the class to describe")
        setup = self.setup_from_table(preset, table)
        if class_name not in setup.class_names:
            raise InputError(f"{reprlib.repr(class_name)} is not in the class table")
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

    @user_errors("use the checkpoint")
    def on_use_checkpoint(self, preset: str | None, checkpoint: str | None, state: dict | None) -> tuple:
        """After the Few-shot tab picked a preset and a trained checkpoint: the checkpoint's classes
        (the preset's descriptions where they match), the preset's note and class editor.

        Runs as the follow-up of "Use in Predict" with the values that event set, so it does not
        depend on which tab state Predict was in (another preset, another checkpoint, an edited table).
        """
        table = self.preset_table(preset, None)
        ckpt_id = self.checkpoint_id(checkpoint, state)
        if ckpt_id is not None:
            update = self.table_for_checkpoint(ckpt_id, preset, table, quiet=True)
            table = update if isinstance(update, pd.DataFrame) else table
        return (table, preset_markdown(preset), *self.class_editor(table, None))

    def table_for_checkpoint(self, ckpt_id: str, preset: str | None, table: Any, quiet: bool = False) -> Any:
        """The class table to use with a checkpoint: unchanged, or the checkpoint's own classes."""
        ckpt = self.services.load_checkpoint(ckpt_id, None if preset == CUSTOM else preset)
        if entry(ckpt_id) is not None:
            return gr.update()  # registry checkpoints are made for the preset's classes
        rows = fmt.table_rows(table) if table is not None else []
        if same_classes([n for n, _ in rows], ckpt.class_names):
            return gr.update()
        setup = self.services.setup(ckpt.preset, ckpt.class_names, dict(rows) or None)
        if not quiet:
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
    def on_method(method: str | None) -> tuple[dict, dict]:
        """Rollout follows no class or phrase: its target controls are greyed out."""
        active = method != "rollout"
        return gr.update(interactive=active), gr.update(interactive=active)

    def on_method_redraw(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                         table: Any, state: dict | None, method: str, target: str | None, phrase: str | None,
                         alpha: float, shown: Explanation | None) -> tuple:
        """After a method switch: the shown map redrawn with the new method (nothing shown: nothing to do)."""
        if shown is None:
            return gr.update(), gr.update(), gr.update()
        return self.on_explain(path, frame, preset, checkpoint, table, state, method, target, phrase, alpha)

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
            raise InputError(f"unknown preset {reprlib.repr(preset)}; "
                             f"known presets: {', '.join(list_presets())}, custom")
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

