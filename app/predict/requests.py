"""Resolving one Predict request (scan, frame, classes, checkpoint) and running it on ``Services``.

Shared by the tab's handlers (``.handlers``) and the public API (``.api``): both validate
their inputs here, so one scan and one class table give the same result by either route.
"""
from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass
from typing import Any

from dpt_core.descriptions import validate_descriptions
from dpt_core.errors import InputError
from dpt_core.explain import Explanation
from dpt_core.imageio import ImageLoadError, LoadedImage, load_image
from dpt_core.modality import header_mismatch
from dpt_core.predictor import MAX_CLASSES, check_class_names
from dpt_core.presets import list_presets
from dpt_core.registry import entry
from dpt_core.workflow import ClassSetup

from .. import formatting as fmt
from ..choices import ALLOW_LOCAL_ENV, PREDICTED, ZERO_SHOT, FileValue, parse_classes_text, parse_descriptions_text
from ..examples import ShippedExamples
from ..services import CUSTOM, Services
from ..session import trained_checkpoints


@dataclass
class PredictRequest:
    """Everything one prediction needs, resolved and validated."""

    loaded: LoadedImage
    setup: ClassSetup
    checkpoint: str | None
    path: str  # the uploaded file (a shipped example is recognised by its content, see app.examples)


class RequestResolver:
    """Inputs -> a validated ``PredictRequest``; a request -> a prediction or an explanation."""

    def __init__(self, services: Services, examples: list[dict[str, Any]] | None = None):
        self.services = services
        self.examples = ShippedExamples(examples)

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

    def api_request(self, image: str | None, preset: str | None, checkpoint: str | None, classes: str | None,
                     descriptions: str | None, frame: float | None) -> PredictRequest:
        preset = (preset or "").strip().lower() or None
        if preset and preset != CUSTOM and preset not in list_presets():
            # reprlib: an error must not echo a multi-megabyte argument back to the caller
            raise InputError(f"unknown preset {reprlib.repr(preset)}; "
                             f"known presets: {', '.join(list_presets())}, custom")
        setup = self.services.setup(preset, parse_classes_text(classes), parse_descriptions_text(descriptions))
        return PredictRequest(self.load(image, None if frame is None or frame < 0 else frame), setup,
                              self.checkpoint_id(checkpoint, None), str(image))

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

    def run_explain(self, req: PredictRequest, method: str, target: str | None, phrase: str | None,
                    faithfulness: bool = False) -> Explanation:
        target_class = None if not target or target == PREDICTED else target
        return self.services.explain(req.setup, req.checkpoint, req.loaded.image, method, target_class, phrase,
                                     faithfulness=bool(faithfulness))
