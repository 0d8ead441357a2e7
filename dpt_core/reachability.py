"""Is the Hugging Face Hub reachable? One quick look at startup instead of ~24 s of retries.

Without a network, huggingface_hub retries every request five times with growing pauses
before it reads the local cache. ``work_offline_if_unreachable`` opens one TCP connection
to the Hub's host; when that fails within a few seconds, the process switches to offline
mode (``HF_HUB_OFFLINE``): cached models still load, missing ones fail at once with one
message.
"""
from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub's host (``HF_ENDPOINT``, else huggingface.co) opens in time."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def offline_mode() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def work_offline_if_unreachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Switch to offline mode when the Hub cannot be reached; True when it did.

    huggingface_hub reads ``HF_HUB_OFFLINE`` when it is imported (its ``constants``) and
    transformers likewise, so both the variables and an already imported huggingface_hub
    are set.
    """
    if offline_mode() or hub_reachable(timeout_s):
        return False
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - a dependency of open_clip, always installed
        pass
    return True


__all__ = ["hub_reachable", "offline_mode", "work_offline_if_unreachable"]
