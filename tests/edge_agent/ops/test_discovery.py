"""Discovery payloads from what the agent serves (the live half runs in tests/system/test_homeassistant*.py)."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.config.models_file import Binding
from edge_agent.config.sections import HomeAssistantSettings
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import cloud_only
from edge_agent.contract.messages import Answer
from edge_agent.contract.prediction import Entity, Prediction
from edge_agent.ops.discovery import EXTRACTED, Discovery, binding_key, event, slug, state
from edge_agent.ops.metrics import Metrics

ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def discovery(device_id: str = "pi.kitchen 1", prefix: str = "homeassistant") -> Discovery:
    settings = AgentSettings(
        device_id=device_id,
        models_file=Path("unused"),
        homeassistant=HomeAssistantSettings(discovery=True, prefix=prefix),
    )
    return Discovery(settings)


def test_ids_in_topics_hold_only_what_home_assistant_allows_and_unique_ids_keep_the_device_id() -> None:
    d = discovery()
    configs = d.configs({"intents.v2": cloud_only("intents.v2", ["a", "b"])}, [])
    for topic, config in configs.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, last, component in ("event", "sensor")) == ("homeassistant", "config", True)
        assert ID.match(node) and ID.match(object_id), topic
        assert config["unique_id"].startswith("edge_agent_pi.kitchen 1_intents.v2_")
        assert re.match(r"^(event|sensor)\.[a-z0-9_]+$", config["default_entity_id"]), config["default_entity_id"]
    assert slug("pi.kitchen 1") == "pi_kitchen_1" and d.owns(next(iter(configs)))
    assert not d.owns("homeassistant/event/other/x/config") and not d.owns("homeassistant/status")


def test_only_served_models_and_their_bindings_are_discovered_under_the_prefix() -> None:
    d = discovery(prefix="hass")
    bindings = [Binding(topic="s/+/log", model="served"), Binding(topic="s/+/x", model="not-served")]
    configs = d.configs({"served": cloud_only("served", ["on"])}, bindings)
    assert all(t.startswith("hass/") for t in configs)
    assert len(configs) == 5 and not any("not-served" in str(c) for c in configs.values())
    assert len({c["unique_id"] for c in configs.values()}) == 5


def test_a_binding_keeps_its_id_whatever_its_place_in_models_yaml() -> None:
    a, b = Binding(topic="s/+/log", model="m"), Binding(topic="s/+/json", model="m")
    assert binding_key(a) == binding_key(Binding(topic="s/+/log", model="m", output="other/{topic}"))
    assert binding_key(a) != binding_key(b)


def test_an_extraction_fires_one_event_type_with_its_fields() -> None:
    d = discovery()
    (event_config,) = [c for t, c in d.configs({"x": cloud_only("x", [])}, []).items() if "/event/" in t]
    assert event_config["event_types"] == [EXTRACTED]
    prediction = Prediction(None, 0.9, fields={"room": "hall"}, entities=[Entity("room", "hall", 0, 4)])
    body = event(Answer(prediction, "local"), None, None)
    assert (body["event_type"], body["fields"], body["entities"][0]["value"]) == (EXTRACTED, {"room": "hall"}, "hall")


def test_a_cloud_answer_has_no_local_confidence() -> None:
    body = event(Answer(Prediction("on", 0.2, version="1"), "cloud", reason="low_confidence"), None, None)
    assert (body["event_type"], body["confidence"], body["source"]) == ("on", None, "cloud")


def test_state_counts_one_models_replies_and_its_escalation_share_of_answers() -> None:
    metrics = Metrics()
    metrics.replied("m", "local", "answered", 0.01, None, None)
    metrics.replied("m", "cloud", "answered", 0.01, "low_confidence", None)
    metrics.replied("m", "local-fallback", "answered", 0.01, "low_confidence", "no_cloud")
    metrics.replied("m", "local", "answered", 0.01, None, None)
    metrics.replied("m", "none", "bad_request", 0.0, None, None)
    metrics.replied("other", "cloud", "answered", 0.01, "low_confidence", None)
    assert state("m", "1.0.0", metrics.summary()) == {"version": "1.0.0", "requests": 5, "escalation_share": 50.0}
    assert state("idle", "2", metrics.summary()) == {"version": "2", "requests": 0, "escalation_share": 0.0}
