"""Delivery end to end: a registry the trainer built, served by a real HTTP server (or a folder); the
agent pulls, verifies, warms up and swaps under load; bad artifacts are refused, a version that fails
probation is rolled back by the agent itself. Real mosquitto, the agent and its CLI as subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import manifest as mf
from edge_agent.contract import signing
from tests.support.agent import Agent, run_cli, write_models
from tests.support.broker import Broker, Client, client
from tests.support.registry import Keys, make_keys, publish, serve, settings_file, slow_model, wrong_samples

EX_DATAERR = 65


@dataclass
class Fleet:
    """One device's world: a registry, the build box's keys, the device's settings and models.yaml."""

    root: Path
    registry: Path
    keys: Keys
    config: Path
    models: Path
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.root / "state-dev1"  # where tests.support.agent puts device dev1's state

    def cli(self, *args: str) -> Any:
        env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(self.state)}
        return run_cli(*args, "--config", str(self.config), "--models", str(self.models), env=env)

    def listing(self) -> dict[str, tuple[str, str]]:
        result = self.cli("models", "list")
        assert result.returncode == 0, result.stderr
        rows = [line.split(None, 4) for line in result.stdout.splitlines()[1:]]
        return {row[1]: (row[2], row[4] if len(row) > 4 else "") for row in rows}


def make_fleet(tmp_path: Path, url: str | None, **settings: object) -> Fleet:
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    keys = make_keys(tmp_path / "keys")
    config = settings_file(tmp_path, url or registry.as_uri(), [keys.public], **settings)
    return Fleet(tmp_path, registry, keys, config, write_models(tmp_path, [{"name": "tiny"}]))


def start(fleet: Fleet, agent_factory: Callable[..., Agent]) -> Agent:
    return agent_factory(fleet.models, config=fleet.config)


def serving_one_of(fleet: Fleet, tiny: Path, agent_factory: Callable[..., Agent], second: Any = None) -> Agent:
    """1.0.0 and 2.0.0 (changed by `second`) in the registry, 1.0.0 pulled, the agent serving it."""
    publish(fleet.registry, tiny, "1.0.0", fleet.keys)
    publish(fleet.registry, tiny, "2.0.0", fleet.keys, second)
    assert fleet.cli("models", "pull", "tiny", "--version", "1.0.0").returncode == 0
    return start(fleet, agent_factory)


class Load:
    """A client sending requests throughout, `window` in flight, recording every reply."""

    def __init__(self, broker: Broker, prefix: str, window: int = 8) -> None:
        self.client = Client(broker.port)
        self.client.subscribe("load/replies")
        self.topic, self.window = f"{prefix}/req/tiny", window
        self.replies: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for _ in range(self.window):
                payload = json.dumps({"text": "turn on the lights in the kitchen", "id": self.sent})
                self.client.publish_nowait(self.topic, payload.encode(), 1, "load/replies")
                self.sent += 1
            for _ in range(self.window):
                self.replies.append(self.client.get(timeout=30, topic="load/replies").json())

    def until(self, version: str, count: int) -> None:
        """Wait (bounded) until `count` replies came from `version`."""
        deadline = threading.Event()
        for _ in range(600):
            if sum(r.get("version") == version for r in list(self.replies)) >= count or not self.thread.is_alive():
                return
            deadline.wait(0.1)  # polling replies a thread appends, bounded by the loop

    def finish(self) -> list[dict[str, Any]]:
        self.stop.set()
        self.thread.join(60)
        self.client.close()
        return self.replies


