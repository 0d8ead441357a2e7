"""The bridge between the Gradio tabs and ``dpt_core``: one object per process, no gradio here.

``Services`` owns the process-wide, read-only backbone (loaded lazily, once), a
small LRU of predictors (text features are the expensive part, so one predictor
per combination of classes, descriptions and checkpoint), a cache of loaded
checkpoints, the lazily filled cache of predictions on the shipped examples, and
the lock that keeps few-shot training to one run at a time. Every model call goes
through ``app.device`` (a GPU call on ZeroGPU), which finds this object again by
``self.ref``. Per-user data never lives here: it is in ``gr.State`` (see ``app.session``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence, TypeVar

from PIL import Image

from dpt_core.backbone import DEFAULT_BACKBONE, Backbone, BackboneError, load_backbone
from dpt_core.checkpoint import PromptCheckpoint, check_backbone, load_checkpoint
from dpt_core.data import LabelledImages
from dpt_core.describe import (
    GenerationRequest,
    GenerationResult,
    make_generator,
)
from dpt_core.errors import InputError
from dpt_core.explain import Explanation
from dpt_core.explanation import METHODS, check_target, explain_image
from dpt_core.faithfulness import explanation_faithfulness
from dpt_core.fewshot import FewShotResult, TrainSettings
from dpt_core.genpolicy import check_generation_model, visitor_generator
from dpt_core.hub import hub_token_for
from dpt_core.limits import check_generation_count, check_text_budget
from dpt_core.modality import ModalityCheck, check_modality
from dpt_core.predictor import Prediction, Predictor
from dpt_core.prompt_bank import encode_cached
from dpt_core.registry import entry as registry_entry
from dpt_core.workflow import ClassSetup, setup_classes

from .device import CALLS, DeviceCalls, register
from .job_channel import FileChannel
from .jobs import run_fewshot

log = logging.getLogger(__name__)

TINY_SPEC = "tiny"
CUSTOM = "custom"  # the preset dropdown's "my own classes" choice
RANDOM_WEIGHTS_BANNER = (
    "Random weights: the backbone '{spec}' is not a trained model, so every prediction, "
    "contribution and attention map shown here is meaningless."
)
FALLBACK_BANNER = (
    "The default BiomedCLIP backbone could not be downloaded from the Hugging Face Hub and is not "
    "in the local cache, so the app runs on the 'tiny' test backbone instead. "
)
GENERATOR_BACKENDS = ("retrieval", "hf-inference", "local")
EXPLAIN_METHODS = METHODS

T = TypeVar("T")


class _LRU:
    """A small thread-safe LRU cache; each missing key is built once even when asked for concurrently."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts only, never held while building

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]  # type: ignore[return-value]
            key_lock = self._building.setdefault(key, threading.Lock())
        # Two users asking for the same new predictor wait for one build (prompt encoding is
        # seconds on CPU); other keys, cached or not, are not blocked by a slow Hub download.
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]  # type: ignore[return-value]
            try:
                value = build()
            except BaseException:  # propagate, cache nothing: a retry builds again
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return value


def _checkpoint_id(value: str | None) -> str | None:
    """A checkpoint id as the caches key it: stripped; None (zero-shot) when empty."""
    return (value or "").strip() or None


@dataclass
class PredictOutcome:
    prediction: Prediction
    modality: ModalityCheck


