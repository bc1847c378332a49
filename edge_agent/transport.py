"""MQTT only: connect, last will, reconnect with backoff, subscribe, bounded in-flight work, replies.

paho-mqtt's network thread receives; the asyncio loop handles. A request is acknowledged only
after its reply's PUBACK: until then the broker holds it for our persistent session and
redelivers it after a crash or an outage, and the agent answers it again (at-least-once). That
costs nothing on the hot path. A reply the cloud paid for (`Outbound.durable`) is instead written
to the spool first and the request acked at once; it leaves the spool on its PUBACK and spooled
replies are published again at start-up, so neither an outage nor a restart asks the cloud twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import AgentSettings
from edge_agent.messages import Inbound, Outbound
from edge_agent.spool import Spool

log = structlog.get_logger("edge_agent.transport")

Handle = Callable[[Inbound], Awaitable[Outbound | None]]
Refuse = Callable[[Inbound], Outbound | None]
UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK codes: 3.1.1 "unacceptable protocol", 5 "unsupported version"


@dataclass(frozen=True)
class Delivery:
    """How a request came: its packet id means something only within the broker session it came in."""

    mid: int
    qos: int
    session: int


class Transport:
    """One MQTT session for the agent's whole life; bytes in, bytes out."""

    def __init__(
        self,
        settings: AgentSettings,
        subscriptions: list[str],
        handle: Handle,
        refuse: Refuse,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.subscriptions = subscriptions
        self.handle = handle
        self.refuse = refuse
        self.status_topic = f"{settings.topic_prefix}/status"
        self.status: Callable[[], dict[str, Any]] = lambda: {}
        self.ready = asyncio.Event()
        self.protocol = mqtt.MQTTv311 if settings.mqtt.protocol == "3.1.1" else mqtt.MQTTv5
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, Callable[[], Any]] = {}  # reply mid -> what its PUBACK completes
        self._outbox: set[int] = set()  # spool rows handed to the current client
        self._early: set[int] = set()  # reply mids acknowledged before we registered them
        self._inflight: set[asyncio.Task[None]] = set()
        self._session = 0  # bumped whenever the broker starts us a new session (old packet ids void)
        self._active: set[tuple[int, int]] = set()  # (session, mid) of QoS 1 requests not yet acked
        self._closing = False
        self.client = self._make_client()

    # -- connection -------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.settings.mqtt
        v5 = self.protocol == mqtt.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=self.protocol,
            clean_session=None if v5 else False,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, json.dumps({"status": "offline"}), qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, self._password())
        if cfg.tls:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_connect_fail = _connect_failed
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = _no_delay
        return client

    def _password(self) -> str | None:
        cfg = self.settings.mqtt
        if cfg.password_file:
            return cfg.password_file.read_text().strip()
        return cfg.password.get_secret_value() if cfg.password else None

    def _connect(self) -> None:
        cfg = self.settings.mqtt
        props = None
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
        self.client.connect_async(
            cfg.host,
            cfg.port,
            cfg.keepalive_s,
            clean_start=False if self.protocol == mqtt.MQTTv5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("mqtt_connect_refused", reason=str(rc))
            if self.settings.mqtt.protocol == "auto" and rc.value in UNSUPPORTED_PROTOCOL:
                self._call(self._fall_back)
            return
        if not getattr(_f, "session_present", False):
            self._session += 1  # acks owed to the old session must not hit new requests with the same ids
        log.info("mqtt_connected", host=self.settings.mqtt.host, port=self.settings.mqtt.port)
        if self.protocol == mqtt.MQTTv5:
            opts = SubscribeOptions(qos=1, noLocal=True)  # our own results never loop back
            client.subscribe([(topic, opts) for topic in self.subscriptions])
        else:
            client.subscribe([(topic, 1) for topic in self.subscriptions])

    def _fall_back(self) -> None:
        log.warning("mqtt_fallback", protocol="3.1.1")
        self.client.loop_stop()
        self.protocol = mqtt.MQTTv311
        self.client = self._make_client()
        with self._lock:
            self._pending.clear()
            self._outbox.clear()
        self._connect()

    def _on_subscribe(self, client: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        failed = [str(c) for c in codes if c.is_failure]
        if failed:
            log.error("mqtt_subscribe_refused", reasons=failed)
        self._call(self._on_ready)

    def _on_ready(self) -> None:
        self.publish_status()
        self._replay()
        self.ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        log.warning("mqtt_disconnected", reason=str(rc))
        self._call(self.ready.clear)

    def _call(self, fn: Callable[[], Any]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    # -- messages ---------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        correlation = getattr(props, "CorrelationData", None)
        inbound = Inbound(
            topic=message.topic,
            payload=bytes(message.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=bytes(correlation) if correlation is not None else None,
            received=time.monotonic(),
        )
        delivery = Delivery(message.mid, message.qos, self._session)
        self._call(lambda: self._dispatch(inbound, delivery))

    def _dispatch(self, inbound: Inbound, delivery: Delivery) -> None:
        if self._closing:  # not acked: the broker keeps it for our next session
            return
        if delivery.qos:
            with self._lock:
                if (delivery.session, delivery.mid) in self._active:
                    return  # the broker resent a request we are still answering (after a reconnect)
                self._active.add((delivery.session, delivery.mid))
        if len(self._inflight) >= self.settings.max_inflight:
            self._send(self.refuse(inbound), delivery)
            return
        task = asyncio.create_task(self._process(inbound, delivery))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _process(self, inbound: Inbound, delivery: Delivery) -> None:
        try:
            out = await self.handle(inbound)
        except Exception:  # the handler answers errors itself; this is the last guard
            log.exception("handler_crashed", topic=inbound.topic)
            out = None
        self._send(out, delivery)

    def _send(self, out: Outbound | None, delivery: Delivery) -> None:
        """Publish the reply at QoS 1 and ack the request on its PUBACK: until then the broker keeps the
        request for our session, so a crash means answering it again (cheap, local). A durable reply (a
        cloud answer) is spooled and the request acked at once, so the cloud is never asked twice. So is
        the reply to a QoS 0 request made while the broker is away: the broker would not redeliver that
        request (while connected, such a reply goes straight out: no fsync on the hot path)."""
        if out is None:
            self._ack(delivery)
        elif self.spool is None or (not out.durable and (delivery.qos > 0 or self.client.is_connected())):
            self._publish(out, lambda: self._ack(delivery))
        else:
            self.deliver(out)
            self._ack(delivery)

    def _ack(self, delivery: Delivery) -> None:
        with self._lock:
            self._active.discard((delivery.session, delivery.mid))
        if delivery.session == self._session:
            self.client.ack(delivery.mid, delivery.qos)

    def deliver(self, out: Outbound) -> None:
        """Spool a reply, then publish it; it leaves the spool when the broker has it. Loop thread only."""
        assert self.spool is not None
        self._publish_row(self.spool.put_reply(out), out)

    def _publish_row(self, rid: int, out: Outbound) -> None:
        self._outbox.add(rid)
        self._publish(out, lambda: self._call(lambda: self._sent(rid)))

    def _sent(self, rid: int) -> None:
        assert self.spool is not None
        self._outbox.discard(rid)
        self.spool.reply_sent(rid)

    def _replay(self) -> None:
        """Publish spooled replies this client does not hold (from before a restart), oldest first."""
        for rid, out in self.spool.replies() if self.spool else []:
            if rid not in self._outbox:
                self._publish_row(rid, out)

    def _publish(self, out: Outbound, on_puback: Callable[[], Any]) -> None:
        props = None
        if out.correlation is not None and self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = out.correlation
        info = self.client.publish(out.topic, out.payload, qos=1, properties=props)
        self._track(info.mid, on_puback)

    def _track(self, mid: int, on_puback: Callable[[], Any]) -> None:
        """Run `on_puback` when the broker acknowledges `mid`: every QoS 1 publish registers, so a
        PUBACK never lingers in `_early` to be mistaken for a later publish that reuses its id."""
        with self._lock:
            done = mid in self._early
            if done:
                self._early.discard(mid)
            else:
                self._pending[mid] = on_puback
        if done:
            on_puback()

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            action = self._pending.pop(mid, None)
            if action is None:
                self._early.add(mid)
                if len(self._early) > 10000:  # a guard: every publish registers (see _track)
                    self._early.clear()
        if action is not None:
            action()

    def publish_status(self, state: str = "online") -> mqtt.MQTTMessageInfo:
        body = {"status": state, **(self.status() if state == "online" else {})}
        info = self.client.publish(self.status_topic, json.dumps(body), qos=1, retain=True)
        self._track(info.mid, lambda: None)
        return info

    # -- lifecycle --------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, grace_s: float = 10.0) -> None:
        """Serve until `stop` is set, then finish in-flight work and say offline."""
        self._loop = asyncio.get_running_loop()
        self._connect()
        try:
            await stop.wait()
        finally:
            await self._drain(grace_s)

    async def _drain(self, grace_s: float) -> None:
        self._closing = True  # stay subscribed: the persistent session queues what comes next
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=grace_s)
        info = self.publish_status("offline")
        if self.client.is_connected():
            await asyncio.to_thread(info.wait_for_publish, 2.0)
        self.client.disconnect()
        self.client.loop_stop()


def _connect_failed(_c: mqtt.Client, _u: Any) -> None:
    """No CONNACK at all: broker unreachable, or its TLS certificate does not verify (CA, host name).
    paho passes no reason but calls this inside its `except OSError:`, so the handled exception is it."""
    log.warning("mqtt_connect_failed", reason=str(sys.exc_info()[1]))


def _no_delay(_c: mqtt.Client, _u: Any, sock: Any) -> None:
    """Replies are small packets: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms each."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
