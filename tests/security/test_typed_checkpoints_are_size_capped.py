"""Threat: a typed ``hf-hub:`` id makes the server download (and keep) a file of any size.

Prompt checkpoints are kilobytes; before a download the server asks the Hub for the file's
size and refuses one over the cap (``dpt_core.checkpoint.MAX_*_BYTES``), and it refuses an
oversized file already on disk before parsing it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dpt_core.checkpoint import CONFIG_NAME, MAX_CONFIG_BYTES, TENSORS_NAME, CheckpointError, read_folder

COMMIT = "0123456789abcdef0123456789abcdef01234567"

_SCRIPT = """
from dpt_core.checkpoint import load_checkpoint
from dpt_core.hub import HubError
try:
    load_checkpoint("hf-hub:owner/huge", "btmri", token=False)
except HubError as exc:
    print("refused:", exc)
"""


@pytest.fixture
def huge_file_hub():
    """A stand-in Hub on 127.0.0.1 whose every file is said to be 5 GB; records the methods it is asked."""
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append((self.command, self.path))
            self.send_response(200)
            self.send_header("x-repo-commit", COMMIT)
            self.send_header("etag", '"5gb"')
            self.send_header("content-length", str(5 * 2**30))
            self.end_headers()  # no body is ever sent: a GET would fail, and must not happen

        do_GET = do_HEAD = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_an_oversized_hub_file_is_refused_before_it_is_downloaded(huge_file_hub, tmp_path):
    url, seen = huge_file_hub
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "at most 1 MB" in done.stdout
    assert seen and all(method == "HEAD" for method, _ in seen)  # asked for the size, fetched nothing
    assert not any(p.is_file() and p.stat().st_size > 0 for p in (tmp_path / "hf-home").rglob("*"))


def test_an_oversized_file_on_disk_is_refused_before_parsing(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"pad": "x" * (MAX_CONFIG_BYTES + 1)}))
    (tmp_path / TENSORS_NAME).write_bytes(b"")
    with pytest.raises(CheckpointError, match="larger than 1 MB"):
        read_folder(tmp_path)
