"""Escalation to any OpenAI-compatible `/v1/chat/completions` (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM).

The cloud answers within the model's own vocabulary: one of its labels, or fields of its schema.
Every answer is validated here; one that does not validate is a failure like an HTTP 500, so the
router treats a confused cloud the same as a broken one. The API key is sent, never logged.
Servers differ in which `response_format` they take; `auto` finds out per endpoint (see FORMATS).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timezone
from typing import Any, Literal, Protocol

import httpx
import structlog

from edge_agent.config.models_file import ModelsFile
from edge_agent.config.sections import CloudSettings
from edge_agent.config.settings import AgentSettings
from edge_agent.contract import schema
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.prediction import Entity, Prediction
from edge_agent.errors import CloudUnavailable

FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # ASCII only: str.isdigit() also takes "²", which float() refuses
RETRY_AFTER_MAX_S = 60.0  # a server asking for more is capped; the request deadline usually ends it sooner

Format = Literal["json_schema", "json_object", "prompt"]
FORMATS: tuple[Format, ...] = ("json_schema", "json_object", "prompt")  # auto's order, strictest first
# How servers refuse a response_format: OpenAI and vLLM 400, FastAPI's default 422, llama_cpp.server 500
# (it wraps the validation error); each names the field in the body, which tells a refusal from an outage.
REFUSAL_CODES = (400, 422, 500)

log = structlog.get_logger("edge_agent.routing.cloud")


class CloudFailure(CloudUnavailable):
    """A cloud call that gave no usable answer; `reason` is cloud_timeout, cloud_error or cloud_invalid."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def answer_schema(manifest: Manifest) -> dict[str, Any]:
    """What the cloud must return for this model: its labels, its entity types, its fields."""
    if manifest.task == "extract":
        return manifest.fields_schema or {"type": "object"}
    props: dict[str, Any] = {"label": {"type": "string", "enum": list(manifest.labels)}}
    if manifest.task == "classify+extract" and manifest.entity_types:
        entity = {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": list(manifest.entity_types)},
                "value": {"type": "string"},
            },
            "required": ["type", "value"],
            "additionalProperties": False,
        }
        props["entities"] = {"type": "array", "items": entity}
    if manifest.task == "classify+extract" and manifest.fields_schema:
        props["fields"] = manifest.fields_schema
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def instructions(manifest: Manifest, wanted: dict[str, Any]) -> str:
    """A strict prompt, so servers without structured output still answer in shape."""
    if manifest.task == "classify":
        labels = ", ".join(json.dumps(label) for label in manifest.labels)
        return (
            'Classify the user\'s message. Reply with only a JSON object {"label": L} where L is exactly '
            f"one of: {labels}. No other text."
        )
    return (
        "Read the user's message and reply with only a JSON object that validates against this JSON "
        f"schema (entity values are exact substrings of the message): {json.dumps(wanted)}. No other text."
    )


def endpoint_name(base_url: str) -> str:
    """The base URL without user info: safe for status and logs."""
    url = httpx.URL(base_url)
    return str(url.copy_with(username=None, password=None, query=None))


class CallMeter(Protocol):
    """Who counts a call's retries and tokens (metrics)."""

    def retried(self) -> None: ...

    def used(self, prompt_tokens: int, completion_tokens: int) -> None: ...


class _Unmetered:
    def retried(self) -> None:
        pass

    def used(self, prompt_tokens: int, completion_tokens: int) -> None:
        pass


