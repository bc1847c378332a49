"""Operator commands on MQTT: `{prefix}/cmd/models/pull` and `{prefix}/cmd/models/rollback`.

Payload `{"model": NAME, "version": V?, "id"?, "reply_to"?}`; the reply goes to the MQTT 5 response
topic, else `reply_to`, else `{prefix}/res/cmd`. Only operators may publish under `cmd/`: the
broker's ACL must say so (README, "Operating it safely"), as a pull changes what the device serves.
"""

from __future__ import annotations

from typing import Any, Protocol

from edge_agent.contract.manifest import NAME
from edge_agent.contract.messages import CommandDone
from edge_agent.errors import AgentError, ArtifactError, BadRequest
from edge_agent.lifecycle.versions import AlreadyServing

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
    if version is not None and (not isinstance(version, str) or not 1 <= len(version) <= 64 or "/" in version):
        raise BadRequest("field 'version' must be a version string (1 to 64 characters, no '/')")
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