def test_pull_swaps_under_load_losing_and_failing_no_request(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    with serve(registry) as url:
        fleet = make_fleet(tmp_path, url, probation={"requests": 40, "minutes": 10})
        for version in ("1.0.0", "2.0.0"):
            publish(fleet.registry, tiny_artifact, version, fleet.keys)
        first = fleet.cli("models", "pull", "tiny", "--version", "1.0.0")  # a fresh device, no agent yet
        assert first.returncode == 0 and "no agent runs" in first.stdout, first.stderr
        agent = start(fleet, agent_factory)
        load = Load(broker, agent.prefix)
        load.until("1.0.0", 50)
        second = fleet.cli("models", "pull", "tiny")  # latest.json: 2.0.0, swapped in by the running agent
        assert second.returncode == 0 and "swaps it in" in second.stdout, second.stderr
        load.until("2.0.0", 100)
        replies = load.finish()
    assert [r for r in replies if "error" in r] == []
    assert sorted(r["id"] for r in replies) == list(range(load.sent))  # every request answered, once
    versions = [r["version"] for r in replies]
    assert set(versions) == {"1.0.0", "2.0.0"} and versions[-1] == "2.0.0"
    assert len({(r["label"], r["confidence"]) for r in replies}) == 1  # same weights: no half-loaded model answered
    healthy = fleet.cli("status", "--wait-healthy", "tiny", "2.0.0", "--timeout", "60")
    assert healthy.returncode == 0, healthy.stderr
    listing = fleet.listing()
    assert listing["2.0.0"][0] == "serving" and listing["1.0.0"][0] == "previous"
    assert (fleet.state / "models" / "tiny" / "1.0.0" / "manifest.json").is_file()  # the previous stays on disk
    agent.wait_log("model_swapped")


def _resign(folder: Path, keys: Keys, **update: Any) -> None:
    raw = json.loads((folder / mf.MANIFEST).read_text())
    raw.update(update)
    text = json.dumps(raw).encode()
    (folder / mf.MANIFEST).write_bytes(text)
    (folder / mf.SIGNATURE).write_text(signing.sign(text, signing.load_private(keys.private)))


REFUSALS: dict[str, tuple[Callable[[Fleet, Path], None], str]] = {
    "unknown key": (
        lambda fleet, art: publish(fleet.registry, art, "2.0.0", make_keys(fleet.root / "thief")),
        "which this device does not trust",
    ),
    "unsigned": (
        lambda fleet, art: publish(fleet.registry, art, "2.0.0", None),
        "registry .*: no tiny/2.0.0/manifest.sig",
    ),
    "changed file": (
        lambda fleet, art: (publish(fleet.registry, art, "2.0.0", fleet.keys) / "tokenizer.json").write_text("{}"),
        "tokenizer.json: larger than|tokenizer.json: truncated|sha256 does not match",
    ),
    "truncated file": (
        lambda fleet, art: os.truncate(publish(fleet.registry, art, "2.0.0", fleet.keys) / "model.onnx", 1000),
        r"model.onnx: truncated \(1000 of",
    ),
    "changed manifest": (
        lambda fleet, art: (publish(fleet.registry, art, "2.0.0", fleet.keys) / mf.MANIFEST).write_text(
            (fleet.registry / "tiny" / "2.0.0" / mf.MANIFEST).read_text().replace("lights_on", "lights_up")
        ),
        "signature does not match",
    ),
    "older version": (lambda fleet, art: publish(fleet.registry, art, "0.9.0", fleet.keys), "older than 1.0.0"),
    "wrong warm-up": (
        lambda fleet, art: publish(fleet.registry, art, "2.0.0", fleet.keys, wrong_samples),
        "warm-up: sample 1 .* answered",
    ),
    "unknown runtime": (
        lambda fleet, art: _resign(publish(fleet.registry, art, "2.0.0", fleet.keys), fleet.keys, runtime="tflite"),
        "invalid manifest: runtime",
    ),
    "newer manifest format": (
        lambda fleet, art: _resign(publish(fleet.registry, art, "2.0.0", fleet.keys), fleet.keys, schema_version=99),
        "manifest format 99 is newer than this agent reads",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_artifact_is_refused_in_one_line_and_the_serving_one_untouched(
    case: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    fleet = make_fleet(tmp_path, None)
    publish(fleet.registry, tiny_artifact, "1.0.0", fleet.keys)
    assert fleet.cli("models", "pull", "tiny", "--version", "1.0.0").returncode == 0
    before = sorted(p.name for p in (fleet.state / "models" / "tiny").iterdir())
    make, expected = REFUSALS[case]
    make(fleet, tiny_artifact)
    version = "0.9.0" if case == "older version" else "2.0.0"
    result = fleet.cli("models", "pull", "tiny", "--version", version)
    assert result.returncode == EX_DATAERR, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-agent: refused: "), lines
    assert re.search(expected, lines[0]), lines[0]
    assert fleet.listing()["1.0.0"][0] == "serving"
    assert sorted(p.name for p in (fleet.state / "models" / "tiny").iterdir()) == before  # nothing half-written
    check = fleet.cli("check")
    assert check.returncode == 0, check.stderr  # what serves still verifies


def test_a_version_failing_probation_is_rolled_back_by_the_agent(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    """2.0.0 answers the warm-up right but takes ~150 ms per request: with a 50 ms deadline every
    request times out, and after `min_requests` the agent puts 1.0.0 back, saying why. The pull comes
    over MQTT, as an operator's tool would send it."""
    fleet = make_fleet(tmp_path, None, probation={"requests": 50, "min_requests": 5})
    agent = serving_one_of(fleet, tiny_artifact, agent_factory, slow_model)
    with client(broker.port) as ops:
        ops.subscribe("ops/replies")
        ops.publish(f"{agent.prefix}/cmd/models/pull", json.dumps({"model": "tiny", "id": "c1"}), "ops/replies")
        reply = ops.get(timeout=120, topic="ops/replies").json()
        assert reply["ok"] and "2.0.0 serves" in reply["message"], reply
        ops.subscribe("ops/answers")
        codes = []
        while not any(line.get("event") == "probation_failed" for line in agent.logs()) and len(codes) < 40:
            ask = json.dumps({"text": "lights on", "deadline_ms": 50})
            ops.publish(f"{agent.prefix}/req/tiny", ask, "ops/answers")  # under CPU contention some time out
            codes.append(ops.get(timeout=30, topic="ops/answers").json().get("error", {}).get("code"))
        assert set(codes) == {"timeout"} and len(codes) >= 5, codes  # before the model ran: not its fault
        agent.wait_log("model_rolled_back")  # 1.0.0 loaded and warmed up again, then swapped in
        ops.publish(f"{agent.prefix}/req/tiny", json.dumps({"text": "lights on", "deadline_ms": 2000}), "ops/answers")
        answer = ops.get(timeout=30, topic="ops/answers").json()
    assert answer["version"] == "1.0.0" and "error" not in answer
    state, why = fleet.listing()["2.0.0"]
    assert state == "rolled_back" and re.search(r"probation: error rate 100% over \d+ answers", why), why
    gate = fleet.cli("status", "--wait-healthy", "tiny", "2.0.0", "--timeout", "5")
    assert gate.returncode == 1 and "rolled back: probation: error rate" in gate.stderr


def test_rollback_by_hand_and_a_refused_mqtt_command(
    tmp_path: Path, tiny_artifact: Path, broker: Broker, agent_factory: Callable[..., Agent]
) -> None:
    fleet = make_fleet(tmp_path, None)
    agent = serving_one_of(fleet, tiny_artifact, agent_factory)
    with client(broker.port) as ops:
        ops.subscribe("ops/replies")
        ops.publish(f"{agent.prefix}/cmd/models/pull", json.dumps({"model": "tiny", "version": "0.1"}), "ops/replies")
        refused = ops.get(timeout=60, topic="ops/replies").json()
        assert refused["error"]["code"] == "refused", refused
        ops.publish(f"{agent.prefix}/cmd/models/pull", json.dumps({"model": "tiny"}), "ops/replies")
        assert ops.get(timeout=60, topic="ops/replies").json()["ok"]
    result = fleet.cli("models", "rollback", "tiny")
    assert result.returncode == 0 and "1.0.0 serves" in result.stdout, result.stderr
    agent.wait_log("model_swapped", count=2)
    state, why = fleet.listing()["2.0.0"]
    assert state == "rolled_back" and why == "rolled back by hand"
    healthy = fleet.cli("status", "--wait-healthy", "tiny", "1.0.0", "--timeout", "30")
    assert healthy.returncode == 0, healthy.stderr


def test_disk_full_is_refused_before_downloading(
    tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.errors import ArtifactError
    from edge_agent.lifecycle import store as store_module
    from edge_agent.lifecycle.registry import open_source

    registry = tmp_path / "registry"
    publish(registry, tiny_artifact, "1.0.0", keys := make_keys(tmp_path / "keys"))
    monkeypatch.setattr(store_module, "free_bytes", lambda _folder: 1 << 20)
    store = store_module.Store(tmp_path / "state")
    trusted = [signing.load_public(keys.public)]
    with pytest.raises(ArtifactError, match=r"disk full: version 1.0.0 needs \d+ MiB, 1 MiB free"):
        store.pull("tiny", open_source(str(registry)), trusted, "1.0.0", None)
    assert not (tmp_path / "state" / "models" / "tiny" / "1.0.0").exists()
    shutil.rmtree(tmp_path / "state")