class CloudClient:
    """One endpoint; `ask` returns a validated Prediction or raises CloudFailure in time for the deadline."""

    def __init__(
        self,
        settings: CloudSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.name = endpoint_name(settings.base_url)
        self.format: Format = "json_schema" if settings.response_format == "auto" else settings.response_format
        self.jitter = jitter
        key = settings.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        base = settings.base_url.rstrip("/") + "/"
        self.http = httpx.AsyncClient(base_url=base, headers=headers, transport=transport)

    async def ask(self, manifest: Manifest, text: str, deadline: float, meter: CallMeter | None = None) -> Prediction:
        """The cloud's answer for one text; `deadline` is time.monotonic() by which to give up; `meter`
        hears of retries and of the tokens each answered HTTP call used.

        Total: whatever goes wrong ends as a CloudFailure, so the caller (and its breaker) sees every failure.
        """
        with failing_as("cloud_error", f"asking {self.name}"):
            wanted = answer_schema(manifest)
            content = await self._in_a_format_it_takes(manifest, wanted, text, deadline, meter or _Unmetered())
        with failing_as("cloud_invalid", "reading the answer"):
            return read_answer(content, wanted, manifest, text)

    async def _in_a_format_it_takes(
        self, manifest: Manifest, wanted: dict[str, Any], text: str, deadline: float, meter: CallMeter
    ) -> str:
        """The answer's text; in auto a refused format moves on to the next at once (no retry, no failure)."""
        while True:
            used = self.format
            try:
                return await self._post(self.request_body(manifest, wanted, text, used), deadline, meter)
            except FormatRefused as refused:
                self._fall_back(used, str(refused))

    def _fall_back(self, refused: Format, why: str) -> None:
        """Remember the next format after `refused` (later asks go straight there); CloudFailure outside auto."""
        if self.settings.response_format != "auto" or refused == "prompt":
            raise CloudFailure(
                "cloud_error", f"{self.name} refuses response_format {refused} ({why}); set response_format: auto"
            )
        later = FORMATS[FORMATS.index(refused) + 1]
        if FORMATS.index(later) > FORMATS.index(self.format):  # a concurrent ask may be further already
            log.info("cloud_format_refused", endpoint=self.name, refused=refused, now=later, why=why)
            self.format = later

    def request_body(
        self, manifest: Manifest, wanted: dict[str, Any], text: str, mode: Format | None = None
    ) -> dict[str, Any]:
        """A chat completion asking for the answer in `mode` (default: the format that works here)."""
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [
                {"role": "system", "content": instructions(manifest, wanted)},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
            "max_tokens": 100 if manifest.task == "classify" else 512,
        }
        mode = mode or self.format
        if mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": wanted, "strict": True},
            }
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object", "schema": wanted}
        return body

    async def _post(self, body: dict[str, Any], deadline: float, meter: CallMeter) -> str:
        """POST with retries on 429/5xx only, jittered exponential backoff, never past the deadline.

        A refusal of the response_format is raised as FormatRefused at once: retrying cannot change it.
        """
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            response = await self._once(body, deadline)
            code = response.status_code
            if code < 400:
                meter.used(*token_usage(response))
                return message_content(response)
            if "response_format" in body and refuses_format(response):
                raise FormatRefused(f"HTTP {code}")
            if code != 429 and code < 500:
                raise CloudFailure("cloud_error", f"HTTP {code} from {self.name}")
            if attempt + 1 == attempts:
                raise CloudFailure("cloud_error", f"HTTP {code} from {self.name} after {attempts} attempt(s)")
            delay = self._delay(attempt, response)
            if time.monotonic() + delay >= deadline:
                raise CloudFailure("cloud_timeout", f"HTTP {code} and no time left to retry")
            meter.retried()
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _once(self, body: dict[str, Any], deadline: float) -> httpx.Response:
        left = min(self.settings.timeout_s, deadline - time.monotonic())
        if left <= 0:
            raise CloudFailure("cloud_timeout", "the deadline passed before the cloud was asked")
        try:  # wait_for bounds the whole attempt: httpx's timeout is per read, and a trickle resets it
            return await asyncio.wait_for(self.http.post("chat/completions", json=body, timeout=left), left)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            raise CloudFailure("cloud_timeout", f"no answer from {self.name} within {left:.3f}s") from None
        except httpx.HTTPError as exc:
            raise CloudFailure("cloud_error", f"{type(exc).__name__} talking to {self.name}") from None

    def _delay(self, attempt: int, response: httpx.Response) -> float:
        """Retry-After when the server says so readably, else backoff * 2^attempt scaled by a 0.5..1.5 jitter."""
        after = retry_after_s(response.headers.get("retry-after", ""), time.time())
        if after is not None:
            return after
        return float(self.settings.backoff_s * 2**attempt * (0.5 + self.jitter()))

    async def aclose(self) -> None:
        await self.http.aclose()


class FormatRefused(Exception):
    """The server will not take the request's response_format: an answer about the request, not an outage."""


