"""`edge-agent run` as a subprocess against a real mosquitto, with real clients (MQTT 5, 3.1.1, mosquitto_rr)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract.manifest import read
from tests.support.agent import Agent, write_models
from tests.support.broker import Broker, client


@pytest.fixture()
def agent(tiny_artifact: Path, tmp_path: Path, agent_factory: Callable[..., Agent]) -> Agent:
    bindings = [
        {"topic": "sensors/+/log", "model": "tiny", "output": "results/{topic}"},
        {"topic": "sensors/+/json", "model": "tiny", "output": "results/{topic}", "text_field": "msg.text"},
    ]
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}], bindings)
    return agent_factory(models)


def check_reply(body: dict[str, Any], artifact: Path) -> None:
    manifest = read(artifact)
    assert body["model"] == "tiny" and body["version"] == manifest.version
    assert body["label"] in manifest.labels and body["escalated"] is False
    threshold = manifest.thresholds.escalate
    if body["confidence"] >= threshold:  # no cloud here: an unconfident answer says so
        assert body["source"] == "local" and body["reason"] is None
    else:
        assert body["source"] == "local-fallback" and body["reason"] == "no_cloud"
    assert 0 < body["confidence"] <= 1 and body["top"][0]["label"] == body["label"]
    assert sum(t["confidence"] for t in body["top"]) <= 1 + 1e-5  # each rounded to 6 decimals
    assert body["latency_ms"] >= 0 and isinstance(body["entities"], list)


def test_v5_reply_on_response_topic_with_correlation(broker: Broker, agent: Agent, tiny_artifact: Path) -> None:
    with client(broker.port) as c:
        c.subscribe("me/replies")
        c.publish(f"{agent.prefix}/req/tiny", '{"text": "turn off the lights", "id": "r1"}', "me/replies", b"\x01c")
        msg = c.get(topic="me/replies")
    assert msg.correlation == b"\x01c"
    body = msg.json()
    assert body["id"] == "r1"
    check_reply(body, tiny_artifact)


def test_v311_reply_to_and_default_topic(broker: Broker, agent: Agent, tiny_artifact: Path) -> None:
    with client(broker.port, v5=False) as c:
        c.subscribe("old/inbox")
        c.subscribe(f"{agent.prefix}/res/tiny")
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": 5, "reply_to": "old/inbox"}))
        check_reply(c.get(topic="old/inbox").json(), tiny_artifact)
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": 6}))
        body = c.get(topic=f"{agent.prefix}/res/tiny").json()
    assert body["id"] == 6
    check_reply(body, tiny_artifact)
    replied = agent.wait_log("replied", count=2)  # README: one line per reply at debug, never the text
    assert [line["to"] for line in replied] == ["old/inbox", f"{agent.prefix}/res/tiny"]
    assert all(line["model"] == "tiny" and line["outcome"] in ("local", "local-fallback") for line in replied)
    assert "lights on" not in agent.log.read_text()


def test_mosquitto_rr_v5_works_unchanged(broker: Broker, agent: Agent, tiny_artifact: Path) -> None:
    exe = shutil.which("mosquitto_rr")
    assert exe, "mosquitto-clients must be installed (CI installs it)"
    cmd = [exe, "-V", "5", "-p", str(broker.port), "-t", f"{agent.prefix}/req/tiny", "-e", "rr/reply"]
    cmd += ["-m", '{"text":"turn off the lights"}', "-W", "20"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    check_reply(json.loads(out.stdout), tiny_artifact)


def test_sensor_bindings_raw_and_json_path(broker: Broker, agent: Agent, tiny_artifact: Path) -> None:
    with client(broker.port) as c:
        c.subscribe("results/#")
        c.publish("sensors/kitchen/log", b"vacuum the kitchen please\n")
        raw = c.get(topic="results/sensors/kitchen/log").json()
        c.publish("sensors/hall/json", json.dumps({"msg": {"text": "lights off"}, "ts": 1}))
        viajson = c.get(topic="results/sensors/hall/json").json()
        c.publish("sensors/hall/json", json.dumps({"msg": {}}))
        bad = c.get(topic="results/sensors/hall/json").json()
    assert raw["topic"] == "sensors/kitchen/log" and len(raw["id"]) == 24  # derived: a consumer dedupes by it
    assert viajson["topic"] == "sensors/hall/json" and viajson["id"] not in (raw["id"], bad["id"])
    check_reply(raw, tiny_artifact)
    assert bad["error"]["code"] == "bad_request" and "msg.text" in bad["error"]["message"]


BAD_INPUTS = [
    (b"\xff\xfe\xfd", "bad_request"),
    (b"not json", "bad_request"),
    (b"[1,2,3]", "bad_request"),
    (b'{"id": "b4"}', "bad_request"),
    (b'{"id": "b5", "text": 42}', "bad_request"),
    (b'{"id": "b6", "text": ""}', "bad_request"),
    (json.dumps({"id": "b7", "text": "lights " * 3000}).encode(), "too_large"),
    (b'{"id": "b8", "text": "' + b"x" * 70000 + b'"}', "too_large"),
    (b'{"id": "b9", "text": "hi", "reply_to": "a/#"}', "bad_request"),
]


def test_every_bad_input_gets_its_error_and_the_daemon_stays_up(
    broker: Broker, agent: Agent, tiny_artifact: Path
) -> None:
    with client(broker.port) as c:
        c.subscribe("me/errors")
        for payload, code in BAD_INPUTS:
            c.publish(f"{agent.prefix}/req/tiny", payload, "me/errors", b"k")
            body = c.get(topic="me/errors").json()
            assert body["error"]["code"] == code, (payload[:40], body)
            assert body["error"]["message"]
        c.publish(f"{agent.prefix}/req/nope", b'{"text": "hi", "id": 1}', "me/errors")
        assert c.get(topic="me/errors").json()["error"]["code"] == "unknown_model"
        c.publish(f"{agent.prefix}/req/tiny", b'{"text": "still alive?"}', "me/errors")
        check_reply(c.get(topic="me/errors").json(), tiny_artifact)
    assert agent.proc.poll() is None
    warnings = [r for r in agent.logs() if r.get("level") == "warning" and r.get("event") == "request_failed"]
    assert len(warnings) >= len(BAD_INPUTS) + 1
    assert not any("still alive" in json.dumps(r) for r in agent.logs() if r.get("level") == "info")


def test_status_retained_online_then_offline(broker: Broker, agent: Agent, tiny_artifact: Path) -> None:
    with client(broker.port) as c:
        c.subscribe(f"{agent.prefix}/status")
        online = c.get(topic=f"{agent.prefix}/status")
        assert online.retain and online.json()["status"] == "online"
        assert online.json()["models"] == {"tiny": read(tiny_artifact).version}
        assert agent.stop() == 0
        assert c.get(topic=f"{agent.prefix}/status").json()["status"] == "offline"


def test_request_sent_while_agent_down_is_answered_after_restart(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    first = agent_factory(models, device_id="dur")
    assert first.stop() == 0
    with client(broker.port) as c:
        c.subscribe("me/later")
        c.publish("edge-agent/dur/req/tiny", b'{"text": "lights on", "id": "queued"}', "me/later")
        agent_factory(models, device_id="dur")
        assert c.get(topic="me/later").json()["id"] == "queued"


def test_corrupted_artifact_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    from tests.support.agent import run_cli

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    model = copy / read(copy).file("model").path
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    models = write_models(tmp_path, [{"name": "tiny", "path": str(copy)}])
    result = run_cli("check", "--models", str(models))
    assert result.returncode == 78 and "sha256 does not match" in result.stderr and model.name in result.stderr


def test_classify_cli(tiny_artifact: Path, tmp_path: Path) -> None:
    from tests.support.agent import run_cli

    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    result = run_cli("classify", "--models", str(models), "--model", "tiny", "turn the lights off")
    assert result.returncode == 0, result.stderr
    check_reply(json.loads(result.stdout), tiny_artifact)
    empty = run_cli("classify", "--models", str(models), "--model", "tiny", "  ")
    assert empty.returncode == 65 and len(empty.stderr.strip().splitlines()) == 1
    listing = run_cli("models", "list", "--models", str(models))
    assert listing.returncode == 0 and read(tiny_artifact).version in listing.stdout


@pytest.mark.parametrize(("route", "reason"), [("auto", "no_cloud"), ("local", "no_cloud")])  # no cloud configured
def test_classify_marks_an_unsure_answer_as_the_agent_without_a_cloud_does(
    tiny_artifact: Path, tmp_path: Path, route: str, reason: str
) -> None:
    from tests.support.agent import run_cli

    entry = {"name": "tiny", "path": str(tiny_artifact), "threshold": 1.0, "route": route}  # never sure enough
    result = run_cli("classify", "--models", str(write_models(tmp_path, [entry])), "--model", "tiny", "lights off")
    body = json.loads(result.stdout)
    assert (body["source"], body["reason"], body["trigger"]) == ("local-fallback", reason, "low_confidence")
