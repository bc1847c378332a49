"""The paho wrapper: connect (MQTT 5, falling back to 3.1.1), TLS, auth, last will, subscribe, publish.

Every paho callback does one thing: put an event on the loop's queue. No state of the agent is
touched on paho's network thread; delivery.py reads the events on the loop, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config.settings import AgentSettings
from edge_agent.contract.messages import Inbound
from edge_agent.contract.topics import is_shared

log = structlog.get_logger("edge_agent.mqtt")

CONTROL_SLOTS = 8  # operators' commands answered at once beside the request slots: the broker's window has room
UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK codes: 3.1.1 "unacceptable protocol", 5 "unsupported version"


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class Disconnected:
    reason: str


@dataclass(frozen=True)
class Subscribed:
    refused: list[str]


@dataclass(frozen=True)
class Message:
    inbound: Inbound
    mid: int
    qos: int


@dataclass(frozen=True)
class Published:
    """The broker's PUBACK; `refused` is its reason when it did not take the message (MQTT 5, >= 0x80)."""

    mid: int
    refused: str | None


Event = Connected | Disconnected | Subscribed | Message | Published


class MqttClient:
    """One MQTT session for the agent's whole life; events come out of `events`, in order."""

    def __init__(self, settings: AgentSettings, subscriptions: list[str], status_topic: str) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.status_topic = status_topic
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.protocol = mqtt.MQTTv311 if settings.mqtt.protocol == "3.1.1" else mqtt.MQTTv5
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paho = self._make()

    @property
    def v5(self) -> bool:
        return self.protocol == mqtt.MQTTv5

    def _make(self) -> mqtt.Client:
        cfg = self.settings.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=self.protocol,
            clean_session=None if self.v5 else False,
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

    # -- paho's thread: hand each event to the loop -------------------------------------
    def _emit(self, event: Event) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("mqtt_connect_refused", reason=str(rc))
            if self.settings.mqtt.protocol == "auto" and rc.value in UNSUPPORTED_PROTOCOL and self._loop:
                self._loop.call_soon_threadsafe(self._fall_back)
            return
        self._emit(Connected(bool(getattr(flags, "session_present", False))))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._emit(Disconnected(str(rc)))

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        self._emit(Subscribed([str(c) for c in codes if c.is_failure]))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        correlation = getattr(props, "CorrelationData", None)
        inbound = Inbound(
            topic=message.topic,
            payload=bytes(message.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=bytes(correlation) if correlation is not None else None,
        )
        self._emit(Message(inbound, message.mid, message.qos))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        failed = rc is not None and getattr(rc, "is_failure", False)
        self._emit(Published(mid, str(rc) if failed else None))

    # -- the loop's side -------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho's thread); events follow on `events`."""
        self._loop = asyncio.get_running_loop()
        cfg = self.settings.mqtt
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = min(self.settings.max_inflight + CONTROL_SLOTS, 65535)  # it holds back the rest
        self._paho.connect_async(
            cfg.host,
            cfg.port,
            cfg.keepalive_s,
            clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._paho.loop_start()

    def _fall_back(self) -> None:
        log.warning("mqtt_fallback", protocol="3.1.1")
        self._paho.loop_stop()
        self.protocol = mqtt.MQTTv311
        self._paho = self._make()
        self.start()

    def subscribe(self) -> None:
        if self.v5:
            own = SubscribeOptions(qos=1, noLocal=True)  # our own results never loop back
            group = SubscribeOptions(qos=1)  # No Local on a shared subscription is a protocol error (MQTT 5 3.8.3.1)
            self._paho.subscribe([(topic, group if is_shared(topic) else own) for topic in self.subscriptions])
        else:
            self._paho.subscribe([(topic, 1) for topic in self.subscriptions])

    def publish(self, topic: str, payload: bytes, correlation: bytes | None = None, retain: bool = False) -> int:
        """Publish at QoS 1; the mid whose Published event will follow (paho queues it while offline)."""
        props = None
        if correlation is not None and self.v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        return int(self._paho.publish(topic, payload, qos=1, retain=retain, properties=props).mid)

    def ack(self, mid: int, qos: int) -> None:
        self._paho.ack(mid, qos)

    def connected(self) -> bool:
        return bool(self._paho.is_connected())

    def close(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()


def _connect_failed(_c: mqtt.Client, _u: Any) -> None:
    """paho calls this inside its `except OSError`: the reason (a certificate, a refused port) is the one in hand."""
    log.warning("mqtt_connect_failed", reason=str(sys.exc_info()[1]))


def _no_delay(_c: mqtt.Client, _u: Any, sock: Any) -> None:
    """Replies are small packets: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms each."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
