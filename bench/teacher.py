"""The benchmarks' cloud: an OpenAI-compatible `/v1/chat/completions` on a free loopback port that always
answers one label, so a bench measures the agent's escalation path, not a model.

Benchmarks import no test module: the tests' scriptable cloud (tests/support/cloud.py) may change for them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextlib.contextmanager
def teacher(label: str) -> Iterator[str]:
    """Serve for the block; yields the base URL (up to /v1)."""
    body = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps({"label": label})}}]}
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            data = body.encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