def refuses_format(response: httpx.Response) -> bool:
    """An error that names response_format, with a status servers use for that (REFUSAL_CODES)."""
    return response.status_code in REFUSAL_CODES and "response_format" in response.text[:4096]


@contextmanager
def failing_as(reason: str, doing: str) -> Iterator[None]:
    """The one place where an exception that is not yet a CloudFailure becomes one (RecursionError, ...)."""
    try:
        yield
    except CloudFailure:
        raise
    except Exception as exc:
        said = str(exc)[:160].encode("ascii", "backslashreplace").decode()
        raise CloudFailure(reason, f"{doing}: {type(exc).__name__}: {said}") from exc


def retry_after_s(value: str, now: float) -> float | None:
    """Retry-After as seconds to wait (delay-seconds or HTTP-date, capped); None when it is unreadable."""
    value = value.strip()
    if SECONDS.fullmatch(value):
        return min(float(value), RETRY_AFTER_MAX_S)  # float() of a long digit string is inf, never an error
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return min(max(when.timestamp() - now, 0.0), RETRY_AFTER_MAX_S)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def token_usage(response: httpx.Response) -> tuple[int, int]:
    """(prompt, completion) tokens from an answer's `usage`; (0, 0) where the server reports none."""
    try:
        usage = response.json().get("usage") or {}
        counts = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError, OverflowError):  # a server's odd numbers never cost the answer
        return 0, 0
    return max(0, counts[0]), max(0, counts[1])


def message_content(response: httpx.Response) -> str:
    """choices[0].message.content of a chat completion; anything else is a cloud_error."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise CloudFailure("cloud_error", "the reply is not a chat completion") from None
    if not isinstance(content, str):
        raise CloudFailure("cloud_error", "the reply has no text content")
    return content


def read_answer(content: str, wanted: dict[str, Any], manifest: Manifest, text: str) -> Prediction:
    """Parse and validate the model's text; a bare label is accepted for classify (prompt mode)."""
    value = _json_in(content.strip())
    bare = value if isinstance(value, str) else content.strip()
    if manifest.task == "classify" and not isinstance(value, dict) and bare in manifest.labels:
        value = {"label": bare}
    if value is None:
        raise CloudFailure("cloud_invalid", "the answer is not JSON")
    problems = schema.errors(value, wanted)
    if problems:
        raise CloudFailure("cloud_invalid", f"the answer does not validate: {problems[0]}")
    json.dumps(value, ensure_ascii=False).encode()  # a lone surrogate would break the reply later: fail here
    if manifest.task == "extract":
        return Prediction(label=None, confidence=1.0, fields=value)
    entities = [_ground(text, e) for e in value.get("entities", [])]
    return Prediction(
        label=value["label"],
        confidence=1.0,
        top=[(value["label"], 1.0)],
        entities=[e for e in entities if e is not None],
        fields=value.get("fields"),
    )


def _json_in(content: str) -> Any:
    """The JSON in an answer, tolerating code fences and chatter around one object."""
    for candidate in (FENCE.sub("", content), content[content.find("{") : content.rfind("}") + 1]):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def _ground(text: str, entity: dict[str, str]) -> Entity | None:
    """Character offsets of an entity value in the text; None when the cloud made it up."""
    start = text.find(entity["value"])
    if start < 0:
        start = text.lower().find(entity["value"].lower())
    if start < 0 or not entity["value"]:
        return None
    end = start + len(entity["value"])
    return Entity(entity["type"], text[start:end], start, end, 1.0)


def cloud_problems(settings: AgentSettings, models: ModelsFile) -> list[str]:
    """What stops escalation from working as configured, one line each (the key is never shown)."""
    cloud = settings.cloud
    if cloud is None:
        return [
            f"model {m.name}: route is 'cloud' but no cloud endpoint is configured (settings: cloud)"
            for m in models.models
            if m.route == "cloud"
        ]
    try:
        key = cloud.api_key()
    except KeyError:
        return [f"cloud: api_key_env {cloud.api_key_env} is not set"]
    except OSError as exc:
        return [f"cloud: api_key_file {cloud.api_key_file}: cannot read: {exc.strerror}"]
    if key == "":
        return ["cloud: the API key is empty"]
    return []
