"""One message in, one outcome out: a reply (a result or an error), a wait for the cloud, or a logged drop.

The handler picks the message's endpoint once, from its topic (requests, operator commands, Home Assistant,
sensor bindings),
and is total: whatever a message holds, and whatever goes wrong below it, it ends in exactly one outcome, so
the delivery layer can settle (acknowledge) every message exactly once.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from edge_agent.config.models_file import ModelsFile
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.messages import Inbound
from edge_agent.contract.topics import shared
from edge_agent.errors import AgentError, CloudUnavailable, Internal, Overloaded
from edge_agent.ops.metrics import Metrics
from edge_agent.routing.policy import Reason
from edge_agent.routing.router import CloudWait, Router
from edge_agent.runtimes.pool import ModelPool
from edge_agent.serving.commands import Commands, Operator
from edge_agent.serving.homeassistant import HomeAssistant
from edge_agent.serving.replies import Missing, Replies, drop
from edge_agent.serving.requests import Attempt, Requests
from edge_agent.serving.sensors import Sensors
from edge_agent.transport.outcome import Drop, Outcome, Parked, Reply

log = structlog.get_logger("edge_agent.serving.handler")


class Parking(Protocol):
    def park(self, model: str, msg: Inbound) -> bool:
        """Keep the request until the cloud is back; False when there is no room (or no disk)."""
        ...


class Endpoint(Protocol):
    async def attempt(self, msg: Inbound, key: str, /) -> Attempt:
        """One try at a message; `key` is what the topic names (a model, an action, the sensor's topic)."""
        ...

    def refuse(self, msg: Inbound, key: str, error: AgentError, /) -> Reply | Drop:
        """An error reply built from the message alone, addressed as its answer would be."""
        ...


class Handler:
    """Knows the API's endpoints and the reply-topic policy; knows nothing of sockets."""

    def __init__(
        self,
        settings: AgentSettings,
        models: ModelsFile,
        pool: ModelPool,
        router: Router,
        parking: Parking | None = None,
        missing: Missing | None = None,
        operator: Operator | None = None,
        metrics: Metrics | None = None,
        homeassistant: HomeAssistant | None = None,
    ) -> None:
        self.settings, self.pool, self.parking = settings, pool, parking
        self.replies = Replies(settings, pool, missing or {}, metrics or Metrics())
        self.requests = Requests(self.replies, router)
        self.commands = Commands(self.replies, operator) if operator is not None else None
        self.sensors = Sensors(self.replies, self.requests, models)
        self.homeassistant = homeassistant
        if homeassistant is not None:
            self.replies.answered = homeassistant.fire

    def subscriptions(self) -> list[str]:
        operator = [f"{self.commands.prefix}+"] if self.commands is not None else []
        group = self.settings.shared_group
        bindings = [shared(group, b.topic) for b in self.sensors.bindings]
        ha = self.homeassistant.subscriptions() if self.homeassistant is not None else []  # each agent its own
        return [shared(group, f"{self.requests.prefix}+"), *operator, *ha, *bindings]

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
            found = self._endpoint(msg.topic)
            if found is None:
                return drop("no binding matches the topic", msg)
            endpoint, key = found
            return await endpoint.attempt(msg, key)
        except Exception as exc:
            log.exception("internal_error", topic=msg.topic)
            return self.refusal(msg, Internal(f"the agent failed on this message ({type(exc).__name__})"))

    def control(self, topic: str) -> bool:
        """An operator's command (delivery answers those outside the request slots)."""
        return self.commands is not None and topic.startswith(self.commands.prefix)

    def overloaded(self, msg: Inbound) -> Outcome:
        """The reply for a message we have no room for: cheap, no model run."""
        return self.refusal(msg, Overloaded(f"more than {self.settings.max_inflight} messages in flight; retry later"))

    def expired(self, msg: Inbound) -> Outcome:
        """The reply for a request that waited for the cloud longer than its time to live."""
        ttl = self.settings.cloud.wait_ttl_s if self.settings.cloud else 0
        return self.refusal(msg, CloudUnavailable(f"waited {ttl:g}s for the cloud; giving up", str(Reason.FORCED)))

    def refusal(self, msg: Inbound, error: AgentError) -> Reply | Drop:
        """An error reply built from the message alone, addressed as its answer would be."""
        found = self._endpoint(msg.topic)
        if found is None:
            return drop(error.message, msg)
        endpoint, key = found
        return endpoint.refuse(msg, key, error)

    def _endpoint(self, topic: str) -> tuple[Endpoint, str] | None:
        """The one place a topic is mapped to its endpoint, and to what it names there."""
        if topic.startswith(self.requests.prefix):
            return self.requests, topic[len(self.requests.prefix) :]
        if self.commands is not None and topic.startswith(self.commands.prefix):
            return self.commands, topic[len(self.commands.prefix) :]
        if self.homeassistant is not None and self.homeassistant.owns(topic):
            return self.homeassistant, topic
        if self.sensors.binding(topic) is not None:
            return self.sensors, topic
        return None
