"""Wire types, and the one place a payload is parsed and a reply body is built.

Parsing is total: any bytes become a request or an AgentError, plus whatever address could be
read (id, reply_to) so the error still reaches its sender. Encoding is total too: no reply body
can fail to become bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from edge_agent.contract.prediction import Prediction
from edge_agent.contract.topics import topic_problem
from edge_agent.errors import AgentError, BadRequest, TooLarge

T = TypeVar("T")

RequestId = str | int
Route = Literal["auto", "local", "cloud"]
ROUTES: tuple[str, ...] = get_args(Route)
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Request:
    """A parsed, valid request. `deadline_ms` is the client's budget from arrival."""

    text: str
    id: RequestId | None = None
    deadline_ms: int | None = None
    reply_to: str | None = None
    route: Route | None = None


@dataclass(frozen=True)
class Envelope:
    """What could be read of a message even when it is invalid: where to send the error."""

    id: RequestId | None = None
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


@dataclass(frozen=True)
class Answer:
    """What a reply states about its prediction: who gave it, and why it did (or did not) go to the cloud."""

    prediction: Prediction
    source: Literal["local", "cloud", "local-fallback"]
    reason: str | None = None  # why it went to the cloud, or why a low-confidence answer stayed local
    trigger: str | None = None  # for a fallback: what made it try the cloud
    local: Prediction | None = None
    local_ms: float | None = None
    cloud_ms: float | None = None

    @property
    def escalated(self) -> bool:
        """The cloud was asked (whatever it answered)."""
        return self.cloud_ms is not None


def decode(payload: bytes, max_bytes: int) -> Any:
    """The JSON value of a payload; BadRequest or TooLarge for anything else, whatever the bytes."""
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
    except RecursionError:
        raise BadRequest("payload is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise BadRequest(f"payload is not usable JSON: {exc}") from None


def parse(payload: bytes, max_bytes: int) -> tuple[Envelope, Request | AgentError]:
    """One pass over a request payload: its address, and the request or the error naming its defect."""
    return parse_with(payload, max_bytes, parse_object)


def parse_with(
    payload: bytes, max_bytes: int, validate: Callable[[dict[str, Any]], T]
) -> tuple[Envelope, T | AgentError]:
    """A JSON object the API takes: its address (id, reply_to), and what `validate` makes of it or the
    AgentError naming its defect; total, whatever the bytes."""
    try:
        data = decode(payload, max_bytes)
    except AgentError as exc:
        return Envelope(), exc
    if not isinstance(data, dict):
        return Envelope(), BadRequest(f"payload must be a JSON object, not {type(data).__name__}")
    envelope = Envelope(id=_id(data.get("id")), reply_to=_topic(data.get("reply_to")))
    try:
        return envelope, validate(data)
    except AgentError as exc:
        return envelope, exc


def _id(value: Any) -> RequestId | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, str) and (len(value) > MAX_ID_CHARS or not _unicode(value)):
        return None
    return value


def _topic(value: Any) -> str | None:
    return value if isinstance(value, str) and topic_problem(value) is None else None


