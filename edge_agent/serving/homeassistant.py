"""Home Assistant's endpoint: its birth message and this device's retained configs in, discovery out.

The payloads are ops/discovery.py's; this module decides when they go: every config on each connect, when
Home Assistant says `online` and when the versions served change (a pull, a rollback); an empty retained
payload for each config of a model no longer served (this process's, or one found retained on the broker
from an earlier run); the operator sensors' state every `state_s` when it changed; one event per answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Protocol

import structlog

from edge_agent.config.models_file import Binding
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.messages import Answer, Inbound, ModelReply, Outbound
from edge_agent.contract.topics import matches
from edge_agent.errors import AgentError
from edge_agent.ops.discovery import Discovery, event, state
from edge_agent.ops.metrics import Metrics
from edge_agent.runtimes.pool import ModelPool
from edge_agent.transport.outcome import Drop

log = structlog.get_logger("edge_agent.serving.homeassistant")

HA_BIRTH = "homeassistant/status"  # Home Assistant's default birth topic, whatever the discovery prefix


class Outlet(Protocol):
    """Where discovery goes out (transport's Delivery): set `ready` while connected."""

    ready: asyncio.Event

    def announce(self, out: Outbound, retain: bool = True) -> None: ...


class HomeAssistant:
    """Keeps Home Assistant's view of this device in step with what it serves."""

    def __init__(self, settings: AgentSettings, pool: ModelPool, bindings: list[Binding], metrics: Metrics) -> None:
        self.discovery = Discovery(settings)
        self.settings, self.pool, self.bindings, self.metrics = settings, pool, bindings, metrics
        self.births = sorted({HA_BIRTH, self.discovery.birth_topic})
        self._outlet: Outlet | None = None
        self._wake = asyncio.Event()
        self._birth = False  # Home Assistant (re)started: it wants every config again
        self._published: set[str] = set()  # config topics this process published
        self._found: set[str] = set()  # this device's retained configs the broker holds
        self._versions: dict[str, str] = {}  # what the published configs say is served
        self._states: dict[str, bytes] = {}  # model -> the state last published

    def subscriptions(self) -> list[str]:
        return [*self.births, self.discovery.own_configs]

    def owns(self, topic: str) -> bool:
        return topic in self.births or self.discovery.owns(topic)

    # -- the endpoint -----------------------------------------------------------------------
    async def attempt(self, msg: Inbound, topic: str) -> Drop:
        """Nothing is answered to Home Assistant: a birth or a config found is noted, and the message settled."""
        if topic in self.births:
            if msg.payload.strip() == b"online":
                log.info("homeassistant_online", topic=topic)
                self._birth = True
                self._wake.set()
        elif msg.payload:
            self._found.add(topic)
            self._wake.set()
        return Drop("noted")

    def refuse(self, msg: Inbound, topic: str, error: AgentError) -> Drop:
        return Drop(error.message)

    def fire(self, reply: ModelReply) -> None:
        """One answer, one event on its model's event topic (bindings' entities pick theirs out of it)."""
        if self._outlet is None or not isinstance(reply.result, Answer) or self.pool.get(reply.model) is None:
            return
        binding = self._binding(reply.topic)
        body = event(reply.result, binding, reply.topic)
        out = Outbound(self.discovery.event_topic(reply.model), json.dumps(body, ensure_ascii=False).encode())
        self._outlet.announce(out, retain=False)

    def _binding(self, topic: str | None) -> Binding | None:
        if topic is None:
            return None
        return next((b for b in self.bindings if matches(b.topic, topic)), None)

    def wake(self) -> None:
        """Something the entities show changed (a version pulled or rolled back): publish it now."""
        self._wake.set()

    # -- the publisher ----------------------------------------------------------------------
    async def run(self, outlet: Outlet) -> None:
        """While connected: configs on each connect and whenever they change, the sensors' state on time."""
        self._outlet = outlet
        period = self.settings.homeassistant.state_s or None
        while True:
            await outlet.ready.wait()
            self._configs(outlet, everything=True)
            while outlet.ready.is_set():
                self._state(outlet)
                with contextlib.suppress(asyncio.TimeoutError):  # 3.10: not the builtin TimeoutError
                    await asyncio.wait_for(self._wake.wait(), period)
                self._wake.clear()
                if outlet.ready.is_set():
                    self._configs(outlet, everything=self._birth or self._versions != self.pool.versions())

    def _configs(self, outlet: Outlet, everything: bool) -> None:
        """Clear the configs of what is gone; publish every current one when `everything`."""
        self._birth = False
        served = {name: m.manifest for name, m in self.pool.served.items()}
        current = self.discovery.configs(served, self.bindings)
        for topic in sorted((self._published | self._found) - current.keys()):
            log.info("homeassistant_config_removed", topic=topic)
            outlet.announce(Outbound(topic, b""))
        for name in self._versions.keys() - served.keys():
            self._states.pop(name, None)
            outlet.announce(Outbound(self.discovery.state_topic(name), b""))
        if everything:
            for topic, config in current.items():
                outlet.announce(Outbound(topic, json.dumps(config, ensure_ascii=False).encode()))
            log.info("homeassistant_discovery", configs=len(current), prefix=self.discovery.prefix)
        self._published, self._found = set(current), set()
        self._versions = self.pool.versions()
        if everything:
            self._states.clear()  # Home Assistant may have restarted: the state goes out again too
            self._state(outlet)

    def _state(self, outlet: Outlet) -> None:
        """Each served model's sensors, when their numbers moved."""
        summary: dict[str, Any] = self.metrics.summary()
        for name, version in self.pool.versions().items():
            payload = json.dumps(state(name, version, summary)).encode()
            if self._states.get(name) != payload:
                self._states[name] = payload
                outlet.announce(Outbound(self.discovery.state_topic(name), payload))
