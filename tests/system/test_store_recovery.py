"""A damaged store does not stop the agent (issue 23): at start-up each model serves the newest version that
verifies, and the store records why any other was refused. Real registry folder, CLI and agent subprocesses."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from tests.support.agent import Agent
from tests.support.broker import Broker, client
from tests.system.test_rollout import Fleet, make_fleet, publish, start


def ask(broker: Broker, agent: Agent) -> dict[str, object]:
    with client(broker.port) as c:
        c.subscribe("me/r")
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": 1}), "me/r")
        reply: dict[str, object] = c.get(topic="me/r").json()
    return reply


def two_pulled(fleet: Fleet, tiny: Path) -> Path:
    """1.0.0 then 2.0.0 pulled: 2.0.0 serves, 1.0.0 is the previous version. Returns 2.0.0's folder."""
    for version in ("1.0.0", "2.0.0"):
        publish(fleet.registry, tiny, version, fleet.keys)
        assert fleet.cli("models", "pull", "tiny", "--version", version).returncode == 0
    return fleet.state / "models" / "tiny" / "2.0.0"


def test_a_truncated_serving_version_falls_back_to_the_previous_one(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """Before: `run` exited 78 (which systemd never restarts) though 1.0.0 lay intact on disk."""
    fleet = make_fleet(tmp_path, None)
    model = two_pulled(fleet, tiny_artifact) / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])  # what a power cut mid-write leaves
    agent = start(fleet, agent_factory)
    assert ask(broker, agent)["version"] == "1.0.0"
    state, why = fleet.listing()["2.0.0"]
    assert state == "refused" and "failed verification at start-up" in why


def test_an_unreadable_state_file_is_moved_aside_and_the_model_starts_afresh(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """Before: a truncated state.json made `run` and `models list` exit 65, for good."""
    fleet = make_fleet(tmp_path, None)
    two_pulled(fleet, tiny_artifact)
    seed = publish(tmp_path / "seeds", tiny_artifact, "0.9.0", fleet.keys)  # models.yaml's own folder
    fleet.models.write_text(f"models:\n  - name: tiny\n    path: {seed}\n")
    state = fleet.state / "models" / "tiny" / "state.json"
    damaged = state.read_bytes()[:40]
    state.write_bytes(damaged)
    agent = start(fleet, agent_factory)
    assert ask(broker, agent)["version"] == "0.9.0"
    assert (state.parent / "state.json.damaged").read_bytes() == damaged
    assert fleet.cli("models", "list").returncode == 0


def test_a_model_with_no_version_that_verifies_is_unavailable_and_the_others_serve(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """Before: `run` exited 78 when one model's folder was gone, so every model was off the air, for good
    (systemd does not restart 78). Now the others serve, the lost one answers `unavailable` saying why, the
    status and `models list` say it too, and an operator's pull over MQTT brings it back."""
    fleet = make_fleet(tmp_path, None)
    other = publish(tmp_path / "seeds", tiny_artifact, "0.9.0", fleet.keys)
    models = [{"name": "tiny", "path": str(tmp_path / "nowhere")}, {"name": "other", "path": str(other)}]
    fleet.models.write_text(json.dumps({"models": models}))
    publish(fleet.registry, tiny_artifact, "1.0.0", fleet.keys)
    with client(broker.port) as c:
        c.subscribe("edge-agent/dev1/status")
        agent = start(fleet, agent_factory)
        status = c.get(topic="edge-agent/dev1/status").json()
        c.subscribe("me/r")
        c.publish(f"{agent.prefix}/req/other", json.dumps({"text": "lights on", "id": 1}), "me/r")
        assert "label" in c.get(topic="me/r").json()
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": 2}), "me/r")
        down = c.get(topic="me/r").json()["error"]
    assert down["code"] == "unavailable" and "nowhere" in down["message"], down
    assert "nowhere" in status["unavailable"]["tiny"] and "other" in status["models"]
    listing = fleet.cli("models", "list")
    assert re.search(r"^tiny\s+-\s+unavailable\s+-\s+.*nowhere", listing.stdout, re.M), listing.stdout
    with client(broker.port) as ops:
        ops.subscribe("ops/replies")
        ops.publish(f"{agent.prefix}/cmd/models/pull", json.dumps({"model": "tiny", "version": "1.0.0"}), "ops/replies")
        reply = ops.get(timeout=60, topic="ops/replies").json()
    assert reply["ok"] and "1.0.0 serves (was unavailable)" in reply["message"], reply
    assert ask(broker, agent)["version"] == "1.0.0"


def test_a_version_that_keeps_killing_the_agent_on_probation_is_refused_at_the_second_unclean_stop(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """Before: a version that crashed the agent after its promote (at load, under traffic) was loaded again at every
    restart, for ever. A clean stop counts nothing; one unclean stop may be a power cut; the second refuses it."""
    fleet = make_fleet(tmp_path, None)
    two_pulled(fleet, tiny_artifact)  # 2.0.0 serves on probation, 1.0.0 is the previous version
    assert start(fleet, agent_factory).stop() == 0
    for expected in ("2.0.0", "2.0.0", "1.0.0"):
        agent = start(fleet, agent_factory)
        assert ask(broker, agent)["version"] == expected
        agent.proc.kill()
        agent.proc.wait(10)
    state, why = fleet.listing()["2.0.0"]
    assert state == "refused" and "stopped uncleanly 2 times while it was on probation" in why
