"""Metrics end to end: the running agent scraped over HTTP after a known mix of requests; the MQTT
summary and `edge-agent status` carry the same numbers."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.contract.manifest import read
from edge_agent.ops.metrics import label_key, quantile, summarize
from tests.support import cloud as fake_cloud
from tests.support.agent import Agent, run_cli, start_agent, write_models
from tests.support.broker import Broker, client
from tests.support.cloud import USAGE, FakeCloud

PRICE_CALL, PRICE_PROMPT, PRICE_COMPLETION = 0.002, 0.5, 1.5  # USD; per 1k tokens for the last two

# Every metric the issue names, as exported (counters with their _total).
EXPORTED = [
    "edge_agent_requests_total",
    "edge_agent_request_duration_seconds",
    "edge_agent_queue_wait_seconds",
    "edge_agent_inference_duration_seconds",
    "edge_agent_batch_size",
    "edge_agent_escalations_total",
    "edge_agent_fallbacks_total",
    "edge_agent_cloud_request_duration_seconds",
    "edge_agent_cloud_calls_total",
    "edge_agent_cloud_failures_total",
    "edge_agent_cloud_retries_total",
    "edge_agent_cloud_tokens_total",
    "edge_agent_cloud_spend_usd_total",
    "edge_agent_cloud_budget_used_calls",
    "edge_agent_cloud_budget_limit_calls",
    "edge_agent_spool_rows",
    "edge_agent_spool_oldest_age_seconds",
    "edge_agent_inflight_requests",
    "edge_agent_backlog_requests",
    "edge_agent_cloud_breaker_state",
    "edge_agent_model_info",
    "edge_agent_model_on_probation",
    "edge_agent_mqtt_connected",
    "process_resident_memory_bytes",
]


def scrape(agent: Agent) -> str:
    response = httpx.get(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text: str) -> dict[str, dict[str, float]]:
    """{sample name: {"k=v,...": value}} from the Prometheus text, keyed as the summary keys them."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[label_key(s.labels)] = s.value
    return out


@pytest.fixture()
def served(broker: Broker, tiny_artifact: Path, tmp_path: Path) -> Iterator[tuple[Agent, dict[str, str]]]:
    labels = read(tiny_artifact).labels
    with fake_cloud.serve(FakeCloud(teacher=lambda text: labels[-1])) as cloud:
        models = write_models(
            tmp_path,
            [
                {"name": "tiny", "path": str(tiny_artifact), "threshold": 0.0},
                {"name": "esc", "path": str(tiny_artifact), "threshold": 1.0, "budget": {"per_hour": 100}},
            ],
        )
        env = {
            "EDGE_AGENT_CLOUD__BASE_URL": cloud.base_url,
            "EDGE_AGENT_CLOUD__MODEL": "teacher",
            "EDGE_AGENT_CLOUD__PRICE_PER_CALL_USD": str(PRICE_CALL),
            "EDGE_AGENT_CLOUD__PRICE_PER_1K_PROMPT_TOKENS_USD": str(PRICE_PROMPT),
            "EDGE_AGENT_CLOUD__PRICE_PER_1K_COMPLETION_TOKENS_USD": str(PRICE_COMPLETION),
            "EDGE_AGENT_METRICS__PUBLISH_S": "0.2",
        }
        agent = start_agent(broker, models, tmp_path, "met", env=env)
        yield agent, {**env, "EDGE_AGENT_STATE_DIR": str(tmp_path / "state-met")}
        agent.stop()


def send_mix(broker: Broker) -> None:
    """5 local answers, 3 escalations the cloud answers, 2 bad payloads, 1 request for no model."""
    with client(broker.port) as c:
        c.subscribe("me/r")
        mix: list[tuple[str, Any]] = [("tiny", {"text": f"turn on light {i}"}) for i in range(5)]
        mix += [("esc", {"text": f"what is the weather {i}"}) for i in range(3)]
        mix += [("tiny", "not json"), ("tiny", {"text": ""}), ("nope", {"text": "hello"})]
        for model, payload in mix:
            c.publish(
                f"edge-agent/met/req/{model}", payload if isinstance(payload, str) else json.dumps(payload), "me/r"
            )
            c.get(topic="me/r")  # one at a time: each is settled before the next


