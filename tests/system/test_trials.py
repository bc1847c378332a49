"""A candidate earns its place on a running agent: shadow, canary, the promotion rule, the fleet report.

Real parts: `edge-agent run` as a subprocess, mosquitto, two tiny artifacts trained apart (so they
disagree on some texts), and a loopback OpenAI-compatible cloud whose answers follow one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.contract import manifest as mf
from edge_agent.lifecycle.store import Store
from edge_agent.runtimes.onnx import OnnxRuntime
from tests.support import cloud as fake_cloud
from tests.support.agent import Agent, start_agent, write_models
from tests.support.broker import Broker, Client, client
from tests.support.cloud import FakeCloud
from tests.system.test_router_e2e import cloud_env
from trainer.cli import main as trainer_main
from trainer.encoder.tiny import build_tiny_artifact
from trainer.records import builtin_records

TEXTS = [str(r["text"]) for r in builtin_records()]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The serving version (barely trained) and a candidate (trained 10x longer), and what each answers."""
    root = tmp_path_factory.mktemp("pair")
    serving = build_tiny_artifact(root / "serving", steps=3, version="1")
    candidate = build_tiny_artifact(root / "candidate", steps=30, version="2")
    said = {}
    for name, folder in (("serving", serving), ("candidate", candidate)):
        runtime = OnnxRuntime(folder, mf.load(folder))
        said[name] = {text: runtime.predict([text])[0].label for text in TEXTS}
    differ = sum(said["serving"][t] != said["candidate"][t] for t in TEXTS)
    assert differ >= 2, "the two tiny models must disagree somewhere for the trial to mean anything"
    return {"serving": serving, "candidate": candidate, "said": said}


def models_yaml(tmp: Path, pair: dict[str, Any], **candidate: Any) -> Path:
    rule = {"min_escalated": len(TEXTS), "min_gain_pt": 1.0, "max_p99_ratio": 100.0, "max_error_increase": 0.0}
    entry = {
        "name": "tiny",
        "path": str(pair["serving"]),
        "threshold": candidate.pop("threshold", 1.0),  # 1.0: every request escalates, the cloud answers
        "candidate": {"path": str(pair["candidate"]), "promote": rule, **candidate},
    }
    return write_models(tmp, [entry])


@pytest.fixture()
def cloud_following(pair: dict[str, Any]) -> Iterator[Callable[[str], FakeCloud]]:
    servers: list[Any] = []

    def start(side: str) -> FakeCloud:
        server = fake_cloud.serve(FakeCloud(teacher=lambda text: pair["said"][side].get(text, "weather")))
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def ask_all(c: Client, device: str, texts: list[str]) -> list[dict[str, Any]]:
    c.subscribe(f"me/{device}")
    replies = []
    for i, text in enumerate(texts):
        c.publish(f"edge-agent/{device}/req/tiny", json.dumps({"text": text, "id": i}), f"me/{device}")
        replies.append(c.get(topic=f"me/{device}").json())
    return replies


def on_trial(c: Client, device: str) -> None:
    """Wait for the status that says the candidate's trial runs (it starts once the agent is up)."""
    while "candidate" not in c.get(topic=f"edge-agent/{device}/status").json().get("rollout", {}).get("tiny", {}):
        pass


def decided(c: Client, device: str) -> dict[str, Any]:
    """The trial's decision from the status topic (the agent publishes it when the rule decides)."""
    while True:
        status = c.get(topic=f"edge-agent/{device}/status").json()
        trial = status.get("rollout", {}).get("tiny", {}).get("candidate")
        if trial and trial["decision"]:
            return {"trial": trial, "status": status}


def restarted(
    broker: Broker, models: Path, tmp: Path, agents: list[Agent], device: str, cloud: FakeCloud
) -> dict[str, Any]:
    """Stop the device's agent, start it again on the same state, and return its first retained status."""
    assert agents[-1].stop() == 0
    agents.append(start_agent(broker, models, tmp, device, env=cloud_env(cloud.base_url)))
    with client(broker.port) as c:
        c.subscribe(f"edge-agent/{device}/status")
        return c.get(topic=f"edge-agent/{device}/status").json()  # type: ignore[no-any-return]