def _unicode(text: str) -> bool:
    """No lone surrogates: the text can be encoded as UTF-8 (in a reply, in a cloud request)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_object(data: dict[str, Any]) -> Request:
    """Validate a request object; every defect is a BadRequest naming its field."""
    text = data.get("text")
    if not isinstance(text, str):
        raise BadRequest("field 'text' is required and must be a string")
    if not _unicode(text):
        raise BadRequest("field 'text' is not valid Unicode (a lone surrogate)")
    if not text.strip():
        raise BadRequest("field 'text' is empty")
    rid = data.get("id")
    if rid is not None and _id(rid) is None:
        raise BadRequest(f"field 'id' must be a string of at most {MAX_ID_CHARS} characters or an integer")
    deadline = data.get("deadline_ms")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= 0):
        raise BadRequest("field 'deadline_ms' must be a positive integer")
    reply_to = data.get("reply_to")
    if reply_to is not None:
        problem = topic_problem(reply_to) if isinstance(reply_to, str) else "is not a string"
        if problem is not None:
            raise BadRequest(f"field 'reply_to' {problem}")
    route = data.get("route")
    if route is not None and route not in ROUTES:
        raise BadRequest(f"field 'route' must be one of {', '.join(ROUTES)}")
    return Request(text=text, id=rid, deadline_ms=deadline, reply_to=reply_to, route=route)


def sensor_text(payload: bytes, path: str | None, max_bytes: int) -> str:
    """The text a sensor sent: the raw payload, or a string at a dot path inside its JSON."""
    if path is None:
        if len(payload) > max_bytes:
            raise TooLarge(f"payload has {len(payload)} bytes; the limit is {max_bytes}")
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise BadRequest(f"payload is not UTF-8 (byte {exc.start})") from None
    else:
        text = _dig(decode(payload, max_bytes), path)
    if not text:
        raise BadRequest("sensor text is empty")
    return text


def _dig(node: Any, path: str) -> str:
    for key in path.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise BadRequest(f"payload has no field {path!r}")
    if not isinstance(node, str):
        raise BadRequest(f"field {path!r} is not a string")
    if not _unicode(node):
        raise BadRequest(f"field {path!r} is not valid Unicode (a lone surrogate)")
    return node.strip()


def message_id(msg: Inbound) -> str:
    """A stable id for a message that brought none, so a consumer can drop the duplicate replies
    at-least-once delivery may cause: from the MQTT 5 correlation data, else the topic and payload
    (identical payloads on one topic share it: deduplicate within a short window)."""
    digest = hashlib.blake2b(digest_size=12)
    if msg.correlation is not None:
        digest.update(b"correlation\0" + msg.correlation)
    else:
        digest.update(msg.topic.encode("utf-8", "surrogatepass") + b"\0" + msg.payload)
    return digest.hexdigest()


@dataclass(frozen=True)
class CommandDone:
    """A pull or rollback the device carried out (or had nothing to do for): the line says which."""

    command: str
    model: str
    message: str


@dataclass(frozen=True)
class ModelReply:
    """The reply to a request or a sensor message (`topic`: its source topic): a result or an error, with
    the id a consumer deduplicates by. README's reply table is this type's `as_dict`."""

    id: RequestId | None
    model: str
    result: Answer | AgentError
    version: str | None = None
    latency_ms: float | None = None
    topic: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "model": self.model}
        if isinstance(self.result, AgentError):
            out["error"] = _error(self.result)
        else:
            out.update(_result(self.result, self.version, self.latency_ms))
        if self.topic is not None:
            out["topic"] = self.topic
        return out


@dataclass(frozen=True)
class CommandReply:
    """The reply to an operator command: what serves now, or why nothing changed."""

    id: RequestId | None
    result: CommandDone | AgentError

    def as_dict(self) -> dict[str, Any]:
        if isinstance(self.result, AgentError):
            return {"id": self.id, "error": _error(self.result)}
        done = self.result
        return {"id": self.id, "command": done.command, "model": done.model, "ok": True, "message": done.message}


ReplyBody = ModelReply | CommandReply


def _error(error: AgentError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}


def _result(answer: Answer, version: str | None, latency_ms: float | None) -> dict[str, Any]:
    p = answer.prediction
    cloud = answer.source == "cloud"
    out: dict[str, Any] = {
        "version": p.version or version,
        "label": p.label,
        "confidence": None if cloud else round(p.confidence, 6),
        "top": [] if cloud else [{"label": label, "confidence": round(c, 6)} for label, c in p.top],
        "entities": [e.as_dict() for e in p.entities],
        "source": answer.source,
        "escalated": answer.escalated,
        "reason": answer.reason,
        "latency_ms": _ms(latency_ms),
        "timings": {"local_ms": _ms(answer.local_ms), "cloud_ms": _ms(answer.cloud_ms)},
    }
    if p.fields is not None:  # an extraction: say so, so clients need not guess from keys
        out.update(task="extract", fields=p.fields)
    if answer.trigger is not None:
        out["trigger"] = answer.trigger
    if cloud and answer.local is not None:
        out.update(local_label=answer.local.label, local_confidence=round(answer.local.confidence, 6))
        out["agree"] = answer.local.label == p.label
    return out


def _ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def encode(reply: ReplyBody) -> bytes:
    """The reply as UTF-8 JSON, at the edge; never fails (a stray surrogate becomes its JSON escape)."""
    return json.dumps(reply.as_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")
