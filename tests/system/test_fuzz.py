"""10,000 generated messages against the running daemon over a real mosquitto (fixed seed, bounded time).

Binary, huge, deeply nested, unicode edge cases, wrong types, hostile reply topics and ids, sensor
payloads: after every burst the daemon still answers a valid request, it never leaves the broker,
no slot of the broker's in-flight window leaks, and its memory stays flat.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.agent import Agent, write_models
from tests.support.broker import Broker, Client

BURSTS, BURST = 50, 200  # 10,000 messages

HOSTILE_TEXT = ["\ud800", "\udfff x", "a\u0000b", "\u2028\u2029\u0085", "\ufeff", "é" * 3000, "🙂" * 500, " ", ""]
HOSTILE_TOPICS = ["a\u0001b", "a\u007fb", "a\ufffe", "a/#", "+", "", "edge-agent/fz/status", "edge-agent/x/req/tiny"]
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
    st.sampled_from(HOSTILE_TEXT + HOSTILE_TOPICS),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
request = st.fixed_dictionaries(
    {},
    optional={"text": values, "id": values, "reply_to": values, "deadline_ms": values, "route": values},
)


def _raw(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()  # \\ud800 escapes survive as JSON text


payloads = st.one_of(
    request.map(_raw),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * (n % 3)),
    st.integers(min_value=4400, max_value=6000).map(lambda n: b'{"text": "x", "id": ' + b"9" * n + b"}"),
    st.just(b"x" * 70_000),
    st.dictionaries(st.sampled_from(["msg", "text"]), values, max_size=2).map(lambda d: _raw({"msg": d})),
)
topics = st.sampled_from(["edge-agent/fz/req/tiny", "edge-agent/fz/req/ghost", "sensors/a/json", "sensors/b/raw"])
messages = st.tuples(topics, payloads, st.sampled_from([0, 1]), st.sampled_from([None, "me/fz", *HOSTILE_TOPICS[-2:]]))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fuzzed_messages_never_stop_or_wedge_the_daemon(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    bindings = [
        {"topic": "sensors/+/json", "model": "tiny", "text_field": "msg.text"},
        {"topic": "sensors/+/raw", "model": "tiny"},
    ]
    agent = agent_factory(
        write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}], bindings), device_id="fz"
    )
    sender, probe = Client(broker.port), Client(broker.port)
    probe.subscribe("me/probe")
    rss: list[int] = []

    @settings(
        max_examples=BURSTS, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.lists(messages, min_size=BURST, max_size=BURST))
    def burst(batch: list[tuple[str, bytes, int, str | None]]) -> None:
        for topic, payload, qos, response_topic in batch:
            sender.publish_nowait(topic, payload, qos, response_topic)
        probe.publish("edge-agent/fz/req/tiny", b'{"text": "lights on", "id": "probe"}', "me/probe")
        while probe.get(timeout=60, topic="me/probe").json().get("id") != "probe":
            pass
        rss.append(rss_kb(agent.proc.pid))

    try:
        burst()
        for i in range(25):  # more than mosquitto's 20 in-flight slots of bad QoS 1 requests ...
            sender.publish("edge-agent/fz/req/tiny", b"[" * 30_000 + bytes([i]))
        for i in range(100):  # ... and then good ones are all answered
            probe.publish("edge-agent/fz/req/tiny", json.dumps({"text": "on", "id": i}).encode(), "me/probe")
        answered = {probe.get(timeout=60, topic="me/probe").json()["id"] for _ in range(100)}
        assert set(range(100)) <= answered | {"probe"}
    finally:
        sender.close()
        probe.close()
    assert agent.proc.poll() is None
    assert [r for r in agent.logs() if r.get("event") in ("mqtt_disconnected", "internal_error")] == []
    assert len(rss) == BURSTS and max(rss[-10:]) <= rss[4] * 1.10, rss  # after warm-up: no growth over 10 %


@pytest.mark.parametrize("n", [1])
def test_sender_helper_publishes_hostile_bytes(broker: Broker, n: int) -> None:
    """The fuzz sender itself: publishes any bytes and QoS without waiting (a guard on the test's own tool)."""
    c = Client(broker.port)
    try:
        c.subscribe("t/#")
        c.publish_nowait("t/x", b"\xff\x00" * n, 1, None)
        assert c.get(topic="t/x").payload == b"\xff\x00"
    finally:
        c.close()
