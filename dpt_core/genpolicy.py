"""Which description generators a *visitor* of the app may use, and with which token.

The app is reachable by anyone, through the page or through Gradio's API, so a
visitor's input never names what the server talks to or loads:

* the model comes from an allowlist in the server's configuration,
  ``DPT_GENERATION_MODELS`` (comma-separated), set by the Space owner. A visitor's
  model id is used only when it is exactly one of those entries, so a URL, a local
  folder or any other Hub model is refused before anything is contacted or loaded.
  Unset, Hugging Face Inference may use ``DEFAULT_HF_MODEL`` and the local backend
  nothing; set to an empty string, both language-model backends are off;
* Hugging Face Inference runs only with the visitor's own token, for that request;
  the server's token (``HF_TOKEN``, a stored login) is never sent on a visitor's behalf.

The command line is the server owner's own tool and does not go through this module.
"""
from __future__ import annotations

import os

from .describe import (
    DEFAULT_HF_MODEL,
    DescriptionGenerator,
    GenerationError,
    make_generator,
)
from .errors import InputError

GENERATION_MODELS_ENV = "DPT_GENERATION_MODELS"
LLM_BACKENDS = ("hf-inference", "local")


def allowed_generation_models(backend: str) -> tuple[str, ...]:
    """The models the server's configuration allows for ``backend`` (in the order listed)."""
    raw = os.environ.get(GENERATION_MODELS_ENV)
    if raw is None:  # not configured: only the default remote model, never a local one
        return (DEFAULT_HF_MODEL,) if backend == "hf-inference" else ()
    return tuple(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip()))


def check_generation_model(backend: str, model: str | None) -> str:
    """The allowlisted model a visitor asked for (the first allowed one when empty).

    Raises GenerationError, whose message lists the allowed models (they are the
    owner's public configuration) but never repeats what the visitor typed.
    """
    allowed = allowed_generation_models(backend)
    if not allowed:
        raise GenerationError(
            "This server offers no language model for this backend (the server's owner can list "
            f"models in {GENERATION_MODELS_ENV}). Use the description bank instead.")
    wanted = (model or "").strip()
    if not wanted:
        return allowed[0]
    if wanted not in allowed:
        raise GenerationError("This model is not offered by this server. Choose one of: " + ", ".join(allowed) + ".")
    return wanted


def visitor_generator(backend: str, model: str | None, token: str | None) -> DescriptionGenerator:
    """A language-model generator for one visitor request (``backend``: "hf-inference" or "local").

    Hugging Face Inference gets the visitor's token only and is told not to fall back
    to the server's; without a token of the visitor's own the request is refused here.
    """
    if backend not in LLM_BACKENDS:
        raise InputError(f"unknown language-model backend {backend!r}")
    model = check_generation_model(backend, model)
    if backend == "local":
        return make_generator("local", model=model)
    token = (token or "").strip()
    if not token:
        raise GenerationError("Hugging Face Inference needs your own Hugging Face token (used for this request "
                              "only, never stored): this server does not lend its token.")
    return make_generator("hf-inference", model=model, token=token, server_token=False)