def test_scrape_counts_a_known_mix(served: tuple[Agent, dict[str, str]], broker: Broker, tiny_artifact: Path) -> None:
    agent, _ = served
    send_mix(broker)
    text = scrape(agent)
    for name in EXPORTED:
        family = name.removesuffix("_total")
        assert f"# HELP {family} " in text or f"# HELP {name} " in text, name
    got = samples(text)
    requests = got["edge_agent_requests_total"]
    assert requests["model=tiny,outcome=answered,source=local"] == 5
    assert requests["model=esc,outcome=answered,source=cloud"] == 3
    assert requests["model=tiny,outcome=bad_request,source=none"] == 2
    assert requests["model=_unknown,outcome=unknown_model,source=none"] == 1
    assert sum(requests.values()) == 11
    assert got["edge_agent_escalations_total"] == {"model=esc,reason=low_confidence": 3}
    assert got["edge_agent_request_duration_seconds_count"] == {"model=esc": 3, "model=tiny": 7, "model=_unknown": 1}
    assert got["edge_agent_queue_wait_seconds_count"] == {"model=tiny": 5, "model=esc": 3}
    assert got["edge_agent_batch_size_sum"] == {"model=tiny": 5, "model=esc": 3}
    assert got["edge_agent_cloud_calls_total"] == {"model=esc": 3}
    assert got["edge_agent_cloud_request_duration_seconds_count"] == {"model=esc": 3}
    assert got["edge_agent_cloud_tokens_total"] == {
        "kind=prompt,model=esc": 3 * USAGE[0],
        "kind=completion,model=esc": 3 * USAGE[1],
    }
    spend = 3 * (PRICE_CALL + (USAGE[0] * PRICE_PROMPT + USAGE[1] * PRICE_COMPLETION) / 1000)
    assert got["edge_agent_cloud_spend_usd_total"]["model=esc"] == pytest.approx(spend)
    assert got["edge_agent_cloud_budget_used_calls"]["scope=esc,window=hour"] == 3
    assert got["edge_agent_cloud_budget_limit_calls"] == {"scope=esc,window=hour": 100}
    assert got["edge_agent_cloud_breaker_state"] == {"state=closed": 1, "state=half_open": 0, "state=open": 0}
    assert got["edge_agent_inflight_requests"] == {"": 0}
    assert got["edge_agent_spool_rows"] == {"queue=replies": 0, "queue=refused": 0, "queue=waiting": 0}
    manifest = read(tiny_artifact)
    quantization = manifest.onnx.quantization if manifest.onnx and manifest.onnx.quantization else "dynamic"
    assert got["edge_agent_model_info"] == {
        f"model={m},quantization={quantization},runtime=onnx,version={manifest.version}": 1 for m in ("tiny", "esc")
    }
    assert got["process_resident_memory_bytes"][""] > 10 * 2**20


def test_mqtt_summary_and_status_carry_the_same_numbers(served: tuple[Agent, dict[str, str]], broker: Broker) -> None:
    agent, env = served
    send_mix(broker)
    scraped = samples(scrape(agent))
    with client(broker.port) as c:
        c.subscribe("edge-agent/met/metrics")
        while True:  # summaries keep coming every 0.2 s: wait for one taken after the mix
            summary = c.get(topic="edge-agent/met/metrics").json()
            if sum(summary["metrics"].get("edge_agent_requests_total", {}).values()) == 11:
                break
    published = summary["metrics"]
    assert summary["device_id"] == "met"
    for name in ("edge_agent_requests_total", "edge_agent_escalations_total", "edge_agent_cloud_spend_usd_total"):
        assert published[name] == pytest.approx(scraped[name]), name
    for name in ("edge_agent_request_duration_seconds", "edge_agent_queue_wait_seconds"):
        counts = {key: h["count"] for key, h in published[name].items()}
        assert counts == scraped[f"{name}_count"], name
    port = str(agent.metrics_port)
    result = run_cli("status", env={**os.environ, **env, "EDGE_AGENT_METRICS__PORT": port})
    assert result.returncode == 0, result.stderr
    assert "requests: 11 (local 5, cloud 3, none 3; 3 error replies)" in result.stdout
    assert "escalation share: 37.5% (low_confidence 3)" in result.stdout  # of the 8 answered
    assert "3 calls, 0 failed" in result.stdout
    both = json.loads(run_cli("status", "--json", env={**os.environ, **env, "EDGE_AGENT_METRICS__PORT": port}).stdout)
    assert both["metrics"]["metrics"]["edge_agent_requests_total"] == scraped["edge_agent_requests_total"]


def test_status_says_when_the_agent_is_not_there(tmp_path: Path) -> None:
    from tests.support.broker import free_port

    env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(tmp_path), "EDGE_AGENT_METRICS__PORT": str(free_port())}
    result = run_cli("status", env=env)
    assert result.returncode == 0 and json.loads(result.stdout) == {}  # no agent: an empty status, as before
    assert result.stderr.strip().splitlines()[-1].startswith("metrics: no answer from http://127.0.0.1:")
    both = json.loads(run_cli("status", "--json", env=env).stdout)
    assert both["status"] == {} and both["metrics"]["error"].startswith("no answer from")


def test_quantile_follows_prometheus_histogram_quantile() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.005, 90.0), (0.01, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.002)
    assert quantile(0.7, buckets) == pytest.approx(0.002 + 0.003 * 0.5)
    assert quantile(0.99, buckets) == pytest.approx(0.005 + 0.005 * 0.9)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # beyond the last bound


