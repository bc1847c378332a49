"""One message in, one outcome out: a reply (a result or an error), a wait for the cloud, or a logged drop.

`handle` is total: whatever a message holds, and whatever goes wrong below it, it ends in exactly
one outcome, so the delivery layer can settle (acknowledge) every message exactly once.
"""

from __future__ import annotations

import time
from typing import Protocol

import structlog

from edge_agent.config.models_file import Binding, ModelEntry, ModelsFile
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.messages import (
    Answer,
    CommandDone,
    CommandReply,
    Envelope,
    Inbound,
    ModelReply,
    Outbound,
    ReplyBody,
    Request,
    encode,
    message_id,
    parse,
    parse_with,
    sensor_text,
)
from edge_agent.contract.topics import ReplyPolicy, matches, shared, topic_problem
from edge_agent.errors import AgentError, BadRequest, CloudUnavailable, Internal, Overloaded, UnknownModel
from edge_agent.ops.metrics import Metrics
from edge_agent.routing.policy import Reason
from edge_agent.routing.router import CloudWait, Job, Router
from edge_agent.runtimes.pool import ModelPool, Served
from edge_agent.serving import commands
from edge_agent.transport.outcome import Drop, Outcome, Parked, Reply

log = structlog.get_logger("edge_agent.serving.handler")

Missing = dict[str, tuple[ModelEntry, Manifest]]  # models only the cloud can answer here (they cannot load)
UNKNOWN_MODEL = "_unknown"  # the metrics' model label for requests naming no model served here


Attempt = Reply | CloudWait | Drop  # one try; a CloudWait is parked (new) or kept (waiting)


class Parking(Protocol):
    def park(self, model: str, msg: Inbound) -> bool:
        """Keep the request until the cloud is back; False when there is no room (or no disk)."""
        ...


