"""Operator commands on MQTT: `{prefix}/cmd/models/pull` and `{prefix}/cmd/models/rollback`.

Payload `{"model": NAME, "version": V?, "id"?, "reply_to"?}`; the reply goes to the MQTT 5 response
topic, else `reply_to`, else `{prefix}/res/cmd`. Only operators may publish under `cmd/`: the
broker's ACL must say so (README, "Operating it safely"), as a pull changes what the device serves.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from edge_agent.contract.manifest import NAME, VERSION, VERSION_RULE
from edge_agent.contract.messages import CommandDone, CommandReply, Envelope, Inbound, message_id, parse_with
from edge_agent.errors import AgentError, ArtifactError, BadRequest, Timeout
from edge_agent.lifecycle.versions import AlreadyServing
from edge_agent.serving.replies import Replies
from edge_agent.transport.outcome import Drop, Reply

log = structlog.get_logger("edge_agent.serving.commands")
ACTIONS = ("pull", "rollback")


class Refused(AgentError):
    """A pull or rollback the device would not do (bad signature, older version, ...)."""

    code = "refused"


class Operator(Protocol):
    async def pull(self, name: str, version: str | None = None, command: str | None = None) -> str: ...

    async def rollback(self, name: str, version: str | None = None, command: str | None = None) -> str: ...


def validate(data: dict[str, Any]) -> tuple[str, str | None]:
    """(model, version) of a command object; BadRequest naming the field otherwise."""
    model, version = data.get("model"), data.get("version")
    if not isinstance(model, str) or not NAME.fullmatch(model):
        raise BadRequest("field 'model' is required: a model name")
    if version is not None and (not isinstance(version, str) or not VERSION.fullmatch(version)):
        raise BadRequest(f"field 'version' must be a version: {VERSION_RULE}")
    return model, version


async def run(
    operator: Operator, action: str, model: str, version: str | None, command: str, deadline_s: float
) -> CommandDone:
    """What the command did, within `deadline_s`; raises AgentError (unknown action, refused, still running:
    the work goes on after the deadline, and the retained status says how it ended)."""
    if action not in ACTIONS:
        raise BadRequest(f"unknown command {action!r}; commands: {', '.join(ACTIONS)}")
    work = asyncio.ensure_future((operator.pull if action == "pull" else operator.rollback)(model, version, command))
    try:
        line = await asyncio.wait_for(asyncio.shield(work), deadline_s)
    except AlreadyServing as exc:  # an outcome, not a failure: a repeated command changes nothing
        line = str(exc)
    except ArtifactError as exc:
        raise Refused(str(exc)) from None
    except asyncio.TimeoutError:  # 3.10: not the builtin TimeoutError
        work.add_done_callback(_finished_late)
        raise Timeout(
            f"{action} of {model} still running after {deadline_s:g} s: it goes on; the retained status says when "
            "it is done (a rollback cancels a pull)"
        ) from None
    return CommandDone(action, model, line)


def _finished_late(work: asyncio.Future[str]) -> None:
    """A command answered `timeout` ended: its outcome is logged (the status shows what serves)."""
    if work.cancelled():
        return
    exc = work.exception()
    log.info("command_finished_late", outcome=str(exc) if exc is not None else work.result())


class Commands:
    """The command endpoint, `{agent}/cmd/models/{action}`: an operator's pull or rollback; the reply says what
    serves now, or why nothing changed. Commands go to each agent, never to a shared group."""

    def __init__(self, replies: Replies, operator: Operator) -> None:
        self.replies, self.operator = replies, operator
        self.settings = replies.settings
        self.prefix = f"{self.settings.agent_prefix}/cmd/models/"
        self.results = f"{self.settings.agent_prefix}/res/cmd"  # where a command without a reply address is answered

    async def attempt(self, msg: Inbound, action: str) -> Reply | Drop:
        envelope, parsed = parse_with(msg.payload, self.settings.max_payload_bytes, validate)
        topic, refused = self.replies.address(msg, envelope.reply_to, self.results)
        if refused is not None:  # the reply address: nothing runs for a command that cannot be answered
            return self._reply(msg, envelope, topic, refused)
        if isinstance(parsed, AgentError):
            return self._reply(msg, envelope, topic, parsed)
        outcome: CommandDone | AgentError
        try:
            rid = envelope.id if envelope.id is not None else message_id(msg)
            outcome = await run(self.operator, action, *parsed, str(rid), self.settings.command_deadline_s)
        except AgentError as exc:
            outcome = exc
        return self._reply(msg, envelope, topic, outcome)

    def refuse(self, msg: Inbound, action: str, error: AgentError) -> Reply | Drop:
        envelope, _ = parse_with(msg.payload, self.settings.max_payload_bytes, validate)
        topic, _ = self.replies.address(msg, envelope.reply_to, self.results)
        return self._reply(msg, envelope, topic, error)

    def _reply(self, msg: Inbound, envelope: Envelope, topic: str, outcome: CommandDone | AgentError) -> Reply | Drop:
        rid = envelope.id if envelope.id is not None else message_id(msg)
        return self.replies.send(msg, topic, CommandReply(rid, outcome))
