"""The handler with the router in the loop: a scripted local model, a real HTTP cloud on loopback.

The local runtime is a stand-in whose confidence the text decides (so each path is reached on
purpose); the cloud, the spool and the feedback files are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from edge_agent.contract.manifest import Manifest
from edge_agent.contract.messages import Outbound
from edge_agent.contract.prediction import Prediction
from edge_agent.routing.cloud import CloudClient
from edge_agent.transport.outcome import Parked
from tests.support import cloud as fake_cloud
from tests.support.broker import free_port
from tests.support.cloud import GARBAGE, HOLD, FakeCloud, content, refusal, status
from tests.support.escalation import Rig, rig_env, run


@pytest.fixture()
def cloud() -> Iterator[FakeCloud]:
    with fake_cloud.serve(FakeCloud(teacher=lambda text: "weather")) as c:
        yield c


def test_confident_local_answer_stays_local(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        reply = await rig.ask("sure: lights on")
        assert (reply["source"], reply["escalated"], reply["reason"]) == ("local", False, None)
        assert reply["label"] == "lights_on" and reply["confidence"] == 0.95 and reply["version"] == "7"
        assert reply["timings"]["local_ms"] >= 0 and reply["timings"]["cloud_ms"] is None

    run(tmp_path, cloud.base_url, body)
    assert cloud.seen == []


def test_low_confidence_escalates_and_is_kept_as_feedback(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        reply = await rig.ask("unsure: call 555-1234 about the weather")
        assert (reply["source"], reply["escalated"], reply["reason"]) == ("cloud", True, "low_confidence")
        assert reply["label"] == "weather" and reply["confidence"] is None
        assert (reply["local_label"], reply["local_confidence"], reply["agree"]) == ("lights_on", 0.3, False)
        assert reply["timings"]["local_ms"] >= 0 and reply["timings"]["cloud_ms"] > 0
        await rig.router.drain()

    run(tmp_path, cloud.base_url, body, {"redact": [r"\d{3}-\d{4}"]})
    (row,) = [json.loads(line) for line in (tmp_path / "state/feedback/m.jsonl").read_text().splitlines()]
    assert row["text"] == "unsure: call [REDACTED] about the weather" and row["intent"] == "weather"
    assert (row["local_label"], row["local_confidence"], row["model"], row["version"]) == ("lights_on", 0.3, "m", "7")
    assert row["entities"] == [] and row["reason"] == "low_confidence"


def test_feedback_opt_out(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        assert (await rig.ask("unsure"))["source"] == "cloud"

    run(tmp_path, cloud.base_url, body, {"collect_feedback": False})
    assert not (tmp_path / "state/feedback/m.jsonl").exists()


def test_invalid_local_output_escalates(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        reply = await rig.ask("sure but broken")
        assert (reply["source"], reply["reason"], reply["label"]) == ("cloud", "invalid_output", "weather")

    run(tmp_path, cloud.base_url, body)


def test_request_route_forces_either_way(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        forced = await rig.ask("sure", route="cloud", deadline_ms=3000)
        assert (forced["source"], forced["reason"], forced["label"]) == ("cloud", "forced", "weather")
        assert forced["local_label"] == "lights_on" and forced["agree"] is False
        kept = await rig.ask("unsure", route="local")
        assert (kept["source"], kept["escalated"], kept["reason"]) == ("local-fallback", False, "local_only")
        assert (await rig.ask("sure", route="sideways"))["error"]["code"] == "bad_request"

    run(tmp_path, cloud.base_url, body)
    assert len(cloud.seen) == 1


def test_models_yaml_local_pins_the_model_to_the_device(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        reply = await rig.ask("unsure", route="cloud")
        assert (reply["source"], reply["escalated"], reply["reason"]) == ("local-fallback", False, "local_only")
        assert (await rig.ask("sure", route="cloud"))["source"] == "local"

    run(tmp_path, cloud.base_url, body, {"route": "local"})
    assert cloud.seen == []


def test_no_cloud_configured_means_local_only(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        reply = await rig.ask("unsure")
        assert (reply["source"], reply["escalated"], reply["confidence"]) == ("local-fallback", False, 0.3)
        assert (reply["reason"], reply["trigger"]) == ("no_cloud", "low_confidence")
        assert (await rig.ask("sure"))["source"] == "local"
        forced = await rig.ask("sure", route="cloud")
        assert forced["error"]["code"] == "unavailable" and "no cloud" in forced["error"]["message"]

    run(tmp_path, None, body)


def test_deadline_wins_over_a_slow_cloud(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.default = HOLD

    async def body(rig: Rig) -> None:
        start = time.monotonic()
        reply = await rig.ask("unsure", deadline_ms=300)
        took = time.monotonic() - start
        assert (reply["source"], reply["reason"], reply["trigger"]) == (
            "local-fallback",
            "cloud_timeout",
            "low_confidence",
        )
        assert reply["escalated"] is True and reply["label"] == "lights_on" and reply["confidence"] == 0.3
        assert 0.25 < took < 0.8 and 250 < reply["timings"]["cloud_ms"] < 800

    run(tmp_path, cloud.base_url, body)


@pytest.mark.parametrize(
    ("act", "reason"),
    [
        (status(500), "cloud_error"),
        (status(429), "cloud_error"),
        (GARBAGE, "cloud_error"),
        (content('{"label": "x"}'), "cloud_invalid"),
    ],
)
def test_cloud_failures_fall_back_to_the_local_answer(tmp_path: Path, cloud: FakeCloud, act: Any, reason: str) -> None:
    cloud.default = act

    async def body(rig: Rig) -> None:
        start = time.monotonic()
        reply = await rig.ask("unsure", deadline_ms=2000)
        assert (reply["source"], reply["reason"], reply["label"]) == ("local-fallback", reason, "lights_on")
        assert time.monotonic() - start < 1.0

    run(tmp_path, cloud.base_url, body)


def test_connection_refused_falls_back_at_once(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        start = time.monotonic()
        reply = await rig.ask("unsure")
        assert (reply["source"], reply["reason"]) == ("local-fallback", "cloud_error")
        assert time.monotonic() - start < 1.0

    run(tmp_path, f"http://127.0.0.1:{free_port()}/v1", body)


def test_breaker_opens_and_stops_calling_a_failing_cloud(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.default = status(500)
    changes: list[str] = []

    async def body(rig: Rig) -> None:
        rig.router.on_change = lambda: changes.append(rig.router.breaker.state)
        reasons = [(await rig.ask(f"unsure {i}"))["reason"] for i in range(4)]
        assert reasons == ["cloud_error", "cloud_error", "circuit_open", "circuit_open"]
        snap = rig.router.snapshot()
        assert snap["breaker"]["state"] == "open" and snap["breaker"]["failures"] == 2
        assert snap["cloud"] == cloud.base_url

    run(tmp_path, cloud.base_url, body)
    assert len(cloud.seen) == 2 and changes == ["open"]


def test_budget_per_model_and_global(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        first, second = await rig.ask("unsure 1"), await rig.ask("unsure 2")
        assert (first["source"], second["source"], second["reason"]) == ("cloud", "local-fallback", "budget_exhausted")
        budget = rig.router.snapshot()["budget"]
        assert budget["m"]["hour"] == {"used": 1, "limit": 1} and budget["global"]["day"]["limit"] == 10

    run(tmp_path, cloud.base_url, body, {"budget": {"per_hour": 1}}, budget={"per_day": 10})
    assert len(cloud.seen) == 1


def test_model_missing_locally_goes_to_the_cloud(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        served = rig.handler.pool.served["m"]
        rig.handler.replies.missing = {"ghost": (served.entry.model_copy(update={"name": "ghost"}), served.manifest)}
        reply = await rig.ask("anything", model="ghost")
        assert (reply["source"], reply["reason"], reply["label"]) == ("cloud", "model_missing", "weather")
        assert reply["timings"]["local_ms"] is None and "local_label" not in reply
        cloud.default = status(500)
        error = await rig.ask("anything", model="ghost")
        assert error["error"]["code"] == "cloud_unavailable" and "model_missing" in error["error"]["message"]
        assert (await rig.ask("x", model="nope"))["error"]["code"] == "unknown_model"

    run(tmp_path, cloud.base_url, body)


def test_speculative_confident_local_wins_and_cancels_the_cloud(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        for i in range(3):  # a run of doubtful answers: recent confidence drops below 0.5 + 0.2
            assert (await rig.ask(f"unsure {i}"))["source"] == "cloud"
        cloud.default = HOLD
        start = time.monotonic()
        reply = await rig.ask("sure now", deadline_ms=3000)
        assert (reply["source"], reply["escalated"]) == ("local", False)
        assert time.monotonic() - start < 1.0
        assert rig.router.snapshot()["budget"]["global"]["hour"]["used"] == 4  # the speculative call started

    run(tmp_path, cloud.base_url, body, {"speculative_margin": 0.2})


def test_speculative_cloud_first_answer_is_returned(tmp_path: Path, cloud: FakeCloud) -> None:
    async def body(rig: Rig) -> None:
        for i in range(3):
            await rig.ask(f"unsure {i}")
        reply = await rig.ask("slow and sure", deadline_ms=3000)  # local blocks until the gate opens
        assert (reply["source"], reply["reason"], reply["label"]) == ("cloud", "speculative", "weather")
        rig.gate.set()
        await rig.router.drain()

    run(tmp_path, cloud.base_url, body, {"speculative_margin": 0.2})
    rows = (tmp_path / "state/feedback/m.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["local_label"] == "lights_on"  # written once the local run finished


def test_forced_request_waits_in_the_spool_and_is_answered_later(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.default = status(503)

    async def body(rig: Rig) -> None:
        out = await rig.handler.handle(rig.inbound("sure", route="cloud"))
        assert out == Parked() and rig.spool.counts()["waiting"] == 1
        with_deadline = await rig.ask("sure", route="cloud", deadline_ms=500)
        assert (with_deadline["source"], with_deadline["reason"]) == ("local-fallback", "cloud_error")
        delivered: list[Outbound] = []
        assert len(await rig.waitlist.work(rig.handler, delivered.append)) == 1 and delivered == []  # still down
        cloud.default = None
        assert await rig.waitlist.work(rig.handler, delivered.append) == [] and rig.spool.counts()["waiting"] == 0
        (out,) = delivered
        body = json.loads(out.payload)
        assert (out.topic, body["id"], body["source"], body["label"]) == ("me/r", "sure", "cloud", "weather")

    run(tmp_path, cloud.base_url, body, breaker_failures=10)


def test_waiting_request_expires_with_an_error_reply(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.default = status(503)

    async def body(rig: Rig) -> None:
        assert await rig.handler.handle(rig.inbound("sure", route="cloud")) == Parked()
        delivered: list[Outbound] = []
        assert await rig.waitlist.work(rig.handler, delivered.append) == []
        (out,) = delivered
        error = json.loads(out.payload)["error"]
        assert error["code"] == "cloud_unavailable" and "giving up" in error["message"]

    run(tmp_path, cloud.base_url, body, wait_ttl_s=1e-6)


def test_full_waiting_list_refuses_at_once(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.default = status(503)

    async def body(rig: Rig) -> None:
        assert await rig.handler.handle(rig.inbound("a", route="cloud")) == Parked()
        reply = await rig.ask("b", route="cloud")
        assert reply["error"]["code"] == "cloud_unavailable" and "no room" in reply["error"]["message"]

    run(tmp_path, cloud.base_url, body, wait_max=1)


def test_the_api_key_never_reaches_the_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY_VAR", "sk-do-not-log-me")
    with fake_cloud.serve() as cloud:
        cloud.default = status(500)

        async def body(rig: Rig) -> None:
            with structlog.testing.capture_logs() as logs:
                await rig.ask("unsure 1")
                await rig.ask("unsure 2")
            assert logs and "sk-do-not-log-me" not in json.dumps(logs, default=str)

        run(tmp_path, cloud.base_url, body, api_key_env="SECRET_KEY_VAR")
        assert cloud.seen[0].headers["Authorization"] == "Bearer sk-do-not-log-me"


def test_a_cloud_slower_than_every_deadline_opens_the_breaker(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.default = HOLD

    async def body(rig: Rig) -> None:
        reasons = [(await rig.ask(f"unsure {i}", deadline_ms=150))["reason"] for i in range(3)]
        assert reasons == ["cloud_timeout", "cloud_timeout", "circuit_open"]

    run(tmp_path, cloud.base_url, body)
    assert len(cloud.seen) == 2


class Exploding(CloudClient):
    """A client whose call fails with an exception outside CloudFailure (what a bug would raise)."""

    async def ask(self, manifest: Manifest, text: str, deadline: float) -> Prediction:
        raise UnicodeEncodeError("utf-8", text, 0, 1, "surrogates not allowed")


def test_a_probe_failing_outside_cloud_failure_does_not_stick_the_breaker_half_open(tmp_path: Path) -> None:
    clock = [0.0]

    async def body(rig: Rig) -> None:
        rig.router.breaker.clock = lambda: clock[0]
        first = [(await rig.ask(f"unsure {i}"))["reason"] for i in range(3)]
        assert first == ["cloud_error", "cloud_error", "circuit_open"]
        clock[0] += 61  # past the cooldown: one probe may go, and it fails the same way
        assert (await rig.ask("unsure probe"))["reason"] == "cloud_error"
        assert rig.router.breaker.state == "open" and not rig.router.breaker.probing
        clock[0] += 61
        assert (await rig.ask("unsure probe 2"))["reason"] == "cloud_error"  # probing again, not stuck

    with rig_env(tmp_path, f"http://127.0.0.1:{free_port()}/v1") as start:

        async def go() -> None:
            rig = start()
            assert rig.settings.cloud is not None
            rig.router.cloud = Exploding(rig.settings.cloud)
            try:
                await body(rig)
            finally:
                await rig.handler.pool.stop()

        asyncio.run(go())


def test_a_refused_response_format_is_no_outage_for_the_breaker(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.then(refusal("llama-cpp-python"), refusal("openai"))  # json_schema, then json_object refused

    async def body(rig: Rig) -> None:
        reply = await rig.ask("unsure: will it rain")
        assert (reply["source"], reply["label"]) == ("cloud", "weather")
        breaker = rig.router.snapshot()["breaker"]
        assert (breaker["state"], breaker["failures"]) == ("closed", 0)

    run(tmp_path, cloud.base_url, body, breaker_failures=1)
    assert [seen.body.get("response_format", {}).get("type") for seen in cloud.seen] == [
        "json_schema",
        "json_object",
        None,
    ]
