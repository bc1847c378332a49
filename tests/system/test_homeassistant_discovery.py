"""Home Assistant MQTT discovery against a real mosquitto and the agent as a subprocess, checked against the
schema Home Assistant documents (home-assistant.io/integrations/mqtt "MQTT Discovery", /integrations/event.mqtt,
/integrations/sensor.mqtt). Templates are rendered with Jinja2, as Home Assistant renders them.
tests/system/test_homeassistant.py runs the real Home Assistant."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jinja2

from edge_agent.contract.manifest import read
from tests.support.agent import Agent, run_cli, start_agent, write_models
from tests.support.broker import Broker, Client, Received, client
from tests.support.registry import Keys, make_keys, publish, settings_file

ID = r"[a-zA-Z0-9_-]+"  # node_id and object_id: "must only consist of characters from [a-zA-Z0-9_-]"
CONFIG_TOPIC = re.compile(rf"^homeassistant/(event|sensor)/({ID})/({ID})/config$")
ENTITY_ID = re.compile(r"^(event|sensor)\.[a-z0-9_]+$")  # default_entity_id: <domain>.<object id>
EVENT = {"state_topic", "event_types"}  # event.mqtt: required
COMMON = {"name", "unique_id", "default_entity_id", "device", "origin", "availability", "qos", "state_topic"}
OPTIONAL = {"value_template", "icon", "state_class", "unit_of_measurement", "entity_category"}
OPTIONAL |= {"suggested_display_precision", "event_types"}
DISCOVERY = {"EDGE_AGENT_HOMEASSISTANT__DISCOVERY": "true"}
BINDINGS = [
    {"topic": "sensors/+/log", "model": "tiny", "output": "results/{topic}"},
    {"topic": "sensors/+/json", "model": "tiny", "output": "results/{topic}", "text_field": "msg.text"},
]


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it: `value` is the payload, `value_json` its JSON."""
    return jinja2.Environment().from_string(template).render(value=payload.decode(), value_json=json.loads(payload))


