"""A device with no model yet: models.yaml names the labels, the cloud answers everything, and every
answer is kept as feedback for the first `edge-trainer improve`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import cloud as fake_cloud
from tests.support.agent import Agent, run_cli, start_agent, write_models
from tests.support.broker import Broker, client
from tests.support.cloud import FakeCloud
from tests.system.test_router_e2e import _env, cloud_env


def test_a_model_with_no_artifact_is_served_by_the_cloud_and_collects(
    broker: Broker, tmp_path: Path, agents: list[Agent]
) -> None:
    models = write_models(tmp_path, [{"name": "cold", "cloud_labels": ["lights_on", "weather"]}])
    with fake_cloud.serve(FakeCloud(teacher=lambda text: "weather" if "rain" in text else "lights_on")) as cloud:
        agents.append(start_agent(broker, models, tmp_path, "cold", env=cloud_env(cloud.base_url)))
        with client(broker.port) as c:
            c.subscribe("edge-agent/cold/status")
            status = c.get(topic="edge-agent/cold/status").json()
            c.subscribe("me/cold")
            for i, text in enumerate(["will it rain", "lights on please"]):
                c.publish("edge-agent/cold/req/cold", json.dumps({"text": text, "id": i}), "me/cold")
            replies = sorted((c.get(topic="me/cold").json() for _ in range(2)), key=lambda r: r["id"])
            seen = cloud.arrived(2)
    assert status["cloud_only"] == {"cold": "cloud-only"}
    assert [(r["label"], r["source"], r["reason"]) for r in replies] == [
        ("weather", "cloud", "model_missing"),
        ("lights_on", "cloud", "model_missing"),
    ]
    assert '"weather"' in seen[0].body["messages"][0]["content"]  # the cloud answers within the named labels
    assert agents[0].stop() == 0
    out = tmp_path / "feedback.jsonl"
    done = run_cli(
        "feedback",
        "export",
        "--model",
        "cold",
        "--out",
        str(out),
        env=_env(EDGE_AGENT_STATE_DIR=str(tmp_path / "state-cold")),
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["text"], r["intent"], r["local_label"]) for r in rows) == [
        ("lights on please", "lights_on", None),
        ("will it rain", "weather", None),
    ]


def test_cloud_labels_teach_the_cloud_labels_the_model_lacks(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    entry = {"name": "tiny", "path": str(tiny_artifact), "threshold": 1.0, "cloud_labels": ["alarm_set"]}
    models = write_models(tmp_path, [entry])
    with fake_cloud.serve(FakeCloud(teacher=lambda text: "alarm_set")) as cloud:
        agents.append(start_agent(broker, models, tmp_path, "teach", env=cloud_env(cloud.base_url)))
        with client(broker.port) as c:
            c.subscribe("me/teach")
            c.publish("edge-agent/teach/req/tiny", json.dumps({"text": "wake me at six", "id": 1}), "me/teach")
            reply = c.get(topic="me/teach").json()
    assert (reply["label"], reply["source"]) == ("alarm_set", "cloud")
    assert reply["local_label"] != "alarm_set"


def test_check_takes_a_cold_start_with_a_cloud_and_names_it_without(tmp_path: Path) -> None:
    models = write_models(tmp_path, [{"name": "cold", "cloud_labels": ["a", "b"]}])
    state = {"EDGE_AGENT_STATE_DIR": str(tmp_path / "state")}
    with_cloud = run_cli("check", "--models", str(models), env=_env(**state, **cloud_env("http://127.0.0.1:9/v1")))
    assert with_cloud.returncode == 0, with_cloud.stderr
    without = run_cli("check", "--models", str(models), env=_env(**state))
    assert without.returncode == 78
    assert without.stderr.strip() == (
        "model cold: no artifact yet (cloud_labels only): it needs a cloud to answer for it"
    )
