"""One message in, at most one message out: parse, run the model, build the reply or the error.

Every AgentError becomes an error reply; nothing a client sends can stop the daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import structlog

from edge_agent.config import AgentSettings, Binding, ModelEntry, ModelsFile
from edge_agent.errors import AgentError, BadRequest, CloudUnavailable, Internal, Overloaded, TooLarge, UnknownModel
from edge_agent.escalation import Escalator, Job, WaitForCloud
from edge_agent.manifest import Manifest
from edge_agent.messages import (
    Envelope,
    Inbound,
    Outbound,
    Request,
    encode,
    error_reply,
    parse,
    peek,
    reply,
    valid_topic,
)
from edge_agent.runtimes.pool import ModelPool
from edge_agent.spool import Spool

log = structlog.get_logger("edge_agent.handler")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching (+ one level, # the rest); $-topics never match a leading wildcard."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    pat, top = pattern.split("/"), topic.split("/")
    for i, level in enumerate(pat):
        if level == "#":
            return True
        if i >= len(top) or (level != "+" and level != top[i]):
            return False
    return len(pat) == len(top)


class Handler:
    """Knows the request API and the sensor bindings; knows nothing of MQTT sockets."""

    def __init__(
        self,
        settings: AgentSettings,
        models: ModelsFile,
        pool: ModelPool,
        escalator: Escalator | None = None,
        spool: Spool | None = None,
        missing: dict[str, tuple[ModelEntry, Manifest]] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.pool = pool
        self.escalator = escalator or Escalator(settings, models)
        self.spool = spool
        self.missing = missing or {}  # models only the cloud can answer here
        self.on_wait: Callable[[], None] = lambda: None
        self.prefix = settings.topic_prefix
        self.req_prefix = f"{self.prefix}/req/"

    def subscriptions(self) -> list[str]:
        return [f"{self.req_prefix}+", *(b.topic for b in self.models.bindings)]

    async def handle(self, msg: Inbound) -> Outbound | None:
        """The reply; None when there is none to send now (a request waiting for the cloud)."""
        return await self._route(msg, can_wait=True)

    async def retry(self, msg: Inbound) -> Outbound | None:
        """Another try for a waiting request; WaitForCloud while the cloud is still away."""
        return await self._route(msg, can_wait=False)

    async def _route(self, msg: Inbound, can_wait: bool) -> Outbound | None:
        if msg.topic.startswith(self.req_prefix):
            return await self._request(msg, msg.topic[len(self.req_prefix) :], can_wait)
        binding = self._binding(msg.topic)
        if binding is None:
            log.warning("unroutable", topic=msg.topic)
            return None
        return await self._sensor(msg, binding, can_wait)

    def overloaded(self, msg: Inbound) -> Outbound | None:
        """The reply for a message we have no room for: cheap, no model run."""
        return self.refusal(msg, Overloaded(f"more than {self.settings.max_inflight} messages in flight; retry later"))

    def expired(self, msg: Inbound) -> Outbound | None:
        """The reply for a request that waited for the cloud longer than its time to live."""
        ttl = self.settings.cloud.wait_ttl_s if self.settings.cloud else 0
        return self.refusal(msg, CloudUnavailable(f"waited {ttl:g}s for the cloud; giving up"))

    def refusal(self, msg: Inbound, error: AgentError) -> Outbound | None:
        """An error reply built from the message alone, addressed as its answer would be."""
        if msg.topic.startswith(self.req_prefix):
            model = msg.topic[len(self.req_prefix) :]
            env = peek(msg.payload, self.settings.max_payload_bytes)
            return self._error(msg, model, env, error)
        binding = self._binding(msg.topic)
        if binding is None:
            return None
        body = {**error_reply(None, error, binding.model), "topic": msg.topic}
        log.warning("request_failed", code=error.code, topic=msg.topic)
        return Outbound(self._output_topic(binding, msg.topic), encode(body))

    def _binding(self, topic: str) -> Binding | None:
        return next((b for b in self.models.bindings if topic_matches(b.topic, topic)), None)

    async def _request(self, msg: Inbound, model: str, can_wait: bool) -> Outbound | None:
        env = peek(msg.payload, self.settings.max_payload_bytes)
        try:
            if msg.response_topic is not None and not valid_topic(msg.response_topic):
                raise BadRequest("response topic must not contain wildcards")
            request = parse(msg.payload, self.settings.max_payload_bytes)
            body = await self._answer(model, request, msg.received)
        except WaitForCloud as exc:
            return self._wait(msg, model, exc, can_wait)
        except AgentError as exc:
            return self._error(msg, model, env, exc)
        except Exception as exc:  # a bug must not kill the daemon; it still answers
            log.exception("internal_error", model=model)
            return self._error(msg, model, env, Internal(f"{type(exc).__name__}"))
        return Outbound(self._reply_topic(msg, model, env), encode(body), msg.correlation, _paid(body))

    async def _answer(self, model: str, request: Request, received: float) -> dict[str, Any]:
        served = self.pool.get(model)
        entry, manifest = (served.entry, served.manifest) if served else self.missing.get(model, (None, None))
        if entry is None or manifest is None:
            names = ", ".join([*self.pool.served, *self.missing]) or "none"
            raise UnknownModel(f"no model named {model!r}; serving: {names}")
        budget = request.deadline_ms or entry.deadline_ms or self.settings.deadline_ms
        job = Job(model, entry, manifest, served, request, received + budget / 1000)
        answer = await self.escalator.answer(job)
        latency = (time.monotonic() - received) * 1000
        label, source = answer.prediction.label, answer.source
        log.debug("request", model=model, label=label, source=source, latency_ms=round(latency, 3))
        body = reply(request.id, model, manifest.version, answer.prediction, latency, answer.source)
        return {**body, **answer.extras()}

    def _wait(self, msg: Inbound, model: str, exc: WaitForCloud, can_wait: bool) -> Outbound | None:
        """Park a route=cloud request in the spool; a full spool or none at all is an error reply."""
        if not can_wait:
            raise exc
        cloud = self.settings.cloud
        if self.spool is None or cloud is None or self.spool.counts()["waiting"] >= cloud.wait_max:
            return self.refusal(msg, CloudUnavailable(f"{exc.message}, but no room is left to wait"))
        self.spool.wait(model, msg, cloud.wait_ttl_s)
        self.on_wait()
        log.info("request_waits_for_cloud", model=model, reason=str(exc.reason))
        return None

    def _reply_topic(self, msg: Inbound, model: str, env: Envelope) -> str:
        if msg.response_topic and valid_topic(msg.response_topic):
            return msg.response_topic
        return env.reply_to or f"{self.prefix}/res/{model}"

    def _error(self, msg: Inbound, model: str, env: Envelope, exc: AgentError) -> Outbound:
        log.warning("request_failed", code=exc.code, reason=exc.message, model=model, id=env.id)
        body = error_reply(env.id, exc, model)
        return Outbound(self._reply_topic(msg, model, env), encode(body), msg.correlation)

    async def _sensor(self, msg: Inbound, binding: Binding, can_wait: bool) -> Outbound | None:
        out_topic = self._output_topic(binding, msg.topic)
        try:
            text = sensor_text(msg.payload, binding.text_field, self.settings.max_payload_bytes)
            body = await self._answer(binding.model, Request(text=text), msg.received)
            body.pop("id")
        except WaitForCloud as exc:
            return self._wait(msg, binding.model, exc, can_wait)
        except AgentError as exc:
            log.warning("sensor_failed", code=exc.code, reason=exc.message, topic=msg.topic)
            body = error_reply(None, exc, binding.model)
        return Outbound(out_topic, encode({**body, "topic": msg.topic}), durable=_paid(body))

    def _output_topic(self, binding: Binding, topic: str) -> str:
        return binding.output.format(topic=topic, model=binding.model, device_id=self.settings.device_id)


def sensor_text(payload: bytes, path: str | None, max_bytes: int) -> str:
    """The text a sensor sent: the raw payload, or a string at a dot path inside its JSON."""
    if len(payload) > max_bytes:
        raise TooLarge(f"payload has {len(payload)} bytes; the limit is {max_bytes}")
    try:
        raw = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"payload is not UTF-8 (byte {exc.start})") from None
    text = raw.strip() if path is None else _dig(raw, path)
    if not text:
        raise BadRequest("sensor text is empty")
    return text


def _dig(raw: str, path: str) -> str:
    try:
        node: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"payload is not JSON: {exc.msg}") from None
    for key in path.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise BadRequest(f"payload has no field {path!r}")
    if not isinstance(node, str):
        raise BadRequest(f"field {path!r} is not a string")
    return node.strip()


def _paid(body: dict[str, Any]) -> bool:
    """Whether the answer came from the cloud: redoing it would cost a call, so its reply is spooled."""
    return body.get("source") == "cloud"
