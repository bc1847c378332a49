"""Wire types: what clients send and what the agent answers, as JSON over MQTT."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from edge_agent.errors import AgentError, BadRequest, TooLarge
from edge_agent.runtimes import Prediction

RequestId = str | int | None
Route = Literal["auto", "local", "cloud"]
ROUTES: tuple[str, ...] = get_args(Route)


@dataclass(frozen=True)
class Request:
    """A parsed, valid request. `deadline_ms` is the client's budget from arrival."""

    text: str
    id: RequestId = None
    deadline_ms: int | None = None
    reply_to: str | None = None
    route: Route | None = None


@dataclass(frozen=True)
class Envelope:
    """What could be read of a message even when it is invalid: where to send the error."""

    id: RequestId = None
    reply_to: str | None = None


@dataclass(frozen=True)
class Inbound:
    """A message as the transport saw it; `received` is time.monotonic() at arrival."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Outbound:
    topic: str
    payload: bytes
    correlation: bytes | None = None
    durable: bool = False  # a cloud answer: spooled before its request is acked, never paid for twice


def valid_topic(topic: str) -> bool:
    """A topic one may publish to: non-empty, no wildcards, no NUL, not too long."""
    return bool(topic) and not any(c in topic for c in "+#\0") and len(topic.encode()) < 65536


def _decode(payload: bytes, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise TooLarge(f"payload has {len(payload)} bytes; the limit is {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def peek(payload: bytes, max_bytes: int) -> Envelope:
    """Best effort id and reply_to, never raising: errors still need an address."""
    try:
        data = _decode(payload, max_bytes)
    except AgentError:
        return Envelope()
    if not isinstance(data, dict):
        return Envelope()
    rid = data.get("id")
    reply_to = data.get("reply_to")
    return Envelope(
        id=rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None,
        reply_to=reply_to if isinstance(reply_to, str) and valid_topic(reply_to) else None,
    )


def parse(payload: bytes, max_bytes: int) -> Request:
    """Validate a request payload; every defect is a BadRequest or TooLarge naming it."""
    data = _decode(payload, max_bytes)
    if not isinstance(data, dict):
        raise BadRequest(f"payload must be a JSON object, not {type(data).__name__}")
    return parse_object(data)


def parse_object(data: dict[str, Any]) -> Request:
    text = data.get("text")
    if not isinstance(text, str):
        raise BadRequest("field 'text' is required and must be a string")
    if not text.strip():
        raise BadRequest("field 'text' is empty")
    rid = data.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        raise BadRequest("field 'id' must be a string or an integer")
    deadline = data.get("deadline_ms")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= 0):
        raise BadRequest("field 'deadline_ms' must be a positive integer")
    reply_to = data.get("reply_to")
    if reply_to is not None and (not isinstance(reply_to, str) or not valid_topic(reply_to)):
        raise BadRequest("field 'reply_to' must be a topic without wildcards")
    route = data.get("route")
    if route is not None and route not in ROUTES:
        raise BadRequest(f"field 'route' must be one of {', '.join(ROUTES)}")
    return Request(text=text, id=rid, deadline_ms=deadline, reply_to=reply_to, route=route)


def reply(
    request_id: RequestId,
    model: str,
    version: str,
    prediction: Prediction,
    latency_ms: float,
    source: str = "local",
) -> dict[str, Any]:
    """The success reply; a dict so callers (bindings, router) can add their keys."""
    body: dict[str, Any] = {
        "id": request_id,
        "model": model,
        "version": version,
        "label": prediction.label,
        "confidence": round(prediction.confidence, 6),
        "top": [{"label": label, "confidence": round(p, 6)} for label, p in prediction.top],
        "entities": [e.as_dict() for e in prediction.entities],
        "source": source,
        "latency_ms": round(latency_ms, 3),
    }
    if prediction.fields is not None:  # an extraction: say so, so clients need not guess from keys
        body["task"] = "extract"
        body["fields"] = prediction.fields
    return body


def error_reply(request_id: RequestId, error: AgentError, model: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": request_id, "error": {"code": error.code, "message": error.message}}
    if model is not None:
        body["model"] = model
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