def configs(watcher: Client, count: int, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The next `count` discovery configs (topic -> payload; an empty payload is None)."""
    found: dict[str, Any] = {}
    while len(found) < count:
        msg = watcher.get(timeout=timeout)
        if msg.topic.endswith("/config"):
            found[msg.topic] = json.loads(msg.payload) if msg.payload else None
    return found


def first_on(watcher: Client, *topics: str, timeout: float = 30.0) -> list[Received]:
    """The first message on each topic, in the order of `topics`, whatever order they come in."""
    seen: dict[str, Received] = {}
    end = time.monotonic() + timeout
    while len(seen) < len(topics):
        msg = watcher.get(timeout=max(0.1, end - time.monotonic()))
        if msg.topic in topics:
            seen.setdefault(msg.topic, msg)
    return [seen[t] for t in topics]


def discovered(broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent], tiny: Path) -> Agent:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny)}], BINDINGS)
    return agent_factory(models, env=DISCOVERY)


def test_configs_follow_home_assistants_documented_schema(
    broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent], tiny_artifact: Path
) -> None:
    agent = discovered(broker, tmp_path, agent_factory, tiny_artifact)
    manifest = read(tiny_artifact)
    with client(broker.port) as watcher:
        watcher.subscribe("homeassistant/#")
        found = configs(watcher, 6)  # retained: the model's event + 3 sensors, one event per binding
        watcher.subscribe(f"{agent.prefix}/status")
        status = watcher.get(topic=f"{agent.prefix}/status")
    kinds = sorted(CONFIG_TOPIC.match(t).group(1) for t in found)  # type: ignore[union-attr]
    assert kinds == ["event", "event", "event", "sensor", "sensor", "sensor"], sorted(found)
    assert {CONFIG_TOPIC.match(t).group(2) for t in found} == {"dev1"}  # type: ignore[union-attr]
    unique = set()
    for topic, config in found.items():
        assert config is not None and COMMON <= config.keys() <= COMMON | OPTIONAL, (topic, config)
        assert ENTITY_ID.match(config["default_entity_id"]) and config["default_entity_id"].startswith(
            CONFIG_TOPIC.match(topic).group(1)  # type: ignore[union-attr]
        )
        unique.add(config["unique_id"])
        assert config["device"]["identifiers"] == ["edge_agent_dev1"] and config["device"]["model"] == "edge-agent"
        assert config["device"]["sw_version"] == f"tiny {manifest.version}"
        assert config["origin"]["name"] == "edge-agent" and config["origin"]["sw_version"]
        (availability,) = config["availability"]
        assert availability["topic"] == f"{agent.prefix}/status"
        assert render(availability["value_template"], status.payload) == availability["payload_available"]
        assert render(availability["value_template"], b'{"status": "offline"}') == "offline"
        assert availability["payload_not_available"] == "offline"  # the last will's status
        if topic.startswith("homeassistant/event/"):
            assert config.keys() >= EVENT and config["event_types"] == manifest.labels
            assert config["state_topic"] == f"{agent.prefix}/ha/tiny/event"
    assert len(unique) == 6
    names = sorted(config["name"] for config in found.values() if config)
    assert names == sorted(["tiny", "tiny requests", "tiny escalation share", "tiny version"] + [
        f"{b['topic']} → tiny" for b in BINDINGS
    ])  # fmt: skip


def test_each_answer_fires_one_event_and_a_binding_entity_sees_its_own(
    broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent], tiny_artifact: Path
) -> None:
    agent = discovered(broker, tmp_path, agent_factory, tiny_artifact)
    labels = read(tiny_artifact).labels
    with client(broker.port) as c:
        c.subscribe("homeassistant/#")
        found = configs(c, 6)
        c.subscribe(f"{agent.prefix}/ha/tiny/event")
        c.publish("sensors/hall/log", "turn off the hall lights")
        from_sensor = c.get(topic=f"{agent.prefix}/ha/tiny/event")
        c.subscribe("me/replies")
        c.publish(f"{agent.prefix}/req/tiny", '{"text": "lights on"}', "me/replies")
        reply, from_request = first_on(c, "me/replies", f"{agent.prefix}/ha/tiny/event")
        c.publish(f"{agent.prefix}/req/tiny", "not json", "me/replies")  # an error reply fires nothing
        assert "error" in c.get().json()  # the next message is the error reply, not an event
        c.publish(f"{agent.prefix}/req/tiny", '{"text": "lights off"}', "me/replies")
        _, after_error = first_on(c, "me/replies", f"{agent.prefix}/ha/tiny/event")
    assert not from_sensor.retain  # an event is a moment, not a state
    body = from_sensor.json()
    assert body["event_type"] in labels and body["source"] in ("local", "local-fallback")
    assert 0 < body["confidence"] <= 1 and isinstance(body["entities"], list) and body["topic"] == "sensors/hall/log"
    request, answer = from_request.json(), reply.json()
    assert (request["event_type"], request["confidence"]) == (answer["label"], round(answer["confidence"], 4))
    assert "binding" not in request and "binding" not in after_error.json()
    bindings = {c["name"]: c for c in found.values() if c and c["name"].startswith("sensors/")}
    log_entity, json_entity = bindings["sensors/+/log → tiny"], bindings["sensors/+/json → tiny"]
    assert json.loads(render(log_entity["value_template"], from_sensor.payload)) == body  # fires
    assert render(json_entity["value_template"], from_sensor.payload) == ""  # Home Assistant ignores an empty event
    assert render(log_entity["value_template"], from_request.payload) == ""


def test_the_operator_sensors_read_requests_escalation_share_and_version(
    broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent], tiny_artifact: Path
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    agent = agent_factory(models, env={**DISCOVERY, "EDGE_AGENT_HOMEASSISTANT__STATE_S": "1"})
    with client(broker.port) as c:
        c.subscribe("homeassistant/#")
        sensors = {t: cfg for t, cfg in configs(c, 4).items() if "/sensor/" in t}
        c.subscribe(f"{agent.prefix}/ha/tiny/state")
        first = c.get(topic=f"{agent.prefix}/ha/tiny/state")
        c.subscribe("me/replies")
        for text in ("lights on", "lights off", "is the coffee ready"):
            c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": text}), "me/replies")
            c.get(topic="me/replies")
        while (state := c.get(topic=f"{agent.prefix}/ha/tiny/state")).json()["requests"] < 3:
            pass  # each state_s, only when it moved; bounded by get's timeout
    assert first.json()["requests"] == 0
    with client(broker.port) as late:  # what Home Assistant finds when it subscribes later: the last state
        late.subscribe(f"{agent.prefix}/ha/tiny/state")
        retained = late.get(topic=f"{agent.prefix}/ha/tiny/state")
    assert retained.retain and retained.json() == state.json()
    values = {cfg["name"]: render(cfg["value_template"], state.payload) for cfg in sensors.values()}
    assert values["tiny requests"] == "3" and values["tiny version"] == read(tiny_artifact).version
    assert 0 <= float(values["tiny escalation share"]) <= 100  # no cloud here: a share of local answers
    assert {cfg["name"]: cfg.get("unit_of_measurement") for cfg in sensors.values()}["tiny escalation share"] == "%"


def test_home_assistant_online_republishes_and_availability_follows_the_agent(
    broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent], tiny_artifact: Path
) -> None:
    agent = discovered(broker, tmp_path, agent_factory, tiny_artifact)
    with client(broker.port) as c:
        c.subscribe("homeassistant/+/dev1/+/config")
        first = configs(c, 6)
        c.publish("homeassistant/status", "online")  # Home Assistant's birth message
        again = configs(c, 6)
        c.subscribe(f"{agent.prefix}/status")
        assert c.get(topic=f"{agent.prefix}/status").json()["status"] == "online"
        agent.proc.kill()  # no goodbye: the last will says offline
        agent.proc.wait(10)
        offline = c.get(topic=f"{agent.prefix}/status", timeout=60)
    assert again == first
    (availability,) = next(iter(first.values()))["availability"]
    assert render(availability["value_template"], offline.payload) == availability["payload_not_available"]


def test_configs_of_what_is_no_longer_served_are_cleared_and_nothing_else_is_published(
    broker: Broker, tmp_path: Path, agents: list[Agent], tiny_artifact: Path
) -> None:
    """A restart with one binding fewer clears that binding's entity; a retained config of this device for a
    model it does not serve (an earlier models.yaml) is cleared; another device's configs are left alone."""
    with client(broker.port) as c:
        c.client.publish("homeassistant/event/dev1/gone_event/config", '{"name": "gone"}', qos=1, retain=True)
        c.client.publish("homeassistant/event/dev2/tiny_event/config", '{"name": "other"}', qos=1, retain=True)
        c.subscribe("homeassistant/#")  # before the agent starts: its removal is seen, whenever it comes
        models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}], BINDINGS)
        agents.append(start_agent(broker, models, tmp_path, env=DISCOVERY))
        before = _settled(c, "homeassistant/event/dev1/gone_event/config")
        assert before["homeassistant/event/dev1/gone_event/config"] is None  # cleared: an empty retained payload
        assert before["homeassistant/event/dev2/tiny_event/config"] == {"name": "other"}
        assert agents[0].stop() == 0
        models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}], BINDINGS[:1])
        agents.append(start_agent(broker, models, tmp_path, env=DISCOVERY))
        gone = next(t for t, cfg in before.items() if cfg and cfg["name"] == "sensors/+/json → tiny")
        while c.get(topic=gone).payload:
            pass  # the retained config comes first, then its removal
    with client(broker.port) as late:  # what Home Assistant would find now
        late.subscribe("homeassistant/#")
        retained = configs(late, 6)
    assert sorted(cfg["name"] for cfg in retained.values() if cfg) == sorted(
        ["other", "tiny", "tiny requests", "tiny escalation share", "tiny version", "sensors/+/log → tiny"]
    )


