"""The public, simply-typed API endpoints (``/predict``, ``/explain``) for ``gradio_client``.

They take an image file and a preset name and nothing else, return plain values (a label
dict, JSON details, an overlay image), and raise ``gr.Error`` for what a caller can fix.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from dpt_core.calibration import DEFAULT_COVERAGE
from dpt_core.descriptions import class_key
from dpt_core.errors import InputError

from .. import formatting as fmt
from .. import trust_view
from ..choices import DEFAULT_ALPHA
from ..errors import user_errors
from .requests import RequestResolver
from .view import overlay_image


class PublicApi(RequestResolver):
    """The two public endpoints, over the same request resolution as the tab."""

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
        req = self.api_request(image, preset, checkpoint, classes, descriptions, frame)
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
        alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
        if not 0.0 <= alpha <= 1.0:  # also refuses NaN, before any model work
            raise InputError(f"alpha must be between 0 and 1, not {alpha}")
        req = self.api_request(image, preset, checkpoint, classes, descriptions, frame)
        target = " ".join((target or "").split())
        by_key = {class_key(c): c for c in req.setup.class_names}
        target_class, phrase = (by_key[class_key(target)], None) if class_key(target) in by_key else (None, target)
        expl = self.run_explain(req, (method or "gradcam").strip().lower(), target_class, phrase, bool(faithfulness))
        return (overlay_image(expl, alpha),
                {**fmt.explanation_info(expl), **trust_view.faithfulness_info(expl)})
