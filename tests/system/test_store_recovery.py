"""A damaged store does not stop the agent (issue 23): at start-up each model serves the newest version that
verifies, and the store records why any other was refused. Real registry folder, CLI and agent subprocesses."""

from __future__ import annotations

import json
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
