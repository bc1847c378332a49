"""A real OpenAI-compatible HTTP server on loopback that misbehaves on request.

Each incoming chat completion takes the next scripted behaviour (or the default one): answer,
answer with arbitrary content, hold until released, fail with a status code, send garbage or
any raw body, trickle an answer out a byte at a time. It records what it was sent, and tests
wait on `arrived` rather than sleeping.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_agent.contract.manifest import FileEntry, Manifest

Teacher = Callable[[str], str]


@dataclass(frozen=True)
class Act:
    """One scripted behaviour. kind: answer | content | hold | status | garbage | raw | trickle."""

    kind: str
    value: Any = None
    retry_after: str | None = None
    every_s: float = 0.0
    body: bytes = b""


def answer(label: str) -> Act:
    return Act("answer", label)


def content(text: str) -> Act:
    return Act("content", text)


def status(code: int, retry_after: str | None = None, body: bytes = b'{"error": {"message": "scripted"}}') -> Act:
    return Act("status", code, retry_after, body=body)


# How servers refuse a response_format they do not take: the status and the body's shape (messages abridged).
_OPENAI = "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."
_PYDANTIC = "literal_error at ('body', 'response_format', 'type'): Input should be 'text' or 'json_object'"
REFUSALS: dict[str, tuple[int, dict[str, Any]]] = {
    # llama_cpp.server's route handler turns FastAPI's validation error into a 500
    "llama-cpp-python": (500, {"error": {"message": _PYDANTIC, "type": "internal_server_error", "param": None}}),
    "openai": (400, {"error": {"message": _OPENAI, "type": "invalid_request_error", "param": "response_format"}}),
    "vllm": (400, {"object": "error", "message": _PYDANTIC, "type": "BadRequestError", "code": 400}),
    "fastapi": (422, {"detail": [{"type": "literal_error", "loc": ["body", "response_format", "type"]}]}),
}


def refusal(server: str = "llama-cpp-python") -> Act:
    """The response_format of this request refused, the way `server` does it."""
    code, body = REFUSALS[server]
    return status(code, body=json.dumps(body).encode())


def raw(body: bytes) -> Act:
    """A 200 whose body is exactly these bytes."""
    return Act("raw", body)


def trickle(label: str, every_s: float) -> Act:
    """A valid answer whose body comes one byte every `every_s` (a link that is slow, not silent)."""
    return Act("trickle", label, every_s=every_s)


HOLD = Act("hold")
GARBAGE = Act("garbage")


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.body["messages"][-1]["content"])


@dataclass
class FakeCloud:
    """Server state shared with the handler threads."""

    teacher: Teacher = lambda text: "weather"
    script: deque[Act] = field(default_factory=deque)
    default: Act | None = None
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *acts: Act) -> FakeCloud:
        self.script.extend(acts)
        return self

    def next_act(self, request: Seen) -> Act:
        with self.cond:
            self.seen.append(request)
            self.cond.notify_all()
            if self.script:
                return self.script.popleft()
        return self.default or answer(self.teacher(request.text))

    def arrived(self, count: int, timeout: float = 10.0) -> list[Seen]:
        """Block until `count` requests have come in (a wait on the server, not a sleep)."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.seen) >= count, timeout):
                raise TimeoutError(f"{len(self.seen)} of {count} cloud requests arrived")
            return list(self.seen)


USAGE = (40, 6)  # tokens every answer reports (prompt, completion): the metrics' spend is checked against them


def completion(text: str) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": USAGE[0], "completion_tokens": USAGE[1], "total_tokens": sum(USAGE)},
    }
    return json.dumps(body).encode()


def _handler(cloud: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            seen = Seen(dict(self.headers), json.loads(raw))
            act = cloud.next_act(seen)
            if act.kind == "hold":
                cloud.release.wait()
                act = answer(cloud.teacher(seen.text))
            if act.kind == "status":
                extra = {"Retry-After": act.retry_after} if act.retry_after else {}
                self._send(act.value, act.body, extra)
            elif act.kind == "garbage":
                self._send(200, b"<html>not json at all")
            elif act.kind == "content":
                self._send(200, completion(act.value))
            elif act.kind == "raw":
                self._send(200, act.value)
            elif act.kind == "trickle":
                self._send(200, completion(json.dumps({"label": act.value})), every_s=act.every_s)
            else:
                wants_entities = '"entities"' in str(seen.body["messages"][0]["content"])
                said = {"label": act.value, **({"entities": []} if wants_entities else {})}
                self._send(200, completion(json.dumps(said)))

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, every_s: float = 0) -> None:
            try:
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self._write(body, every_s)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its deadline): that is the point of the test

        def _write(self, body: bytes, every_s: float) -> None:
            if not every_s:
                self.wfile.write(body)
                return
            for i in range(len(body)):
                if i:
                    cloud.release.wait(every_s)  # paces the link; no test waits on it
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()

    return Handler


@contextmanager
def serve(cloud: FakeCloud | None = None, port: int = 0) -> Iterator[FakeCloud]:
    """Run the fake cloud on loopback for the duration of the block."""
    cloud = cloud or FakeCloud()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(cloud))
    server.daemon_threads = True
    cloud.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield cloud
    finally:
        cloud.release.set()
        server.shutdown()
        server.server_close()


LABELS = ["lights_on", "lights_off", "weather"]
FIELDS = {
    "type": "object",
    "properties": {"device": {"type": "string"}, "level": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["device", "level"],
    "additionalProperties": False,
}


def manifest(task: str = "classify", **kw: Any) -> Manifest:
    files = [FileEntry(path="model.onnx", role="model", sha256="0" * 64, size=1)]
    return Manifest(name="m", version="1", task=task, runtime="onnx", files=files, labels=LABELS, **kw)  # type: ignore[arg-type]
