"""Hostile input and faults, end to end: `edge-agent run` against a real mosquitto, one scenario each.

Each was found by trying the agent as a new user would; each ended in silence, a disconnect
loop or a wedged daemon before. Now every message ends in a reply or a logged refusal, and the
agent stays on the broker.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import Agent, start_agent, write_models
from tests.support.broker import Broker, BrokerConfig, Client, client


@pytest.fixture()
def agent(broker: Broker, tiny_artifact: Path, tmp_path: Path, agent_factory: Callable[..., Agent]) -> Agent:
    bindings = [{"topic": "sensors/+/json", "model": "tiny", "text_field": "msg.text"}]
    return agent_factory(write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}], bindings))


def disconnects(agent: Agent) -> list[dict[str, Any]]:
    return [r for r in agent.logs() if r.get("event") == "mqtt_disconnected"]


def still_serving(c: Client, agent: Agent) -> None:
    """A plain request after the storm is answered, and the agent never left the broker."""
    c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": "after", "reply_to": "me/r"}))
    assert c.get(topic="me/r").json()["id"] == "after"
    assert agent.proc.poll() is None and disconnects(agent) == []


@pytest.mark.parametrize("bad", ["a\u0001b", "a\u007fb", "a\u0085b", "a\ufffeb", "a\uffffb", "a\ufdd0b"])
def test_a_reply_topic_with_a_forbidden_code_point_gets_its_error_on_the_result_topic(
    broker: Broker, agent: Agent, bad: str
) -> None:
    with client(broker.port) as c:
        c.subscribe(f"{agent.prefix}/res/tiny")
        c.subscribe("me/r")
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": "x1", "reply_to": bad}))
        error = c.get(topic=f"{agent.prefix}/res/tiny").json()
        assert error["id"] == "x1" and error["error"]["code"] == "bad_request"
        assert f"U+{ord(bad[1]):04X}" in error["error"]["message"]
        still_serving(c, agent)


HOSTILE = [
    b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json
    b'{"text": "x", "id": "n1", "n": ' + b"9" * 5000 + b"}",  # ValueError: too many digits
    b'{"text": "lights", "id": "\\ud800", "reply_to": "me/r"}',  # a lone surrogate in the id
    b'{"text": "lights", "id": "s2", "reply_to": "me/\\udc00"}',  # ... in the reply topic
    b'{"text": "lights \\ud800 on", "id": "s3", "reply_to": "me/r"}',  # ... in the text
]


def test_hostile_json_always_gets_an_error_reply(broker: Broker, agent: Agent) -> None:
    with client(broker.port) as c:
        c.subscribe("me/r")
        c.subscribe(f"{agent.prefix}/res/tiny")
        for payload in HOSTILE:
            c.publish(f"{agent.prefix}/req/tiny", payload, "me/r" if b"reply_to" not in payload else None)
            reply = c.get().json()
            assert reply["error"]["code"] in ("bad_request", "too_large"), (payload[:60], reply)
        c.publish("sensors/hall/json", b'{"msg": {"text": "\\udfff"}}')
        c.publish("sensors/hall/json", b'{"msg": ' + b"[" * 50_000 + b"}")
        c.subscribe("results/#")
        still_serving(c, agent)
    errors = [r for r in agent.logs() if r.get("event") == "internal_error"]
    assert errors == []


def test_hostile_requests_over_the_inflight_limit_are_refused_with_a_reply_and_free_their_slot(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    agent = agent_factory(models, env={"EDGE_AGENT_MAX_INFLIGHT": "1", "EDGE_AGENT_MQTT__PROTOCOL": "3.1.1"})
    with client(broker.port, v5=False) as c:
        c.subscribe("me/r")
        for i in range(30):  # more than mosquitto's 20 in-flight slots
            payload = {"text": "lights \ud800" if i % 2 else "lights", "id": f"h{i}", "reply_to": "me/r"}
            c.client.publish(f"{agent.prefix}/req/tiny", json.dumps(payload), qos=1)
        replies = [c.get().json() for _ in range(30)]
        assert sorted(r["id"] for r in replies) == sorted(f"h{i}" for i in range(30))
        for i in range(100):
            c.client.publish(
                f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": i, "reply_to": "me/ok"}), qos=1
            )
        c.subscribe("me/ok")
    with client(broker.port, v5=False) as c:
        c.subscribe("me/ok2")
        for i in range(100):
            c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": i, "reply_to": "me/ok2"}))
            assert c.get(topic="me/ok2").json()["id"] == i
    assert agent.proc.poll() is None


def test_reply_topics_inside_the_agent_api_are_refused(broker: Broker, agent: Agent) -> None:
    with client(broker.port) as c:
        c.subscribe(f"{agent.prefix}/res/tiny")
        for target in (f"{agent.prefix}/status", "edge-agent/other/req/tiny", f"{agent.prefix}/cmd/models/pull"):
            c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": target, "reply_to": target}))
            error = c.get(topic=f"{agent.prefix}/res/tiny").json()
            assert error["id"] == target and "agent API" in error["error"]["message"]
        c.subscribe("me/r")
        still_serving(c, agent)


def test_an_allow_list_of_reply_topics(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    agent = agent_factory(models, env={"EDGE_AGENT_REPLY_TOPICS": '["clients/+/replies/#"]'})
    with client(broker.port) as c:
        c.subscribe(f"{agent.prefix}/res/tiny")
        c.subscribe("clients/#")
        c.subscribe("actuators/#")
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": 1, "reply_to": "actuators/valve/open"}))
        refused = c.get()
        assert refused.topic == f"{agent.prefix}/res/tiny" and "reply_topics" in refused.json()["error"]["message"]
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": 2, "reply_to": "clients/c1/replies/a"}))
        ok = c.get()
        assert ok.topic == "clients/c1/replies/a" and ok.json()["id"] == 2 and "label" in ok.json()


def test_route_cloud_without_a_cloud_is_an_error(broker: Broker, agent: Agent) -> None:
    with client(broker.port) as c:
        c.subscribe("me/r")
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": 1, "route": "cloud", "reply_to": "me/r"}))
        assert c.get(topic="me/r").json()["error"]["code"] == "unavailable"


def test_every_reply_carries_an_id_to_deduplicate_by(broker: Broker, agent: Agent) -> None:
    with client(broker.port) as c:
        c.subscribe("me/r")
        c.subscribe("results/#")
        for _ in range(2):
            c.publish(f"{agent.prefix}/req/tiny", b'{"text": "lights on"}', "me/r", b"corr-1")
        first, second = c.get(topic="me/r").json(), c.get(topic="me/r").json()
        assert first["id"] == second["id"] and len(first["id"]) == 24
        c.publish("sensors/hall/json", b'{"msg": {"text": "lights on"}}')
        sensor = c.get(topic="results/sensors/hall/json").json()
        assert sensor["id"] and sensor["id"] != first["id"]


def test_a_reply_the_broker_refuses_is_logged_and_settles_its_request(
    tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    """An ACL denial comes back as PUBACK 0x87 under MQTT 5: the request is settled (acked) with a logged
    refusal, not counted as delivered in silence, and not redelivered forever."""
    acl = tmp_path / "acl"
    acl.write_text("topic read #\ntopic write edge-agent/#\ntopic write me/#\n")  # anonymous: no write to denied/
    broker = BrokerConfig(acl_file=acl, user=getpass.getuser()).broker(tmp_path / "acl.conf")
    broker.start()
    try:
        models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
        agent = start_agent(broker, models, tmp_path, "acl")
        agents.append(agent)
        with client(broker.port) as c:
            c.subscribe("me/r")
            c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "on", "id": "d1", "reply_to": "denied/x"}))
            still_serving(c, agent)
            (refused,) = agent.wait_log("reply_refused")
            assert refused["topic"] == "denied/x" and "authorized" in refused["reason"].lower()
            assert agent.stop() == 0
        again = start_agent(broker, models, tmp_path, "acl")  # the refused request was acked: not seen again
        agents.append(again)
        with client(broker.port) as c:
            c.subscribe("me/r")
            still_serving(c, again)
        assert [r for r in again.logs() if r.get("event") == "reply_refused"] == []
    finally:
        broker.stop()
