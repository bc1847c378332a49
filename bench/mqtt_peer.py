"""The benchmarks' MQTT peers: mosquitto on a free loopback port, and a blocking MQTT 5 client.

Benchmarks import no test module: tests/support may change shape for the tests' sake, bench/ runs by hand.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[int]:
    """A mosquitto for the block, its config in `folder`; yields its port once it accepts connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nlog_type error\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL)
    try:
        _accepting(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _accepting(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)  # a readiness poll: mosquitto has no other signal
    raise RuntimeError(f"mosquitto is not accepting on port {port} (exit code {proc.poll()})")


class Peer:
    """A blocking MQTT 5 client (QoS 1, TCP_NODELAY): publish, then wait for the next JSON message on a topic."""

    def __init__(self, port: int) -> None:
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed: queue.Queue[None] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_socket_open = lambda _c, _u, s: cast(socket.socket, s).setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.client.on_message = lambda _c, _u, m: self._inbox.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *_: self._subscribed.put(None)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self._subscribed.get(timeout=10)

    def publish(self, topic: str, payload: str, response_topic: str | None = None, wait: bool = True) -> None:
        """Publish at QoS 1; `wait`: until the broker's PUBACK (False pipelines requests)."""
        props = None
        if response_topic:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
        info = self.client.publish(topic, payload, qos=1, properties=props)
        if wait:
            info.wait_for_publish(10)

    def next(self, topic: str, timeout: float = 10.0) -> Any:
        """The next message on `topic`, parsed as JSON (messages on other topics are dropped)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                got, payload = self._inbox.get(timeout=left)
                if got == topic:
                    return json.loads(payload)
        raise TimeoutError(f"no message on {topic} within {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """Small MQTT packets go out at once, not after a delayed ACK (~40 ms)."""
    cast(socket.socket, sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
