"""The Gradio app of the Biomed-DPT demo: layout, event wiring, formatting, session state.

Import order matters on Hugging Face ZeroGPU Spaces: ``spaces`` must be imported
before torch (it patches CUDA initialisation), so this package imports it first,
before any submodule pulls in torch through ``dpt_core``. Elsewhere ``spaces`` is
absent and ``gpu`` is a no-op decorator. ``app.device`` holds every call that uses it.

Privacy defaults are set here too, before gradio is imported anywhere: no usage
analytics and no Hub telemetry.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from . import zerogpu_sim

if zerogpu_sim.enabled():  # local check of the ZeroGPU rules (see app.zerogpu_sim)
    gpu: Callable[..., Any] = zerogpu_sim.simulated_gpu
    ZERO_GPU = True
elif importlib.util.find_spec("spaces") is not None:  # pragma: no cover - only on Hugging Face Spaces
    import spaces  # noqa: F401  (before torch: see the module docstring)
    from spaces.config import Config as _SpacesConfig

    gpu = spaces.GPU  # a no-op off ZeroGPU hardware
    ZERO_GPU = bool(_SpacesConfig.zero_gpu)
else:
    ZERO_GPU = False

    def gpu(fn: Callable | None = None, **_kwargs: Any) -> Callable:
        """No-op stand-in for ``spaces.GPU`` (usable as ``@gpu`` or ``@gpu(duration=...)``)."""
        if fn is None:
            return lambda f: f
        return fn


__all__ = ["ZERO_GPU", "gpu"]
