"""One call for an attention map: (predictor, image, method, class or phrase) -> Explanation.

The app only displays what this returns; the CLI and scripts make the same call.

- ``gradcam`` towards a phrase when one is given (its plain text feature), else towards a
  class's learned prompt (default: the predicted class);
- ``rollout``: attention rollout, which follows no target.

Both are model attention, not lesion localisation (``dpt_core.explain`` masks the cells
of the visual prompt tokens).
"""
from __future__ import annotations

from PIL import Image

from .errors import InputError
from .explain import Explanation, attention_rollout, gradcam
from .predictor import Predictor
from .prompt_bank import encode_cached

METHODS = ("gradcam", "rollout")


def check_target(method: str, class_names: list[str], target_class: str | None) -> None:
    """Refuse an unknown method or class before any model work (cheap; the app checks before a GPU call)."""
    if method not in METHODS:
        raise InputError(f"unknown explanation method {method!r}; use one of {', '.join(METHODS)}")
    if target_class and target_class not in class_names:
        raise InputError(f"unknown class {target_class!r}; choose one of the current classes")


def explain_image(predictor: Predictor, image: Image.Image, method: str = "gradcam",
                  target_class: str | None = None, phrase: str | None = None) -> Explanation:
    """The attention map of ``image`` under ``predictor``'s prompt, for a class or a phrase."""
    check_target(method, predictor.class_names, target_class)
    if method == "rollout":
        return attention_rollout(predictor.model, image)
    phrase = " ".join((phrase or "").split())
    if phrase:
        return gradcam(predictor.model, image, encode_cached(predictor.backbone, [phrase])[0], target=phrase)
    name = target_class or predictor.predict_features(predictor.image_features([image]))[0].prediction
    text = predictor.text_features[predictor.class_names.index(name)]  # the learned prompt of that class
    return gradcam(predictor.model, image, text, target=name)


__all__ = ["METHODS", "check_target", "explain_image"]
