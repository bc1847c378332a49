"""Test-side MQTT peers: a real mosquitto process and a small synchronous client around paho."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on the port (a readiness probe, not a sleep)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass(frozen=True)
class Auth:
    """How a test client reaches a secured broker: the CA to trust (TLS on when set) and a user's password."""

    ca_file: Path | None = None
    username: str | None = None
    password: str | None = None
    check_hostname: bool = True


@dataclass
class Broker:
    """A mosquitto process on loopback that a test can stop and start again on the same port."""

    port: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None
    auth: Auth | None = None  # what test clients (and start_agent's watcher) connect with

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass(frozen=True)
class TlsFiles:
    """A TLS listener's PEM files: the CA it trusts for client certificates, its certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


@dataclass
class BrokerConfig:
    """One loopback listener and what a test needs around it; `text()` is the mosquitto.conf.

    Running as root, mosquitto drops to user `mosquitto`, which cannot read a test's files under
    tmp_path (mode 0700): set `user` (getpass.getuser()) whenever TLS, password, ACL or persistence
    files are involved. As a non-root user mosquitto ignores it.
    """

    port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    allow_anonymous: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    persistence_dir: Path | None = None
    max_queued_messages: int = 10000
    user: str | None = None

    def text(self) -> str:
        return "".join(f"{line}\n" for line in [*self._listener(), *self._security(), *self._rest()])

    def _listener(self) -> list[str]:
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.tls:
            lines += [f"cafile {self.tls.ca_file}", f"certfile {self.tls.cert_file}", f"keyfile {self.tls.key_file}"]
            lines.append(f"require_certificate {str(self.tls.require_certificate).lower()}")
        return lines

    def _security(self) -> list[str]:
        lines = [f"allow_anonymous {str(self.allow_anonymous).lower()}"]
        lines += [f"password_file {self.password_file}"] if self.password_file else []
        lines += [f"acl_file {self.acl_file}"] if self.acl_file else []
        return lines

    def _rest(self) -> list[str]:
        if self.persistence_dir:
            lines = ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines = ["persistence false"]
        lines += [f"max_queued_messages {self.max_queued_messages}", "set_tcp_nodelay true", "log_type error"]
        return lines + ([f"user {self.user}"] if self.user else [])

    def broker(self, conf: Path, auth: Auth | None = None) -> Broker:
        """Write the conf file; the Broker is not started yet."""
        conf.write_text(self.text())
        return Broker(self.port, conf, auth=auth)


def make_broker(tmp: Path) -> Broker:
    """An open broker: anonymous, no persistence (the default of most tests)."""
    return BrokerConfig().broker(tmp / "mosquitto.conf")


def write_passwords(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed by mosquitto_passwd itself, as an operator would)."""
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.touch()
    for name, password in users.items():
        subprocess.run([exe, "-b", str(path), name, password], check=True, capture_output=True, timeout=30)
    return path


@dataclass
class Received:
    topic: str
    payload: bytes
    correlation: bytes | None
    retain: bool
    response_topic: str | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


class Client:
    """A test MQTT client: subscribe, publish, and wait for messages on a queue."""

    def __init__(self, port: int, v5: bool = True, client_id: str = "", auth: Auth | None = None) -> None:
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        if auth and auth.username:
            self.client.username_pw_set(auth.username, auth.password)
        if auth and auth.ca_file:
            self.client.tls_set(ca_certs=str(auth.ca_file))
            self.client.tls_insecure_set(not auth.check_hostname)
        self.messages: queue.Queue[Received] = queue.Queue()
        self._acks: queue.Queue[int] = queue.Queue()
        self.client.on_message = self._on_message
        self.client.on_socket_open = _no_delay
        self.client.on_subscribe = lambda *a: self._acks.put(1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None)
        response_topic = getattr(props, "ResponseTopic", None)
        self.messages.put(Received(msg.topic, bytes(msg.payload), corr, bool(msg.retain), response_topic))

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self._acks.get(timeout=10)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        props = None
        if self.v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)

    def publish_nowait(self, topic: str, payload: bytes, qos: int, response_topic: str | None) -> None:
        """Publish without waiting for the broker (bursts)."""
        props = None
        if self.v5 and response_topic:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
        self.client.publish(topic, payload, qos=qos, properties=props)

    def get(self, timeout: float = 20.0, topic: str | None = None) -> Received:
        """The next message (on `topic`, when given); TimeoutError when none comes in time."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message on {topic or 'any topic'} within {timeout}s")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if topic is None or msg.topic == topic:
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def client(port: int, v5: bool = True, auth: Auth | None = None) -> Iterator[Client]:
    c = Client(port, v5, auth=auth)
    try:
        yield c
    finally:
        c.close()


def _no_delay(_c: Any, _u: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SessionClient:
    """An MQTT 3.1.1 client with a persistent session: what it subscribed to survives a broker restart."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
        )
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            Received(m.topic, bytes(m.payload), None, bool(m.retain))
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        subscribed: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda *a: subscribed.put(1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("me/replies", qos=1)
        subscribed.get(timeout=10)

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def replies(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        return [json.loads(self.messages.get(timeout=max(0.01, end - time.monotonic())).payload) for _ in range(count)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
