"""Operator commands on MQTT: `{prefix}/cmd/models/pull` and `{prefix}/cmd/models/rollback`.

Payload `{"model": NAME, "version": V?, "id"?, "reply_to"?}`; the reply goes to the MQTT 5 response
topic, else `reply_to`, else `{prefix}/res/cmd`. Only operators may publish under `cmd/`: the
broker's ACL must say so (README, "Operating it safely"), as a pull changes what the device serves.
"""

from __future__ import annotations

from typing import Any, Protocol

from edge_agent.contract.manifest import NAME, VERSION, VERSION_RULE
from edge_agent.contract.messages import CommandDone, CommandReply, Envelope, Inbound, message_id, parse_with
from edge_agent.errors import AgentError, ArtifactError, BadRequest
from edge_agent.lifecycle.versions import AlreadyServing
from edge_agent.serving.replies import Replies
from edge_agent.transport.outcome import Drop, Reply

ACTIONS = ("pull", "rollback")


class Refused(AgentError):
    """A pull or rollback the device would not do (bad signature, older version, ...)."""

    code = "refused"


class Operator(Protocol):
    async def pull(self, name: str, version: str | None = None) -> str: ...

    async def rollback(self, name: str, version: str | None = None) -> str: ...


def validate(data: dict[str, Any]) -> tuple[str, str | None]:
    """(model, version) of a command object; BadRequest naming the field otherwise."""
    model, version = data.get("model"), data.get("version")
    if not isinstance(model, str) or not NAME.fullmatch(model):
        raise BadRequest("field 'model' is required: a model name")
    if version is not None and (not isinstance(version, str) or not VERSION.fullmatch(version)):
        raise BadRequest(f"field 'version' must be a version: {VERSION_RULE}")
    return model, version


async def run(operator: Operator, action: str, model: str, version: str | None) -> CommandDone:
    """What the command did; raises AgentError (unknown action, refused)."""
    if action not in ACTIONS:
        raise BadRequest(f"unknown command {action!r}; commands: {', '.join(ACTIONS)}")
    try:
        line = await (operator.pull if action == "pull" else operator.rollback)(model, version)
    except AlreadyServing as exc:  # an outcome, not a failure: a repeated command changes nothing
        line = str(exc)
    except ArtifactError as exc:
        raise Refused(str(exc)) from None
    return CommandDone(action, model, line)


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
            outcome = await run(self.operator, action, *parsed)
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
