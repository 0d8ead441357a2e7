"""The Predict tab's handlers: one scan -> prediction, per-source probabilities, contributions, attention.

The handlers are methods of ``PredictController`` (plain Python over ``Services``), so tests
call them without a browser; each returns a dict keyed by component name (formatting in
``.view``). Each turns the errors users can cause into a ``gr.Error`` with a readable message
(``app.errors.user_errors``); the UI wires them through ``app.errors.shown_beside``, which
shows that message beside the control instead.

Public API endpoints (``/predict``, ``/explain``, in ``.api``) are separate, simply-typed methods on
hidden components, so ``gradio_client`` can call them with an image file and a preset
name and nothing else; the UI's own events are private.
"""
from __future__ import annotations

import logging
import reprlib
from typing import Any

import gradio as gr
import pandas as pd

from dpt_core.calibration import DEFAULT_COVERAGE
from dpt_core.descriptions import same_classes, validate_descriptions
from dpt_core.errors import InputError
from dpt_core.explain import Explanation
from dpt_core.predictor import Prediction
from dpt_core.registry import entry

from .. import formatting as fmt
from .. import trust_view
from ..choices import ZERO_SHOT, FileValue, checkpoint_update, preset_markdown
from ..description_proposal import proposal_view
from ..errors import user_errors
from ..examples import EXAMPLES_DIR
from ..redact import example_at
from ..services import CUSTOM
from ..session import trained_checkpoints
from . import view
from .api import PublicApi

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- handlers

