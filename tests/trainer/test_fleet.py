"""`edge-trainer fleet-report`: the devices' retained statuses from a real broker, one decision."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from edge_agent.config.models_file import PromotionRule
from edge_agent.lifecycle.trial import Counts
from tests.support.broker import Broker, client, free_port
from trainer import fleet
from trainer.cli import main

RULE = PromotionRule(min_escalated=100)


def status(device: str, escalated: int, serving: int, candidate: int, p99: tuple[float, float]) -> str:
    counts = Counts(shadowed=3 * escalated, escalated=escalated)
    counts.serving_agreed_with_cloud, counts.candidate_agreed_with_cloud = serving, candidate
    trial = {
        "version": "2",
        "counts": asdict(counts),
        "figures": {"serving_p99_ms": p99[0], "candidate_p99_ms": p99[1]},
        "rule": RULE.model_dump(),
        "decision": None,
    }
    return json.dumps({"device_id": device, "status": "online", "rollout": {"intents": {"candidate": trial}}})


def publish_retained(broker: Broker, messages: dict[str, str]) -> None:
    with client(broker.port) as c:
        for topic, payload in messages.items():
            c.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)


def test_devices_that_are_each_too_small_decide_together(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    publish_retained(
        broker,
        {
            "edge-agent/pi-1/status": status("pi-1", 60, 30, 50, (10.0, 11.0)),
            "edge-agent/pi-2/status": status("pi-2", 60, 35, 55, (12.0, 12.5)),
            "edge-agent/pi-3/status": json.dumps({"device_id": "pi-3", "status": "online"}),  # no trial
            "edge-agent/pi-4/status": "not json",
        },
    )
    trials = fleet.gather("127.0.0.1", broker.port, "edge-agent/+/status", "intents")
    assert [t.device for t in trials] == ["pi-1", "pi-2"]
    verdict = fleet.judge(trials)
    assert verdict.decision == "promote" and verdict.figures["cloud_gain_pt"] == pytest.approx(100 * 40 / 120, abs=0.01)
    assert verdict.figures["p99_ratio"] == 1.1  # the worst device's
    assert main(["fleet-report", "--broker", f"127.0.0.1:{broker.port}", "--model", "intents"]) == 0
    printed = capsys.readouterr().out
    assert "| pi-1 | 2 | 180 | 60 | 50.0% | 83.3% | 10.0 / 11.0 | pending |" in printed
    assert printed.strip().endswith("on 120 escalated")


def test_one_slow_device_rejects_the_fleet(broker: Broker) -> None:
    publish_retained(
        broker,
        {
            "edge-agent/pi-1/status": status("pi-1", 100, 50, 90, (10.0, 10.0)),
            "edge-agent/pi-2/status": status("pi-2", 100, 50, 90, (10.0, 15.0)),
        },
    )
    verdict = fleet.judge(fleet.gather("127.0.0.1", broker.port, "edge-agent/+/status", "intents"))
    assert verdict.decision == "reject" and "p99" in verdict.why


def test_no_broker_is_one_line_and_exit_69(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet-report", "--broker", f"127.0.0.1:{free_port()}", "--model", "intents"]) == 69
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-trainer: error: broker 127.0.0.1:") and "\n" not in err
    assert main(["fleet-report", "--broker", "nowhere", "--model", "intents"]) == 2
