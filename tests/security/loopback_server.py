"""A recording HTTP server on loopback only, for the threat tests (imported as a fixture)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorder:
    """What a fake endpoint saw: one (method, path, headers) per request."""

    url: str
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    status: int = 401  # what every request gets back
    body: dict = field(default_factory=lambda: {"error": "unauthorized"})

    def authorizations(self) -> list[str]:
        return [h.get("authorization", "") for _, _, h in self.requests]


@contextmanager
def recording_server() -> Iterator[Recorder]:
    """An HTTP server on 127.0.0.1 that records every request (and answers ``status``)."""
    holder: dict[str, Recorder] = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            rec = holder["rec"]
            rec.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            data = json.dumps(rec.body).encode()
            self.send_response(rec.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["rec"] = Recorder(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["rec"]
    finally:
        server.shutdown()
        server.server_close()