class PredictController(PublicApi):
    """The Predict tab's logic over ``Services``: every ``on_*`` method is one event handler.

    Handlers return dicts keyed by component name (see ``.view``); the layout maps names to components.
    """

    @user_errors("read the image")
    def on_upload(self, path: FileValue) -> dict[str, Any]:
        """New file: frame slider (several frames only, at the middle one), preview, summary; results cleared."""
        loaded = self.load(path) if path else None
        return view.scan_outputs(loaded, view.frame_slider(loaded))

    @user_errors("read that frame")
    def on_frame(self, path: FileValue, frame: float) -> dict[str, Any]:
        """Another frame: its preview; results of the previous frame are cleared."""
        return view.scan_outputs(self.load_frame(path, frame) if path else None)

    @staticmethod
    def cleared_results() -> dict[str, Any]:
        """Every result emptied (label, sources, notes, contributions, overlay, kept states)."""
        return view.cleared_results()

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
                         state: dict | None, table: Any, checkpoint: str | None) -> dict[str, Any]:
        """``on_example``, plus the new preset's classes and checkpoints when the preset changes.

        Preset listeners react to user input only (so that programmatic updates cannot race
        each other), hence a preset changed here brings its classes and checkpoints itself.
        """
        path, new_preset = self.on_example(examples, preset, evt)
        if new_preset == preset:
            return {"image": path}
        return {"image": path, "preset": new_preset, **self.on_preset(new_preset, state, table, checkpoint)}

    # -------------------------------------------------------------- classes
    @user_errors("change the preset")
    def on_preset(self, preset: str | None, state: dict | None, table: Any,
                  checkpoint: str | None = None) -> dict[str, Any]:
        """Preset changed: its classes and descriptions, its checkpoints, its description.

        A checkpoint trained in this session stays selected (the Few-shot tab sets the
        preset and the checkpoint together); anything else goes back to zero-shot.
        """
        new_table = self.preset_table(preset, table)
        trained = trained_checkpoints(state)
        keep = checkpoint if checkpoint in trained else None  # the dropdown's value is the checkpoint's label
        if keep:  # its classes, whichever of this event and the checkpoint's own runs first
            update = self.table_for_checkpoint(trained[keep], preset, new_table)
            new_table = update if isinstance(update, pd.DataFrame) else new_table
        return {"table": new_table, "checkpoint": checkpoint_update(preset, state, keep),
                "preset_info": preset_markdown(preset), **view.class_editor(new_table, None)}

    def preset_table(self, preset: str | None, current: Any = None) -> pd.DataFrame:
        if not preset or preset == CUSTOM:
            # Custom classes start from what is in the table (edit from there), or two blank rows.
            rows = fmt.table_rows(current) if current is not None else []
            if rows:
                return pd.DataFrame([[n, fmt.SEPARATOR.join(s)] for n, s in rows], columns=fmt.TABLE_HEADERS)
            return pd.DataFrame([["", ""], ["", ""]], columns=fmt.TABLE_HEADERS)
        setup = self.services.setup(preset)
        return fmt.class_table(setup.class_names, setup.descriptions)

    @user_errors("reset the classes")
    def on_reset(self, preset: str | None) -> dict[str, Any]:
        table = self.preset_table(preset, None)
        return {"table": table, **view.class_editor(table, None)}

    @staticmethod
    def on_table_edit(table: Any, current: str | None) -> dict:
        """Keep the class picker in step with the table (the text box keeps unapplied edits)."""
        return view.class_editor(table, current)["gen_class"]

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
                    n: float, token: str | None, model: str | None) -> dict[str, str]:
        """A proposal in the one-class box; the table changes only when the user applies it."""
        if not class_name:
            raise InputError("choose the class to describe")
        setup = self.setup_from_table(preset, table)
        if class_name not in setup.class_names:
            raise InputError(f"{reprlib.repr(class_name)} is not in the class table")
        result = self.services.generate_descriptions(setup, class_name, backend, int(n), token, model)
        text, note = proposal_view(class_name, result)
        return {"desc_box": text, "gen_note": note}

    @user_errors("load the checkpoint")
    def on_checkpoint(self, checkpoint: str | None, preset: str | None, table: Any,
                      state: dict | None) -> dict[str, Any]:
        """Load a newly chosen checkpoint at once, so problems (offline, wrong backbone) show early.

        A checkpoint that cannot be loaded is a warning and the dropdown goes back to
        zero-shot; a checkpoint trained on other classes brings its classes into the table.
        """
        try:
            ckpt_id = self.checkpoint_id(checkpoint, state)
            if ckpt_id is None:
                return {}
            table_update = self.table_for_checkpoint(ckpt_id, preset, table)
        except Exception as exc:  # noqa: BLE001 - expected ones become a warning, others an error
            message = fmt.friendly_error(exc)
            if message is None:
                raise
            gr.Warning(f"{message} The zero-shot prompt is selected instead.")
            return {"checkpoint": gr.update(value=ZERO_SHOT)}
        return {"table": table_update}

    @user_errors("use the checkpoint")
    def on_use_checkpoint(self, preset: str | None, checkpoint: str | None, state: dict | None) -> dict[str, Any]:
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
        return {"table": table, "preset_info": preset_markdown(preset), **view.class_editor(table, None)}

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

    @user_errors("predict")
    def on_predict(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                   table: Any, state: dict | None, coverage: Any = DEFAULT_COVERAGE) -> dict[str, Any]:
        coverage = trust_view.checked_coverage(coverage)
        req = self.resolve(path, frame, preset, checkpoint, table, state)
        outcome, header = self.run_predict(req)
        pred, check = outcome.prediction.with_coverage(coverage), outcome.modality
        for note in (header, check.message if check.mismatch else None):
            if note:
                gr.Warning(fmt.escape(note))
        return view.prediction_outputs(pred, check, header)

    @staticmethod
    @user_errors("show the prediction set")
    def on_coverage(coverage: Any, pred: Prediction | None) -> Any:
        """Another coverage: the set redrawn from the last prediction (no recomputation)."""
        if pred is None:
            return gr.update()
        return trust_view.calibration_markdown(pred.with_coverage(trust_view.checked_coverage(coverage)))

    @staticmethod
    def on_contrib_class(class_name: str | None, pred: Prediction | None) -> dict[str, Any]:
        if pred is None or not class_name:
            return {"contrib_plot": None, "contrib_table": None}
        return view.contributions(pred, class_name)

    # -------------------------------------------------------------- attention
    @user_errors("compute the attention map")
    def on_explain(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                   table: Any, state: dict | None, method: str, target: str | None, phrase: str | None,
                   alpha: float, faithfulness: bool = False) -> dict[str, Any]:
        req = self.resolve(path, frame, preset, checkpoint, table, state)
        return view.explanation_outputs(self.run_explain(req, method, target, phrase, faithfulness), alpha)

    @staticmethod
    def on_method(method: str | None) -> dict[str, dict]:
        """Rollout follows no class or phrase: its target controls are greyed out."""
        active = method != "rollout"
        return {"target": gr.update(interactive=active), "phrase": gr.update(interactive=active)}

    def on_method_redraw(self, path: FileValue, frame: Any, preset: str | None, checkpoint: str | None,
                         table: Any, state: dict | None, method: str, target: str | None, phrase: str | None,
                         alpha: float, shown: Explanation | None) -> dict[str, Any]:
        """After a method switch: the shown map redrawn with the new method (nothing shown: nothing to do)."""
        if shown is None:
            return {}
        return self.on_explain(path, frame, preset, checkpoint, table, state, method, target, phrase, alpha)

    @staticmethod
    def on_alpha(alpha: float, expl: Explanation | None) -> Any:
        """Re-blend the last map at a new opacity (no recomputation)."""
        return view.overlay_image(expl, alpha) if expl is not None else gr.update()