def test_summary_of_a_fresh_registry_has_no_samples_but_gauges() -> None:
    from edge_agent.ops.metrics import GaugeReader, Gauges, Metrics

    metrics = Metrics()
    GaugeReader(metrics, Gauges)  # an agent with nothing in flight, nothing loaded
    out = summarize(metrics.registry.collect())
    assert out["edge_agent_inflight_requests"] == {"": 0}
    assert "edge_agent_requests_total" not in out  # a labelled counter has no sample before its first count


def test_the_endpoint_answers_only_what_it_serves() -> None:
    """Wrong paths and methods get a status line, a request line past the reader's limit and a silent
    client get nothing, and the endpoint keeps serving."""
    from edge_agent.ops.endpoint import Endpoint
    from edge_agent.ops.metrics import GaugeReader, Gauges, Metrics
    from tests.support.broker import free_port

    async def ask(port: int, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    async def scenario() -> list[bytes]:
        port = free_port()
        metrics = Metrics()
        GaugeReader(metrics, Gauges)
        endpoint = Endpoint(metrics, lambda: {"ok": True})
        await endpoint.start("127.0.0.1", port)
        try:
            return [
                await ask(port, b"GET /nope HTTP/1.1\r\n\r\n"),
                await ask(port, b"POST /metrics HTTP/1.1\r\n\r\n"),
                await ask(port, b"GET /" + b"x" * 100_000 + b" HTTP/1.1\r\n\r\n"),
                await ask(port, b"GET /summary HTTP/1.1\r\n\r\n"),
                await ask(port, b"GET /metrics HTTP/1.1\r\n\r\n"),
            ]
        finally:
            await endpoint.close()

    missing, method, huge, summary, metrics = asyncio.run(scenario())
    assert missing.startswith(b"HTTP/1.1 404 ") and method.startswith(b"HTTP/1.1 405 ")
    assert huge == b""
    assert summary.startswith(b"HTTP/1.1 200 ") and summary.endswith(b'{"ok": true}')
    assert b"# HELP edge_agent_inflight_requests " in metrics


def test_a_taken_port_stops_start_up_with_one_line() -> None:
    import socket

    from edge_agent.errors import ConfigError
    from edge_agent.ops.endpoint import Endpoint
    from edge_agent.ops.metrics import Metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            asyncio.run(Endpoint(Metrics(), dict).start("127.0.0.1", port))
    assert err.value.problems == [
        f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use; set metrics.port"
    ]


def test_an_escalation_that_ends_in_an_error_still_counts_as_one(
    broker: Broker, tiny_artifact: Path, tmp_path: Path, agents: list[Agent]
) -> None:
    """route=cloud with the cloud away: the request waits in the spool, expires, and its error reply is
    counted with its escalation (forced), so an outage does not make the escalation share fall."""
    from tests.support.broker import free_port

    models = write_models(tmp_path, [{"name": "tiny", "path": str(tiny_artifact)}])
    env = {
        "EDGE_AGENT_CLOUD__BASE_URL": f"http://127.0.0.1:{free_port()}/v1",  # nothing listens there
        "EDGE_AGENT_CLOUD__MODEL": "teacher",
        "EDGE_AGENT_CLOUD__RETRIES": "0",
        "EDGE_AGENT_CLOUD__WAIT_TTL_S": "0.5",
    }
    agents.append(start_agent(broker, models, tmp_path, "out", env=env))
    with client(broker.port) as c:
        c.subscribe("me/r")
        c.publish("edge-agent/out/req/tiny", json.dumps({"text": "lights on", "route": "cloud"}), "me/r")
        assert c.get(topic="me/r", timeout=30).json()["error"]["code"] == "cloud_unavailable"
    got = samples(scrape(agents[-1]))
    assert got["edge_agent_requests_total"] == {"model=tiny,outcome=cloud_unavailable,source=none": 1}
    assert got["edge_agent_escalations_total"] == {"model=tiny,reason=forced": 1}


def test_idle_connections_do_not_blind_the_scraper() -> None:
    """Before: 24 connections that sent nothing held every slot; 0 of 10 scrapes were answered (issue 23)."""
    from edge_agent.ops.endpoint import Endpoint
    from edge_agent.ops.metrics import GaugeReader, Gauges, Metrics
    from tests.support.broker import free_port

    async def scenario() -> list[bytes]:
        port = free_port()
        metrics = Metrics()
        GaugeReader(metrics, Gauges)
        endpoint = Endpoint(metrics, dict)
        await endpoint.start("127.0.0.1", port)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(24)]
        try:
            answers = []
            for _ in range(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
                await writer.drain()
                answers.append(await reader.read())
                writer.close()
            return answers
        finally:
            for _, writer in idle:
                writer.close()
            await endpoint.close()

    answers = asyncio.run(scenario())
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:20] for a in answers]
