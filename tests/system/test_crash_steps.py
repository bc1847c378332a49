"""Killed at every step of a pull and a swap, and a power cut at each (issue 23): after a restart the device serves
a verified version, `models list` agrees with it, and nothing half-written is served or left behind.

Systematic, not a sample: every step of `crashpoints.STEPS`, for the agent (an MQTT pull) and the CLI. The kill
is SIGKILL from inside at the step (no cleanup runs, as with the OOM killer). The power cut then takes away what
no fsync covered: every file of the store whose inode was never fsynced is truncated to nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.contract import manifest as mf
from edge_agent.contract import signing
from edge_agent.lifecycle.crashpoints import CRASH_AT, STEPS, SYNC_LOG
from tests.support.agent import Agent, run_cli
from tests.support.broker import Broker, client
from tests.support.registry import publish
from tests.system.test_rollout import Fleet, make_fleet, start

BEFORE_PROMOTE = STEPS[: STEPS.index("promote")]  # the new version's pull had not finished: it is refused
LEFTOVERS = (".incoming-*", ".pulling.*", ".state.json.*")


def crash(fleet: Fleet, who: str, step: str, broker: Broker, agent_factory: Callable[..., Agent]) -> None:
    """Pull 2.0.0 with `who`, killed at `step`."""
    if who == "cli":
        env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(fleet.state), CRASH_AT: step}
        args = ("--config", str(fleet.config), "--models", str(fleet.models))
        assert run_cli("models", "pull", "tiny", "--version", "2.0.0", *args, env=env).returncode == -9
        return
    agent = agent_factory(fleet.models, config=fleet.config, env={CRASH_AT: step})
    with client(broker.port) as ops:
        body = json.dumps({"model": "tiny", "version": "2.0.0", "id": "p"})
        ops.publish(f"{agent.prefix}/cmd/models/pull", body, "ops/replies")
        assert agent.proc.wait(60) == -9, agent.log.read_text()


def power_cut(store: Path, sync_log: Path) -> list[str]:
    """What a power cut loses: the data of every file no fsync covered. Returns their names."""
    synced = set(sync_log.read_text().split()) if sync_log.exists() else set()
    lost = []
    for path in sorted(store.rglob("*")):
        st = path.lstat()
        if path.is_file() and f"{st.st_dev}:{st.st_ino}" not in synced and st.st_size:
            path.write_bytes(b"")
            lost.append(str(path.relative_to(store)))
    return lost


def check_serving(fleet: Fleet, broker: Broker, agent: Agent) -> str:
    """The version that answers, after checking it is the one `models list` says serves, and that it verifies."""
    with client(broker.port) as c:
        c.subscribe("me/r")
        c.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "id": 1}), "me/r")
        reply = c.get(timeout=30, topic="me/r").json()
    assert "label" in reply, reply
    listing = fleet.listing()
    assert [v for v, (state, _) in listing.items() if state == "serving"] == [reply["version"]], listing
    folder = fleet.state / "models" / "tiny" / reply["version"]
    mf.load(folder, [signing.load_public(fleet.keys.public)])  # every hash and the signature
    return str(reply["version"])


def check_clean(fleet: Fleet) -> None:
    """No half-written folder or file left: only the versions state.json records, and no temporary."""
    model = fleet.state / "models" / "tiny"
    assert not [p.name for pattern in LEFTOVERS for p in model.glob(pattern)]
    recorded = json.loads((model / "state.json").read_text())["versions"]
    kept = {v for v, r in recorded.items() if r.get("path")}
    assert {p.name for p in model.iterdir() if p.is_dir()} == kept


@pytest.mark.parametrize("power", [False, True], ids=["killed", "power-cut"])
@pytest.mark.parametrize("who", ["agent", "cli"])
@pytest.mark.parametrize("step", STEPS)
def test_a_pull_stopped_at_any_step_leaves_a_device_that_serves_a_verified_version(
    step: str,
    who: str,
    power: bool,
    tmp_path: Path,
    tiny_artifact: Path,
    broker: Broker,
    agent_factory: Callable[..., Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sync_log = tmp_path / "synced"
    monkeypatch.setenv(SYNC_LOG, str(sync_log))  # every process of the device logs what it fsyncs
    fleet = make_fleet(tmp_path, None)
    for version in ("1.0.0", "2.0.0"):
        publish(fleet.registry, tiny_artifact, version, fleet.keys)
    assert fleet.cli("models", "pull", "tiny", "--version", "1.0.0").returncode == 0
    crash(fleet, who, step, broker, agent_factory)
    if power:
        power_cut(fleet.state / "models", sync_log)
    agent = start(fleet, agent_factory)
    version = check_serving(fleet, broker, agent)
    check_clean(fleet)
    if step in BEFORE_PROMOTE:
        state, why = fleet.listing()["2.0.0"]
        assert (version, state) == ("1.0.0", "refused") and "the process pulling it stopped" in why
    else:
        assert version == "2.0.0"
