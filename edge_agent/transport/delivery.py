"""Delivery: every message settled exactly once, on the loop only.

A request is acknowledged only after its reply's PUBACK: until then the broker holds it for our
persistent session and redelivers it after a crash or an outage, and the agent answers it again
(at-least-once; replies carry an id to deduplicate by). That costs nothing on the hot path. A
reply the cloud paid for (`Outbound.durable`) is written to the spool first and its request acked
at once; it leaves the spool on its PUBACK, and spooled replies are published again when the
broker is back, so neither an outage nor a restart asks the cloud twice. A publish the broker
refuses (a PUBACK >= 0x80, e.g. an ACL denial) settles its message too, loudly: retrying would be
refused again, and an unacknowledged request would hold one of the broker's in-flight slots forever.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from edge_agent.config.settings import AgentSettings
from edge_agent.contract.messages import Inbound, Outbound
from edge_agent.contract.topics import topic_problem
from edge_agent.transport.mqtt import (
    CONTROL_SLOTS,
    Connected,
    Disconnected,
    Event,
    Message,
    MqttClient,
    Published,
    Subscribed,
)
from edge_agent.transport.outcome import Outcome, Reply
from edge_agent.transport.spool import Spool

log = structlog.get_logger("edge_agent.transport.delivery")

Settle = Callable[[str | None], None]  # called with the broker's refusal, or None once it has the message


class Handles(Protocol):
    async def handle(self, msg: Inbound) -> Outcome: ...

    def overloaded(self, msg: Inbound) -> Outcome: ...

    def control(self, topic: str) -> bool:
        """An operator's command: answered outside the request slots, so a flood of requests (or a slow
        model) never holds up a rollback, and a slow command never holds up a request."""
        ...


@dataclass(frozen=True)
class Receipt:
    """How a message came: its packet id means something only within the broker session it came in."""

    mid: int
    qos: int
    session: int


class Delivery:
    """Admits messages (bounded in flight), publishes outcomes, acknowledges, replays the spool."""

    def __init__(
        self,
        settings: AgentSettings,
        client: MqttClient,
        handler: Handles,
        spool: Spool | None = None,
        status: Callable[[], dict[str, Any]] = dict,
        status_changed: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.handler = handler
        self.spool = spool
        self.status = status
        self.status_changed = status_changed or asyncio.Event()
        self.ready = asyncio.Event()
        self._pending: dict[int, Settle] = {}  # publish mid -> what its PUBACK settles
        self._outbox: set[int] = set()  # spool rows published by this process, not yet acknowledged
        self._inflight: set[asyncio.Task[None]] = set()
        self._control: set[asyncio.Task[None]] = set()  # operators' commands, in their own few slots
        self._backlog: deque[tuple[Inbound, Receipt]] = deque()  # admitted, waiting for a free slot
        self._backlog_bytes = 0
        self._active: set[tuple[int, int]] = set()  # (session, mid) of QoS 1 messages not yet settled
        self._session = 0  # bumped when the broker starts us a new session (old packet ids void)
        self._closing = False

    # -- events, in order, on the loop ---------------------------------------------------
    async def run(self, stop: asyncio.Event, grace_s: float = 10.0) -> None:
        """Serve until `stop` is set, then finish in-flight work and say offline."""
        self.client.start()
        pump = asyncio.create_task(self._pump())
        status = asyncio.create_task(self._status_changes())
        try:
            await stop.wait()
        finally:
            status.cancel()
            await self._drain(grace_s)
            pump.cancel()
            await asyncio.to_thread(self.client.close)  # joins paho's thread: up to its reconnect wait

    async def _pump(self) -> None:
        while True:
            event = await self.client.events.get()
            try:
                self._on(event)
            except Exception:  # one event must not stop the others
                log.exception("delivery_event_failed", event=type(event).__name__)

    def _on(self, event: Event) -> None:
        if isinstance(event, Message):
            self._admit(event)
        elif isinstance(event, Published):
            settle = self._pending.pop(event.mid, None)
            if settle is not None:
                settle(event.refused)
        elif isinstance(event, Connected):
            if not event.session_present:
                self._session += 1  # acks owed to the old session must not hit new requests with the same ids
            log.info("mqtt_connected", host=self.settings.mqtt.host, port=self.settings.mqtt.port)
            self.client.subscribe()
        elif isinstance(event, Subscribed):
            if event.refused:
                log.error("mqtt_subscribe_refused", reasons=event.refused)
            self.publish_status()
            self._replay()
            self.ready.set()
        elif isinstance(event, Disconnected):
            log.warning("mqtt_disconnected", reason=event.reason)
            self.ready.clear()

    def _admit(self, event: Message) -> None:
        if self._closing:  # not acked: the broker keeps it for our next session
            return
        receipt = Receipt(event.mid, event.qos, self._session)
        if receipt.qos:
            key = (receipt.session, receipt.mid)
            if key in self._active:
                return  # the broker resent a message we are still answering (after a reconnect)
            self._active.add(key)
        if self.handler.control(event.inbound.topic):
            self._command(event.inbound, receipt)
        elif len(self._inflight) < self.settings.max_inflight:
            self._start(event.inbound, receipt)
        elif receipt.qos and self.client.v5 and self._room(event.inbound):
            self._backlog.append((event.inbound, receipt))  # waits for a slot: a burst is served, not refused
            self._backlog_bytes += len(event.inbound.payload)
        else:  # QoS 0 or MQTT 3.1.1: nothing holds the sender back, so tell it
            self._settle(self.handler.overloaded(event.inbound), receipt)

    def _room(self, inbound: Inbound) -> bool:
        """Receive Maximum asks the broker to hold back what we cannot take, but a broker may send more
        (mosquitto 2.0 does once we publish too): the backlog is bounded in bytes instead."""
        return self._backlog_bytes + len(inbound.payload) <= self.settings.backlog_bytes

    def _start(self, inbound: Inbound, receipt: Receipt) -> None:
        task = asyncio.create_task(self._process(inbound, receipt))
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def _command(self, inbound: Inbound, receipt: Receipt) -> None:
        if len(self._control) >= CONTROL_SLOTS:
            self._settle(self.handler.overloaded(inbound), receipt)
            return
        task = asyncio.create_task(self._process(inbound, receipt))
        self._control.add(task)
        task.add_done_callback(self._control.discard)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._backlog and not self._closing:
            inbound, receipt = self._backlog.popleft()
            self._backlog_bytes -= len(inbound.payload)
            self._start(inbound, receipt)

    async def _process(self, inbound: Inbound, receipt: Receipt) -> None:
        self._settle(await self.handler.handle(inbound), receipt)

    # -- settling ---------------------------------------------------------------------------
    def _settle(self, outcome: Outcome, receipt: Receipt) -> None:
        """Publish the reply, if any, and acknowledge the message exactly when that is settled."""
        if not isinstance(outcome, Reply):
            self._ack(receipt)  # parked in the spool, or dropped (logged)
            return
        out = outcome.out
        keep = self.spool is not None and (out.durable or (receipt.qos == 0 and not self.client.connected()))
        if keep and self._spooled(out):
            self._ack(receipt)
            return
        self._publish(out, lambda refused: self._replied(out, refused, receipt))

    def _replied(self, out: Outbound, refused: str | None, receipt: Receipt | None = None) -> None:
        if refused is not None:
            log.error("reply_refused", topic=out.topic, reason=refused)
        if receipt is not None:
            self._ack(receipt)

    def _ack(self, receipt: Receipt) -> None:
        self._active.discard((receipt.session, receipt.mid))
        if receipt.session == self._session:
            self.client.ack(receipt.mid, receipt.qos)

    def deliver(self, out: Outbound) -> None:
        """A reply with no request left to ack (a request that waited): spooled, then published."""
        if not self._spooled(out):
            self._publish(out, lambda refused: self._replied(out, refused))

    def _spooled(self, out: Outbound) -> bool:
        """Write the reply to the spool and publish it from there; False when the disk failed."""
        assert self.spool is not None
        try:
            rid = self.spool.put_reply(out)
        except sqlite3.Error as exc:
            log.error("spool_write_failed", topic=out.topic, error=str(exc))
            return False
        self._publish_row(rid, out)
        return True

    def _publish_row(self, rid: int, out: Outbound) -> None:
        self._outbox.add(rid)
        self._publish(out, lambda refused: self._row_settled(rid, out, refused))

    def _row_settled(self, rid: int, out: Outbound, refused: str | None) -> None:
        assert self.spool is not None
        self._outbox.discard(rid)
        self._replied(out, refused)
        try:
            self.spool.reply_done(rid, refused)
        except sqlite3.Error as exc:  # the row stays and goes out again later: a duplicate, not a loss
            log.error("spool_write_failed", error=str(exc))

    def _replay(self) -> None:
        """Publish spooled replies this process does not hold (from before a restart), oldest first."""
        for rid, out in self.spool.replies() if self.spool else []:
            if rid not in self._outbox:
                self._publish_row(rid, out)

    def _publish(self, out: Outbound, settle: Settle, retain: bool = False) -> None:
        """The one way out: a topic the broker would drop us for is never sent, and says why."""
        problem = topic_problem(out.topic)
        if problem is not None:
            settle(f"the topic {problem}")
            return
        try:
            mid = self.client.publish(out.topic, out.payload, out.correlation, retain)
        except ValueError as exc:  # paho's own checks (payload size)
            settle(str(exc))
            return
        self._pending[mid] = settle

    # -- status, metrics and shutdown -------------------------------------------------------
    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def announce(self, out: Outbound, retain: bool = True) -> None:
        """A message of the agent's own (the metrics summary, Home Assistant's discovery); a refusal is logged."""
        self._publish(out, lambda refused: self._replied(out, refused), retain=retain)

    def publish_status(self, state: str = "online") -> asyncio.Future[None]:
        """The retained status; the future completes when the broker has it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        data = {"status": state, **(self.status() if state == "online" else {})}
        status = Outbound(f"{self.settings.agent_prefix}/status", json.dumps(data).encode())
        self._publish(status, lambda _refused: _complete(done), retain=True)
        return done

    async def _status_changes(self) -> None:
        while True:
            await self.status_changed.wait()
            self.status_changed.clear()
            if self.ready.is_set():
                self.publish_status()

    async def _drain(self, grace_s: float) -> None:
        self._closing = True  # stay subscribed: the persistent session queues what comes next
        self._backlog.clear()  # not acked: the broker redelivers them to our next session
        self._backlog_bytes = 0
        if self._inflight or self._control:
            await asyncio.wait({*self._inflight, *self._control}, timeout=grace_s)
        if self.client.connected():
            offline = self.publish_status("offline")
            await asyncio.wait({offline}, timeout=2.0)


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
