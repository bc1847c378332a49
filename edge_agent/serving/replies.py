"""What every endpoint shares: the models it answers for, where a reply may go, and the one place a reply
becomes an outbound message (checked, counted, logged, serialised)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from edge_agent.config.models_file import ModelEntry
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.messages import Answer, CommandDone, Inbound, ModelReply, Outbound, ReplyBody, encode
from edge_agent.contract.topics import ReplyPolicy, topic_problem
from edge_agent.errors import AgentError, BadRequest, CloudUnavailable
from edge_agent.ops.metrics import Metrics
from edge_agent.runtimes.pool import ModelPool, Served
from edge_agent.transport.outcome import Drop, Reply

log = structlog.get_logger("edge_agent.serving.replies")

Missing = dict[str, tuple[ModelEntry, Manifest]]  # models only the cloud can answer here (they cannot load)
Known = tuple[Served | None, ModelEntry, Manifest]
UNKNOWN_MODEL = "_unknown"  # the metrics' model label for requests naming no model served here


class Replies:
    def __init__(self, settings: AgentSettings, pool: ModelPool, missing: Missing, metrics: Metrics) -> None:
        self.settings, self.pool, self.missing, self.metrics = settings, pool, missing, metrics
        self.policy = ReplyPolicy(settings.fleet_filter, settings.reply_topics, settings.reply_to_agent_topics)
        self.answered: Callable[[ModelReply], None] = lambda _reply: None  # each model reply sent (Home Assistant)

    def known(self, model: str) -> Known | None:
        """The model as loaded here, with its entry and manifest; `served` is None for a cloud-only model."""
        served = self.pool.get(model)
        if served is not None:
            return served, served.entry, served.manifest
        missing = self.missing.get(model)
        return (None, *missing) if missing else None

    def names(self) -> str:
        return ", ".join([*self.pool.served, *self.missing]) or "none"

    def model_reply(
        self, rid: str | int, model: str, result: Answer | AgentError, msg: Inbound, topic: str | None = None
    ) -> ModelReply:
        """A model's reply, with the version that answered and the time since the message arrived."""
        known = self.known(model)
        version = known[2].version if known else None
        return ModelReply(rid, model, result, version, (time.monotonic() - msg.received) * 1000, topic)

    def address(self, msg: Inbound, reply_to: str | None, default: str) -> tuple[str, AgentError | None]:
        """Where the reply goes: the MQTT 5 response topic, else `reply_to`, else `default`. A client's
        address the policy refuses sends the error to `default` instead."""
        wanted = msg.response_topic if msg.response_topic is not None else reply_to
        if wanted is None:
            return default, None
        problem = self.policy.problem(wanted)
        if problem is None:
            return wanted, None
        return default, BadRequest(problem)

    def send(
        self, msg: Inbound, topic: str, reply: ReplyBody, correlate: bool = True, model: str | None = None
    ) -> Reply | Drop:
        """The reply, serialised here, counted in the metrics when it answers a model's request (`model`)."""
        result = reply.result
        if isinstance(result, AgentError):
            log.warning("request_failed", code=result.code, reason=result.message, topic=msg.topic, to=topic)
        problem = topic_problem(topic)  # a client's address passed the policy; this is the last check
        if problem is not None:
            return drop(f"the reply topic {problem}", msg)
        if model is not None:
            self._count(model, result, msg)
            log.debug("replied", model=model, to=topic, outcome=_outcome(result), ms=_ms_since(msg.received))
        if isinstance(reply, ModelReply):
            self.answered(reply)
        durable = isinstance(result, Answer) and result.source == "cloud"  # paid for: never asked twice
        return Reply(Outbound(topic, encode(reply), msg.correlation if correlate else None, durable))

    def _count(self, model: str, result: object, msg: Inbound) -> None:
        """One reply in the metrics; a name no model has is counted as `_unknown`, so a client publishing
        to endless made-up topics cannot grow the label set without bound."""
        seconds = time.monotonic() - msg.received
        configured = self.known(model) is not None or model in self.pool.down
        model = model if configured else UNKNOWN_MODEL
        if isinstance(result, Answer):  # a fallback's trigger: why it wanted the cloud; its reason: why it went without
            fallback = result.reason if result.source == "local-fallback" else None
            trigger = result.trigger if fallback else result.reason
            self.metrics.replied(model, result.source, "answered", seconds, trigger, fallback)
        elif isinstance(result, AgentError):  # an escalation that ended without an answer still counts as one
            escalation = result.escalation if isinstance(result, CloudUnavailable) else None
            self.metrics.replied(model, "none", result.code, seconds, escalation, None)


def drop(why: str, msg: Inbound) -> Drop:
    """Nothing can be sent for this message: the refusal is logged."""
    log.warning("message_dropped", reason=why, topic=msg.topic)
    return Drop(why)


def _outcome(result: Answer | AgentError | CommandDone) -> str:
    """A reply's outcome in one word, for the debug log: who answered, or the error code."""
    if isinstance(result, Answer):
        return result.source
    return result.code if isinstance(result, AgentError) else "done"


def _ms_since(received: float) -> float:
    return round((time.monotonic() - received) * 1000, 3)