def test_a_candidate_that_agrees_more_with_the_cloud_is_promoted(
    broker: Broker, pair: dict[str, Any], tmp_path: Path, agents: list[Agent], cloud_following: Any, capsys: Any
) -> None:
    cloud = cloud_following("candidate")
    models = models_yaml(tmp_path, pair)
    agents.append(start_agent(broker, models, tmp_path, "shadow1", env=cloud_env(cloud.base_url)))
    with client(broker.port) as c:
        c.subscribe("edge-agent/shadow1/status")
        on_trial(c, "shadow1")
        replies = ask_all(c, "shadow1", TEXTS)
        assert {r["version"] for r in replies} == {"1"}  # in shadow the serving model answers, always
        got = decided(c, "shadow1")
        after = ask_all(c, "shadow1", TEXTS[:1])[0]
    trial, status = got["trial"], got["status"]
    serving_right = sum(pair["said"]["serving"][t] == pair["said"]["candidate"][t] for t in TEXTS) / len(TEXTS)
    assert trial["decision"] == "promote" and trial["version"] == "2"
    assert trial["counts"]["shadowed"] == trial["counts"]["escalated"] == len(TEXTS)
    assert trial["figures"]["candidate_cloud_agreement"] == 1.0
    assert trial["figures"]["serving_cloud_agreement"] == pytest.approx(serving_right, abs=1e-3)
    assert status["models"] == {"tiny": "2"} and after["version"] == "2"
    metrics = httpx.get(f"http://127.0.0.1:{agents[0].metrics_port}/metrics", timeout=5).text
    assert 'edge_agent_candidate_decision{decision="promote",model="tiny",version="2"} 1.0' in metrics
    kept = Store(tmp_path / "state-shadow1").serving("tiny")
    assert (
        kept is not None and kept.version == "2" and kept.path == tmp_path / "state-shadow1" / "models" / "tiny" / "2"
    )
    assert mf.load(kept.path).version == "2"  # a copy of its own: the candidate folder may be rebuilt

    # the fleet view: the same decision from the retained status, by the same rule
    assert trainer_main(["fleet-report", "--broker", f"127.0.0.1:{broker.port}", "--model", "tiny", "--json"]) == 0
    fleet = json.loads(capsys.readouterr().out)
    assert fleet["decision"] == "promote" and [d["device"] for d in fleet["devices"]] == ["shadow1"]

    # a restart serves the promoted version and runs no trial again
    status = restarted(broker, models, tmp_path, agents, "shadow1", cloud)
    assert status["models"] == {"tiny": "2"} and "candidate" not in status["rollout"]["tiny"]


def test_a_candidate_that_agrees_less_is_rejected_and_not_tried_again(
    broker: Broker, pair: dict[str, Any], tmp_path: Path, agents: list[Agent], cloud_following: Any
) -> None:
    cloud = cloud_following("serving")
    models = models_yaml(tmp_path, pair)
    agents.append(start_agent(broker, models, tmp_path, "shadow2", env=cloud_env(cloud.base_url)))
    with client(broker.port) as c:
        c.subscribe("edge-agent/shadow2/status")
        on_trial(c, "shadow2")
        ask_all(c, "shadow2", TEXTS)
        got = decided(c, "shadow2")
    assert got["trial"]["decision"] == "reject" and "agreement with the cloud" in got["trial"]["why"]
    assert got["status"]["models"] == {"tiny": "1"}
    record = Store(tmp_path / "state-shadow2").state("tiny").versions["2"]
    assert record.state == "refused" and "rejected after its trial" in record.why
    status = restarted(broker, models, tmp_path, agents, "shadow2", cloud)
    assert status["models"] == {"tiny": "1"} and "candidate" not in status["rollout"]["tiny"]


def test_a_canary_answers_its_share_with_its_own_version(
    broker: Broker, pair: dict[str, Any], tmp_path: Path, agents: list[Agent], cloud_following: Any
) -> None:
    cloud = cloud_following("candidate")
    models = models_yaml(tmp_path, pair, shadow=0.0, canary=1.0, threshold=0.0)
    agents.append(start_agent(broker, models, tmp_path, "canary", env=cloud_env(cloud.base_url)))
    with client(broker.port) as c:
        c.subscribe("edge-agent/canary/status")
        on_trial(c, "canary")
        replies = ask_all(c, "canary", TEXTS[:5])
    assert {r["version"] for r in replies} == {"2"}
    assert [r["label"] for r in replies] == [pair["said"]["candidate"][t] for t in TEXTS[:5]]
