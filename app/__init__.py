"""The Gradio app of the Biomed-DPT demo: layout, event wiring, formatting, session state.

Import order matters on Hugging Face ZeroGPU Spaces: ``spaces`` must be imported
before torch (it patches CUDA initialisation), so this package imports it first,
before any submodule pulls in torch through ``dpt_core``. Elsewhere ``spaces`` is
absent and ``gpu`` is a no-op decorator.

Privacy defaults are set here too, before gradio is imported anywhere: no usage
analytics and no Hub telemetry.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if importlib.util.find_spec("spaces") is not None:  # pragma: no cover - only on Hugging Face Spaces
    import spaces  # noqa: F401  (before torch: see the module docstring)

    gpu: Callable[..., Any] = spaces.GPU
else:

    def gpu(fn: Callable | None = None, **_kwargs: Any) -> Callable:
        """No-op stand-in for ``spaces.GPU`` (usable as ``@gpu`` or ``@gpu(duration=...)``)."""
        if fn is None:
            return lambda f: f
        return fn


__all__ = ["gpu"]