class Services:
    """Everything the tabs need from ``dpt_core``, behind plain Python calls."""

    def __init__(
        self,
        backbone: str | Backbone | None = None,
        device: str | None = None,
        predictor_cache: int = 8,
        checkpoint_cache: int = 16,
        example_cache: int = 256,
        calls: DeviceCalls | None = None,
    ):
        if isinstance(backbone, Backbone):
            self._backbone: Backbone | None = backbone
            self.spec = backbone.spec
        else:
            self._backbone = None
            self.spec = backbone or os.environ.get("DPT_BACKBONE") or DEFAULT_BACKBONE
        self.device = device  # None: CUDA when present (dpt_core.backbone.default_device)
        self._fallback_reason: str | None = None
        self._load_lock = threading.Lock()
        self._predictors = _LRU(predictor_cache)
        self._checkpoints = _LRU(checkpoint_cache)
        self._generators = _LRU(1)  # a local LLM is large: keep one
        self._retrievers = _LRU(1)  # one over all shipped banks; it keeps their embeddings
        self._examples = _LRU(example_cache)  # predictions on the shipped examples (lazy example caching)
        self.train_lock = threading.Lock()  # the Few-shot tab: one training at a time per process
        self.calls = calls or CALLS  # how model work runs: see app.device
        self.ref = register(self)  # what a GPU call gets instead of this object

    # ------------------------------------------------------------------ backbone
    @property
    def backbone(self) -> Backbone:
        """The frozen backbone, loaded on first use; the default falls back to ``tiny`` when unreachable."""
        if self._backbone is None:
            with self._load_lock:
                if self._backbone is None:
                    self._backbone = self._load()
        return self._backbone

    def _load(self) -> Backbone:
        try:
            return load_backbone(self.spec, self.device)
        except BackboneError as exc:
            if self.spec != DEFAULT_BACKBONE:
                raise  # an explicit choice that fails is the user's to fix, not to paper over
            self._fallback_reason = str(exc)
            log.warning("default backbone unavailable (%s); falling back to %r", exc, TINY_SPEC)
            return load_backbone(TINY_SPEC, self.device)

    @property
    def loaded(self) -> bool:
        return self._backbone is not None

    @property
    def banner(self) -> str | None:
        """A warning to show on every page while it holds (random weights, fallback), else None."""
        backbone = self.backbone
        text = ""
        if self._fallback_reason:
            text += FALLBACK_BANNER  # the reason itself is in the log
        if backbone.random_weights:
            text += RANDOM_WEIGHTS_BANNER.format(spec=backbone.spec)
        return text or None

    # ------------------------------------------------------------------ classes and predictors
    def setup(
        self,
        preset_name: str | None,
        class_names: Sequence[str] | None = None,
        descriptions: Mapping[str, Sequence[str]] | None = None,
    ) -> ClassSetup:
        """Class setup from a preset (or ``custom``/None) with optional class and description overrides.

        Raises ValueError (unknown preset, bad class list), DescriptionsError and BudgetError.
        """
        preset = None if not preset_name or preset_name == CUSTOM else preset_name
        if preset is None and not class_names:
            raise InputError("custom classes: add at least two class names to the table")
        setup = setup_classes(preset, class_names or None, descriptions)
        # The whole request's text cost, before any encoding (cached sentences are free).
        cached = self._backbone.text_cache.__contains__ if self._backbone is not None else None  # stay lazy
        check_text_budget(setup.class_names, setup.templates, setup.descriptions, cached or (lambda _t: False))
        return setup

    def predictor(self, setup: ClassSetup, checkpoint_id: str | None = None,
                  checkpoint: PromptCheckpoint | None = None) -> Predictor:
        """The predictor of this combination (cached); ``checkpoint_id`` None means zero-shot.

        ``checkpoint``: the loaded checkpoint of ``checkpoint_id``, when the caller has it.
        """
        checkpoint_id = _checkpoint_id(checkpoint_id)
        preset = setup.preset.name if setup.preset else None
        key = self._predictor_key(setup, checkpoint_id)

        def build() -> Predictor:
            ckpt = checkpoint
            if ckpt is None and checkpoint_id:
                ckpt = self.load_checkpoint(checkpoint_id, preset)
            log.info("building predictor: %d classes, checkpoint %s", len(setup.class_names), checkpoint_id or "none")
            return Predictor(self.backbone, setup.class_names, setup.templates, setup.descriptions,
                             template=setup.template, n_ctx=setup.n_ctx, checkpoint=ckpt)

        return self._predictors.get_or_build(key, build)

    def _predictor_key(self, setup: ClassSetup, checkpoint_id: str | None) -> tuple:
        return (
            self.backbone.spec,
            tuple(setup.class_names),
            setup.template,
            setup.n_ctx,
            tuple(setup.templates),
            tuple((c, tuple(setup.descriptions.get(c, ()))) for c in setup.class_names),
            _checkpoint_id(checkpoint_id),
        )

    def load_checkpoint(self, checkpoint_id: str, preset: str | None = None) -> PromptCheckpoint:
        """A checkpoint by id (folder, ``hf-hub:...``, ``.pth.tar``), checked against the backbone; cached.

        Registry entries say which method made a Dassl file (BiomedCoOp or Biomed-DPT).
        Raises CheckpointError or HubError (not cached, so a retry after a network hiccup works).
        """
        checkpoint_id = checkpoint_id.strip()
        known = registry_entry(checkpoint_id)
        preset = known.preset if known is not None else preset
        method = known.method if known is not None else None

        def build() -> PromptCheckpoint:
            # The server's token only for its own registry's checkpoints, never for a typed id.
            ckpt = load_checkpoint(checkpoint_id, preset=preset, method=method, token=hub_token_for(known is not None))
            check_backbone(ckpt, self.backbone)
            return ckpt

        return self._checkpoints.get_or_build((checkpoint_id, preset, method), build)

    # ------------------------------------------------------------------ model calls
    # Each public call checks its arguments and fetches what needs the network here, then
    # runs the model through ``self.calls`` (a GPU call on ZeroGPU); ``*_here`` is the part
    # that runs there, in whichever process that is.

    def _checkpoint(self, setup: ClassSetup, checkpoint_id: str | None) -> tuple[str | None, PromptCheckpoint | None]:
        checkpoint_id = _checkpoint_id(checkpoint_id)
        if checkpoint_id is None:
            return None, None
        return checkpoint_id, self.load_checkpoint(checkpoint_id, setup.preset.name if setup.preset else None)

    def predict(self, setup: ClassSetup, checkpoint_id: str | None, image: Image.Image,
                expected_modality: str | None) -> PredictOutcome:
        """Prediction of one image plus the zero-shot modality check on the same image feature."""
        checkpoint_id, ckpt = self._checkpoint(setup, checkpoint_id)
        return self.calls.predict(self.ref, setup, checkpoint_id, ckpt, image, expected_modality).unwrap()

    def predict_example(self, example: str, setup: ClassSetup, checkpoint_id: str | None, image: Image.Image,
                        expected_modality: str | None) -> PredictOutcome:
        """``predict`` on a shipped example, computed once per configuration and then served from memory.

        ``example`` names the example (and frame). Only shipped examples come here
        (``app.examples``): they are not user data, so their results may outlive a session.
        """
        key = (example, self._predictor_key(setup, checkpoint_id), expected_modality)
        return self._examples.get_or_build(key, lambda: self.predict(setup, checkpoint_id, image, expected_modality))

    def predict_here(self, setup: ClassSetup, checkpoint_id: str | None, checkpoint: PromptCheckpoint | None,
                     image: Image.Image, expected_modality: str | None) -> PredictOutcome:
        predictor = self.predictor(setup, checkpoint_id, checkpoint)
        feats = predictor.image_features([image])  # [1, E], normalised
        prediction = predictor.predict_features(feats)[0]
        return PredictOutcome(prediction, check_modality(predictor.backbone, feats[0], expected_modality))

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

    # ------------------------------------------------------------------ descriptions
    def generate_descriptions(
        self,
        setup: ClassSetup,
        class_name: str,
        backend: str = "retrieval",
        n: int = 10,
        token: str | None = None,
        model: str | None = None,
    ) -> GenerationResult:
        """Expert descriptions for one class. Raises GenerationError (and ValueError for bad arguments)."""
        if backend not in GENERATOR_BACKENDS:
            raise InputError(f"unknown description backend {backend!r}")
        p = setup.preset
        request = GenerationRequest(
            class_name=class_name,
            modality=p.modality if p else "medical imaging",
            organ=p.organ if p else "",
            n=check_generation_count(n),  # any client may send any number
            other_classes=tuple(c for c in setup.class_names if c != class_name),
        )
        if backend == "hf-inference":
            # Over the network, no model here. A fresh generator per call: the visitor's token is
            # used for this request and never kept; the model comes from the server's allowlist.
            return visitor_generator(backend, model, token).generate(request)
        if backend == "local":
            model = check_generation_model(backend, model)  # allowlisted, or GenerationError
        return self.calls.describe(self.ref, p.name if p else None, request, backend, model or "").unwrap()

    # ------------------------------------------------------------------ few-shot training
    def run_fewshot(self, setup: ClassSetup, data: LabelledImages, settings: TrainSettings, out_dir: str | Path,
                    description: str, channel: FileChannel) -> FewShotResult:
        """A few-shot run through ``self.calls`` (GPU calls, in slots, on ZeroGPU).

        The channel is a ``FileChannel``: progress and Stop must reach a worker process.
        """
        return run_fewshot(self.calls.fewshot_phases(self.ref), setup, data, settings, out_dir, description,
                           channel, self.calls.slice_s)

    def describe_here(self, preset: str | None, request: GenerationRequest, backend: str,
                      model: str) -> GenerationResult:
        if backend == "retrieval":
            return self._retrievers.get_or_build("shipped", self._retrieval).generate(request)
        generator = self._generators.get_or_build(model, lambda: make_generator("local", model=model))
        return generator.generate(request)

    def _retrieval(self):
        # Every shipped bank; the generator itself keeps to the request's modality.
        # With random weights an embedding match is noise; word overlap is at least honest.
        embed = None if self.backbone.random_weights else (lambda texts: encode_cached(self.backbone, texts))
        return make_generator("retrieval", embed=embed)
