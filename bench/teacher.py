"""The benchmarks' clouds: OpenAI-compatible `/v1/chat/completions` servers on a free loopback port. `teacher`
always answers one label, so a bench measures the agent's escalation path, not a model; `gold_teacher`
simulates a teacher that knows the dataset's answers (bench/improve.py).

Benchmarks import no test module: the tests' scriptable cloud (tests/support/cloud.py) may change for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], dict[str, Any]]  # the request body -> the answer object the model returns


@contextlib.contextmanager
def teacher(label: str) -> Iterator[str]:
    """Serve for the block; yields the base URL (up to /v1). No entities, where the schema asks for them."""

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        return {"label": label, **({"entities": []} if _entity_schema(request) is not None else {})}

    with _serve(answer) as url:
        yield url


def _entity_schema(request: dict[str, Any]) -> dict[str, Any] | None:
    """The answer schema's `entities` property, when the request (json_schema mode) asks for entities."""
    schema = request.get("response_format", {}).get("json_schema", {}).get("schema", {})
    found = schema.get("properties", {}).get("entities")
    return found if isinstance(found, dict) else None


@contextlib.contextmanager
def gold_teacher(gold: dict[str, dict[str, Any]], labels: list[str], accuracy: float, seed: int = 0) -> Iterator[str]:
    """A simulated teacher, not a model: answers each text (`gold`: text -> its dataset record) with the
    record's gold label with probability `accuracy` (drawn per text from a hash, so a text gets the same
    answer every time), else with another label of `labels`; with the record's entities (of the types the
    request's schema allows) when the schema asks for entities. Yields the base URL."""

    def label_of(text: str) -> str:
        digest = hashlib.sha256(f"{seed}|{text}".encode()).digest()
        label = str(gold.get(text, {}).get("intent", labels[0]))
        if int.from_bytes(digest[:4], "big") / 2**32 < accuracy:
            return label
        others = [x for x in labels if x != label]
        return others[int.from_bytes(digest[4:8], "big") % len(others)]

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        text = request["messages"][-1]["content"]
        reply: dict[str, Any] = {"label": label_of(text)}
        entity = _entity_schema(request)
        if entity is not None:
            allowed = set(entity["items"]["properties"]["type"]["enum"])
            found = gold.get(text, {}).get("entities", [])
            reply["entities"] = [{"type": e["type"], "value": e["value"]} for e in found if e["type"] in allowed]
        return reply

    with _serve(answer) as url:
        yield url


@contextlib.contextmanager
def _serve(answer: Answer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            content = json.dumps(answer(request))
            data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
