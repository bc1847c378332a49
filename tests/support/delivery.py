"""Delivery with a stand-in handler (pure logic): the test decides when and what each message answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.config.settings import AgentSettings
from edge_agent.contract.messages import Inbound, Outbound
from edge_agent.transport.delivery import Delivery
from edge_agent.transport.mqtt import MqttClient
from edge_agent.transport.outcome import Drop, Outcome, Reply
from edge_agent.transport.spool import Spool

Handle = Callable[[Inbound], Awaitable[Outbound | None]]
Refuse = Callable[[Inbound], Outbound | None]


class StubHandler:
    def __init__(self, handle: Handle, refuse: Refuse) -> None:
        self._handle = handle
        self._refuse = refuse

    async def handle(self, msg: Inbound) -> Outcome:
        return _outcome(await self._handle(msg))

    def overloaded(self, msg: Inbound) -> Outcome:
        return _outcome(self._refuse(msg))

    def control(self, topic: str) -> bool:
        return False


def _outcome(out: Outbound | None) -> Outcome:
    return Reply(out) if out is not None else Drop("the test's handler sends nothing")


def make_delivery(
    settings: AgentSettings,
    subscriptions: list[str],
    handle: Handle,
    refuse: Refuse = lambda m: None,
    spool: Spool | None = None,
    status: Callable[[], dict[str, Any]] = dict,
    cls: type[Delivery] = Delivery,
) -> Delivery:
    client = MqttClient(settings, subscriptions, f"{settings.topic_prefix}/status")
    return cls(settings, client, StubHandler(handle, refuse), spool, status)
