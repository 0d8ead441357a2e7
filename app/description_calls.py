"""Expert descriptions for a class in ``Services``: retrieval from the shipped banks, or a generator.

A mixin of ``app.services.Services``. ``hf-inference`` runs over the network with the
visitor's token (never kept); ``retrieval`` and ``local`` run through ``self.calls`` (a
GPU call on ZeroGPU), whose far side is ``describe_here``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dpt_core.describe import GenerationRequest, GenerationResult, make_generator
from dpt_core.errors import InputError
from dpt_core.genpolicy import check_generation_model, visitor_generator
from dpt_core.limits import check_generation_count
from dpt_core.prompt_bank import encode_cached
from dpt_core.workflow import ClassSetup

from .cache import LRU

if TYPE_CHECKING:
    from dpt_core.backbone import Backbone

    from .device import DeviceCalls

GENERATOR_BACKENDS = ("retrieval", "hf-inference", "local")


class DescriptionCalls:
    """``Services.generate_descriptions`` and ``Services.describe_here``."""

    calls: DeviceCalls
    ref: object
    backbone: Backbone
    _generators: LRU  # a local LLM is large: keep one
    _retrievers: LRU  # one over all shipped banks; it keeps their embeddings

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
