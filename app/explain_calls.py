"""The attention maps of ``Services``: Grad-CAM towards a class or a phrase, rollout, faithfulness.

A mixin of ``app.services.Services``: ``explain`` checks its arguments here and runs the
model through ``self.calls`` (a GPU call on ZeroGPU); ``explain_here`` is the part that
runs there, in whichever process that is.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from PIL import Image

from dpt_core.checkpoint import PromptCheckpoint
from dpt_core.explain import Explanation
from dpt_core.explanation import METHODS, check_target, explain_image
from dpt_core.faithfulness import explanation_faithfulness
from dpt_core.prompt_bank import encode_cached
from dpt_core.workflow import ClassSetup

if TYPE_CHECKING:
    from dpt_core.backbone import Backbone

    from .device import DeviceCalls

EXPLAIN_METHODS = METHODS


class ExplainCalls:
    """``Services.explain`` and ``Services.explain_here``.

    What it uses of ``Services``: the attributes below, ``_checkpoint`` and ``predictor``.
    """

    calls: DeviceCalls
    ref: object
    backbone: Backbone

    def explain(
        self,
        setup: ClassSetup,
        checkpoint_id: str | None,
        image: Image.Image,
        method: str = "gradcam",
        target_class: str | None = None,
        phrase: str | None = None,
        faithfulness: bool = False,
    ) -> Explanation:
        """Grad-CAM towards a class's learned prompt (default: the predicted class) or a typed phrase; or rollout.

        ``faithfulness``: also run the deletion test of the map (``Explanation.faithfulness``).
        """
        check_target(method, list(setup.class_names), target_class)  # before any GPU call
        checkpoint_id, ckpt = self._checkpoint(setup, checkpoint_id)
        phrase = " ".join((phrase or "").split())
        return self.calls.explain(self.ref, setup, checkpoint_id, ckpt, image, method, target_class, phrase,
                                  bool(faithfulness)).unwrap()

    def explain_here(self, setup: ClassSetup, checkpoint_id: str | None, checkpoint: PromptCheckpoint | None,
                     image: Image.Image, method: str, target_class: str | None, phrase: str,
                     faithfulness: bool = False) -> Explanation:
        predictor = self.predictor(setup, checkpoint_id, checkpoint)
        expl = explain_image(predictor, image, method, target_class, phrase)
        if faithfulness:
            phrase_feature = encode_cached(self.backbone, [phrase])[0] if phrase and method != "rollout" else None
            expl = dataclasses.replace(expl, faithfulness=explanation_faithfulness(
                predictor.model, image, expl, predictor.text_features, predictor.class_names, phrase_feature))
        return expl