def _settled(c: Client, removed: str) -> dict[str, Any]:
    """The configs seen until `removed` is cleared."""
    seen: dict[str, Any] = {}
    while seen.get(removed, {}) is not None:
        msg = c.get()
        if msg.topic.endswith("/config"):
            seen[msg.topic] = json.loads(msg.payload) if msg.payload else None
    return seen


class Pulled(NamedTuple):
    config: Path
    models: Path
    registry: Path
    keys: Keys


def pulled_with_discovery(tmp_path: Path, tiny_artifact: Path) -> Pulled:
    """Device dev1 with discovery on, version 1.0.0 pulled from a signed registry (settings, models.yaml, the
    registry and its keys, to publish the next version)."""
    registry = tmp_path / "registry"
    registry.mkdir()
    keys = make_keys(tmp_path / "keys")
    publish(registry, tiny_artifact, "1.0.0", keys)
    config = settings_file(tmp_path, registry.as_uri(), [keys.public], homeassistant={"discovery": True})
    models = write_models(tmp_path, [{"name": "tiny"}])
    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(tmp_path / "state-dev1")}
    pulled = run_cli("models", "pull", "tiny", "--config", str(config), "--models", str(models), env=env)
    assert pulled.returncode == 0, pulled.stderr
    return Pulled(config, models, registry, keys)


def test_a_pulled_version_updates_sw_version_and_the_version_sensor(
    broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent], tiny_artifact: Path
) -> None:
    config, models, registry, keys = pulled_with_discovery(tmp_path, tiny_artifact)
    agent = agent_factory(models, config=config)
    with client(broker.port) as c:
        c.subscribe("homeassistant/event/dev1/tiny_event/config")
        assert c.get().json()["device"]["sw_version"] == "tiny 1.0.0"
        c.subscribe(f"{agent.prefix}/ha/tiny/state")
        assert c.get(topic=f"{agent.prefix}/ha/tiny/state").json()["version"] == "1.0.0"
        publish(registry, tiny_artifact, "2.0.0", keys)
        c.subscribe("ops/replies")
        c.publish(f"{agent.prefix}/cmd/models/pull", json.dumps({"model": "tiny"}), "ops/replies")
        config_topic, state_topic = "homeassistant/event/dev1/tiny_event/config", f"{agent.prefix}/ha/tiny/state"
        reply, config, state = first_on(c, "ops/replies", config_topic, state_topic, timeout=120)
    assert reply.json()["ok"]
    assert config.json()["device"]["sw_version"] == "tiny 2.0.0" and state.json()["version"] == "2.0.0"