class Handler:
    """Knows the request API, the sensor bindings and the reply-topic policy; knows nothing of sockets."""

    def __init__(
        self,
        settings: AgentSettings,
        models: ModelsFile,
        pool: ModelPool,
        router: Router,
        parking: Parking | None = None,
        missing: Missing | None = None,
        operator: commands.Operator | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models = models
        self.pool = pool
        self.router = router
        self.parking = parking
        self.missing = missing or {}  # models only the cloud can answer here
        self.prefix = settings.topic_prefix
        self.req_prefix = f"{self.prefix}/req/"
        self.cmd_prefix = f"{settings.agent_prefix}/cmd/models/"  # commands go to each agent, never shared
        self.cmd_results = f"{settings.agent_prefix}/res/cmd"  # where a command without a reply address is answered
        self.operator = operator
        self.policy = ReplyPolicy(settings.fleet_filter, settings.reply_topics, settings.reply_to_agent_topics)

    def subscriptions(self) -> list[str]:
        operator = [f"{self.cmd_prefix}+"] if self.operator is not None else []
        group = self.settings.shared_group
        bindings = [shared(group, b.topic) for b in self.models.bindings]
        return [shared(group, f"{self.req_prefix}+"), *operator, *bindings]

    async def handle(self, msg: Inbound) -> Outcome:
        """The outcome of a new message; never raises."""
        attempt = await self.attempt(msg)
        if not isinstance(attempt, CloudWait):
            return attempt
        if self.parking is not None and self.parking.park(attempt.model, msg):
            log.info("request_waits_for_cloud", model=attempt.model, reason=str(attempt.reason))
            return Parked()
        unavailable = CloudUnavailable(
            f"the cloud is unavailable ({attempt.reason}) and no room is left to wait", escalation=str(Reason.FORCED)
        )
        return self.refusal(msg, unavailable)

    async def attempt(self, msg: Inbound) -> Attempt:
        """One try at a message (new, or waiting for the cloud); never raises: this is the boundary
        where a bug becomes an `internal` error reply instead of silence."""
        try:
            return await self._route(msg)
        except Exception as exc:
            log.exception("internal_error", topic=msg.topic)
            return self.refusal(msg, Internal(f"the agent failed on this message ({type(exc).__name__})"))

    async def _route(self, msg: Inbound) -> Attempt:
        if msg.topic.startswith(self.req_prefix):
            return await self._request(msg, msg.topic[len(self.req_prefix) :])
        if msg.topic.startswith(self.cmd_prefix) and self.operator is not None:
            return await self._command(msg, msg.topic[len(self.cmd_prefix) :])
        binding = self._binding(msg.topic)
        if binding is None:
            return _drop("no binding matches the topic", msg)
        return await self._sensor(msg, binding)

    def overloaded(self, msg: Inbound) -> Outcome:
        """The reply for a message we have no room for: cheap, no model run."""
        return self.refusal(msg, Overloaded(f"more than {self.settings.max_inflight} messages in flight; retry later"))

    def expired(self, msg: Inbound) -> Outcome:
        """The reply for a request that waited for the cloud longer than its time to live."""
        ttl = self.settings.cloud.wait_ttl_s if self.settings.cloud else 0
        return self.refusal(msg, CloudUnavailable(f"waited {ttl:g}s for the cloud; giving up", str(Reason.FORCED)))

    def refusal(self, msg: Inbound, error: AgentError) -> Reply | Drop:
        """An error reply built from the message alone, addressed as its answer would be."""
        if msg.topic.startswith(self.cmd_prefix) and self.operator is not None:
            envelope, _ = parse_with(msg.payload, self.settings.max_payload_bytes, commands.validate)
            topic, _ = self._reply_topic(msg, envelope.reply_to, "", self.cmd_results)
            return self._command_reply(msg, envelope, topic, error)
        if msg.topic.startswith(self.req_prefix):
            model = msg.topic[len(self.req_prefix) :]
            envelope, _ = parse(msg.payload, self.settings.max_payload_bytes)
            topic, _ = self._reply_topic(msg, envelope.reply_to, model)
            rid = envelope.id if envelope.id is not None else message_id(msg)
            return self._reply(msg, topic, ModelReply(rid, model, error), model=model)
        binding = self._binding(msg.topic)
        if binding is None:
            return _drop(error.message, msg)
        reply = ModelReply(message_id(msg), binding.model, error, topic=msg.topic)
        return self._reply(msg, self._output_topic(binding, msg.topic), reply, correlate=False, model=binding.model)

    def _binding(self, topic: str) -> Binding | None:
        return next((b for b in self.models.bindings if matches(b.topic, topic)), None)

    async def _request(self, msg: Inbound, model: str) -> Attempt:
        envelope, request = parse(msg.payload, self.settings.max_payload_bytes)
        rid = envelope.id if envelope.id is not None else message_id(msg)
        topic, refused = self._reply_topic(msg, envelope.reply_to, model)
        if refused is not None:
            request = refused
        if isinstance(request, AgentError):
            return self._reply(msg, topic, ModelReply(rid, model, request), model=model)
        result = await self._answer(model, request, msg.received)
        if isinstance(result, CloudWait):
            return result
        return self._reply(msg, topic, self._model_reply(rid, model, result, msg), model=model)

    async def _command(self, msg: Inbound, action: str) -> Attempt:
        """An operator's pull or rollback: the reply says what serves now, or why nothing changed."""
        assert self.operator is not None
        envelope, parsed = parse_with(msg.payload, self.settings.max_payload_bytes, commands.validate)
        topic, refused = self._reply_topic(msg, envelope.reply_to, "", self.cmd_results)
        if refused is not None:  # the reply address: nothing runs for a command that cannot be answered
            return self._command_reply(msg, envelope, topic, refused)
        if isinstance(parsed, AgentError):
            return self._command_reply(msg, envelope, topic, parsed)
        outcome: CommandDone | AgentError
        try:
            outcome = await commands.run(self.operator, action, *parsed)
        except AgentError as exc:
            outcome = exc
        return self._command_reply(msg, envelope, topic, outcome)

    def _command_reply(
        self, msg: Inbound, envelope: Envelope, topic: str, outcome: CommandDone | AgentError
    ) -> Reply | Drop:
        rid = envelope.id if envelope.id is not None else message_id(msg)
        return self._reply(msg, topic, CommandReply(rid, outcome))

    async def _sensor(self, msg: Inbound, binding: Binding) -> Attempt:
        try:
            text = sensor_text(msg.payload, binding.text_field, self.settings.max_payload_bytes)
            result = await self._answer(binding.model, Request(text=text), msg.received)
        except AgentError as exc:
            result = exc
        if isinstance(result, CloudWait):
            return result
        reply = self._model_reply(message_id(msg), binding.model, result, msg, topic=msg.topic)
        return self._reply(msg, self._output_topic(binding, msg.topic), reply, correlate=False, model=binding.model)

    def _known(self, model: str) -> tuple[Served | None, ModelEntry, Manifest] | None:
        """The model as loaded here, with its entry and manifest; `served` is None for a cloud-only model."""
        served = self.pool.get(model)
        if served is not None:
            return served, served.entry, served.manifest
        missing = self.missing.get(model)
        return (None, *missing) if missing else None

    async def _answer(self, model: str, request: Request, received: float) -> Answer | CloudWait | AgentError:
        known = self._known(model)
        if known is None:
            names = ", ".join([*self.pool.served, *self.missing]) or "none"
            return UnknownModel(f"no model named {model!r}; serving: {names}")
        served, entry, manifest = known
        budget = request.deadline_ms or entry.deadline_ms or self.settings.deadline_ms
        try:
            return await self.router.answer(Job(model, entry, manifest, served, request, received + budget / 1000))
        except AgentError as exc:
            return exc

    def _model_reply(
        self, rid: str | int, model: str, result: Answer | AgentError, msg: Inbound, topic: str | None = None
    ) -> ModelReply:
        known = self._known(model)
        version = known[2].version if known else None
        return ModelReply(rid, model, result, version, (time.monotonic() - msg.received) * 1000, topic)

    def _reply_topic(
        self, msg: Inbound, reply_to: str | None, model: str, default: str | None = None
    ) -> tuple[str, AgentError | None]:
        """Where the reply goes: the MQTT 5 response topic, else `reply_to`, else the model's result topic.
        A client's address the policy refuses sends the error to the result topic instead."""
        default = default or f"{self.prefix}/res/{model}"
        wanted = msg.response_topic if msg.response_topic is not None else reply_to
        if wanted is None:
            return default, None
        problem = self.policy.problem(wanted)
        if problem is None:
            return wanted, None
        return default, BadRequest(problem)

    def _reply(
        self,
        msg: Inbound,
        topic: str,
        reply: ReplyBody,
        correlate: bool = True,
        model: str | None = None,
    ) -> Reply | Drop:
        """The reply, serialised here, counted in the metrics when it answers a model's request (`model`)."""
        result = reply.result
        if isinstance(result, AgentError):
            log.warning("request_failed", code=result.code, reason=result.message, topic=msg.topic, to=topic)
        problem = topic_problem(topic)  # a client's address passed the policy; this is the last check
        if problem is not None:
            return _drop(f"the reply topic {problem}", msg)
        if model is not None:
            self._count(model, result, msg)
            log.debug("replied", model=model, to=topic, outcome=_outcome(result), ms=_ms_since(msg.received))
        durable = isinstance(result, Answer) and result.source == "cloud"  # paid for: never asked twice
        return Reply(Outbound(topic, encode(reply), msg.correlation if correlate else None, durable))

    def _count(self, model: str, result: object, msg: Inbound) -> None:
        """One reply in the metrics; a name no model has is counted as `_unknown`, so a client publishing
        to endless made-up topics cannot grow the label set without bound."""
        seconds = time.monotonic() - msg.received
        model = model if self._known(model) is not None else UNKNOWN_MODEL
        if isinstance(result, Answer):  # a fallback's trigger: why it wanted the cloud; its reason: why it went without
            fallback = result.reason if result.source == "local-fallback" else None
            trigger = result.trigger if fallback else result.reason
            self.metrics.replied(model, result.source, "answered", seconds, trigger, fallback)
        elif isinstance(result, AgentError):  # an escalation that ended without an answer still counts as one
            escalation = result.escalation if isinstance(result, CloudUnavailable) else None
            self.metrics.replied(model, "none", result.code, seconds, escalation, None)

    def _output_topic(self, binding: Binding, topic: str) -> str:
        return binding.output.format(topic=topic, model=binding.model, device_id=self.settings.device_id)


def _drop(why: str, msg: Inbound) -> Drop:
    log.warning("message_dropped", reason=why, topic=msg.topic)
    return Drop(why)


def _outcome(result: Answer | AgentError | CommandDone) -> str:
    """A reply's outcome in one word, for the debug log: who answered, or the error code."""
    if isinstance(result, Answer):
        return result.source
    return result.code if isinstance(result, AgentError) else "done"


def _ms_since(received: float) -> float:
    return round((time.monotonic() - received) * 1000, 3)
