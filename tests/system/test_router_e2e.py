"""The router end to end: `edge-agent run` as a subprocess, real mosquitto, real tiny model, real HTTP cloud.

Outages are real: the broker process is stopped and started again, the agent is killed (SIGKILL)
and restarted, the cloud port refuses connections. Waits are on messages or on the spool's rows.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.contract.manifest import read
from tests.support import cloud as fake_cloud
from tests.support.agent import Agent, run_cli, start_agent, write_models
from tests.support.broker import Broker, SessionClient, client, free_port
from tests.support.cloud import HOLD, FakeCloud


def cloud_env(url: str, **extra: str) -> dict[str, str]:
    env = {"EDGE_AGENT_CLOUD__BASE_URL": url, "EDGE_AGENT_CLOUD__MODEL": "teacher", "EDGE_AGENT_CLOUD__RETRIES": "0"}
    return {**env, **{f"EDGE_AGENT_CLOUD__{k.upper()}": v for k, v in extra.items()}}


def spool_count(agent_state: Path, table: str) -> int:
    db = agent_state / "spool.sqlite"
    if not db.exists():
        return -1
    with sqlite3.connect(db) as con:
        return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition another process brings about (a spool row count), bounded."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_low_confidence_escalates_end_to_end(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    labels = read(tiny_artifact).labels
    with fake_cloud.serve(FakeCloud(teacher=lambda text: labels[-1])) as cloud:
        models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact), "threshold": 1.0}])
        agents.append(start_agent(broker, models, tmp_path, "esc", env=cloud_env(cloud.base_url)))
        with client(broker.port) as c:
            c.subscribe("edge-agent/esc/status")
            status = c.get(topic="edge-agent/esc/status").json()  # retained: comes first
            c.subscribe("me/replies")
            c.publish("edge-agent/esc/req/tiny", json.dumps({"text": "turn off the lights", "id": 1}), "me/replies")
            body = c.get(topic="me/replies").json()
    assert (body["source"], body["escalated"], body["reason"], body["label"]) == (
        "cloud",
        True,
        "low_confidence",
        labels[-1],
    )
    assert body["local_label"] in labels and 0 < body["local_confidence"] < 1
    assert body["timings"]["local_ms"] > 0 and body["timings"]["cloud_ms"] > 0
    assert status["router"]["breaker"]["state"] == "closed" and "global" in status["router"]["budget"]
    assert status["spool"] == {"replies": 0, "refused": 0, "waiting": 0}
    assert agents[0].stop() == 0
    out = tmp_path / "export.jsonl"
    exported = run_cli(
        "feedback",
        "export",
        "--model",
        "tiny",
        "--out",
        str(out),
        env=_env(EDGE_AGENT_STATE_DIR=str(tmp_path / "state-esc")),
    )
    assert exported.returncode == 0, exported.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["text"], row["intent"], row["local_label"]) == ("turn off the lights", labels[-1], body["local_label"])


def test_replies_made_while_the_broker_is_down_are_delivered_when_it_returns(
    persistent_broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    with fake_cloud.serve(FakeCloud(default=HOLD)) as cloud:
        models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact), "threshold": 1.0}])
        agent = start_agent(persistent_broker, models, tmp_path, "bk", env=cloud_env(cloud.base_url, timeout_s="60"))
        agents.append(agent)
        me = SessionClient(persistent_broker.port, "tester-bk")
        try:
            for i in range(5):
                me.publish(
                    "edge-agent/bk/req/tiny",
                    json.dumps({"text": f"lights {i}", "id": i, "reply_to": "me/replies", "deadline_ms": 60000}),
                )
            cloud.arrived(5)  # all five are in flight, waiting on the cloud
            persistent_broker.stop()
            cloud.release.set()  # the answers come back while the broker is away
            wait_until(lambda: spool_count(tmp_path / "state-bk", "replies") == 5, "five spooled replies")
            persistent_broker.start()
            replies = me.replies(5)
            wait_until(lambda: spool_count(tmp_path / "state-bk", "replies") == 0, "spool emptied after PUBACKs")
        finally:
            me.close()
    assert sorted(r["id"] for r in replies) == [0, 1, 2, 3, 4]
    assert all(r["source"] == "cloud" and r["reason"] == "low_confidence" for r in replies)
    assert agent.proc.poll() is None


def test_agent_killed_while_requests_wait_for_the_cloud_loses_none(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    port = free_port()  # nothing listens: the cloud is down
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    env = cloud_env(f"http://127.0.0.1:{port}/v1", breaker_cooldown_s="0.2", breaker_failures="1")
    agents.append(start_agent(broker, models, tmp_path, "rs", env=env))
    with client(broker.port) as c:
        c.subscribe("me/replies")
        for i in range(3):
            c.publish(
                "edge-agent/rs/req/tiny", json.dumps({"text": "lights on", "id": i, "route": "cloud"}), "me/replies"
            )
        wait_until(lambda: spool_count(tmp_path / "state-rs", "waiting") == 3, "three requests waiting")
        agents[0].proc.send_signal(signal.SIGKILL)
        agents[0].proc.wait(10)
        with fake_cloud.serve(FakeCloud(teacher=lambda text: "weather"), port=port):
            agents.append(start_agent(broker, models, tmp_path, "rs", env=env))
            replies = [c.get(topic="me/replies").json() for _ in range(3)]
            wait_until(lambda: spool_count(tmp_path / "state-rs", "waiting") == 0, "waiting list drained")
    assert [r["id"] for r in replies] == [0, 1, 2]
    assert all((r["source"], r["reason"], r["label"]) == ("cloud", "forced", "weather") for r in replies)


def test_broken_artifact_is_answered_by_the_cloud(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    model = copy / read(copy).file("model").path
    model.write_bytes(b"corrupted")
    with fake_cloud.serve(FakeCloud(teacher=lambda text: "weather")) as cloud:
        models = write_models(tmp_path, [{"name": "tiny", "path": str(copy)}])
        agents.append(start_agent(broker, models, tmp_path, "gone", env=cloud_env(cloud.base_url)))
        with client(broker.port) as c:
            c.subscribe("edge-agent/gone/status")
            status = c.get(topic="edge-agent/gone/status").json()
            c.subscribe("me/replies")
            c.publish("edge-agent/gone/req/tiny", json.dumps({"text": "is it sunny", "id": "g"}), "me/replies")
            body = c.get(topic="me/replies").json()
    assert (body["source"], body["reason"], body["label"]) == ("cloud", "model_missing", "weather")
    assert status["cloud_only"] == {"tiny": read(copy).version} and status["models"] == {}


def test_check_reports_router_problems_one_line_each(tiny_artifact: Path, tmp_path: Path) -> None:
    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact), "route": "cloud"}])
    no_cloud = run_cli("check", "--models", str(models), env=_env())
    assert no_cloud.returncode == 78 and "route is 'cloud' but no cloud endpoint" in no_cloud.stderr
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("cloud:\n  base_url: http://127.0.0.1:9/v1\n  model: m\n  api_key_env: EDGE_TEST_NO_SUCH_KEY\n")
    missing_key = run_cli("check", "--config", str(cfg), "--models", str(models), env=_env())
    assert missing_key.returncode == 78
    assert missing_key.stderr.strip().splitlines() == ["cloud: api_key_env EDGE_TEST_NO_SUCH_KEY is not set"]
    ok = run_cli("check", "--config", str(cfg), "--models", str(models), env=_env(EDGE_TEST_NO_SUCH_KEY="sk-x"))
    assert ok.returncode == 0 and "sk-x" not in ok.stdout + ok.stderr
    bad = models.parent / "bad.yaml"
    bad.write_text(f"models:\n  - {{name: t, path: {tiny_artifact}, redact: ['(unclosed'], route: sideways}}\n")
    result = run_cli("check", "--models", str(bad), env=_env())
    assert result.returncode == 78 and len(result.stderr.strip().splitlines()) == 2
    assert "redact pattern" in result.stderr and "route" in result.stderr


def _env(**extra: str) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")} | extra
