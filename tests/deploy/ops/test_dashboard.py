"""ops/: the Grafana dashboard and the Prometheus alert rules graph and alert on what the agent exports.

A real agent (mosquitto, the tiny artifact, a loopback fake cloud whose first call fails and is
retried) answers a few requests, so that every labelled series exists, and is scraped once. Every
metric name in a panel's or a rule's expression must be a series that scrape exports, with
samples. Where promtool is installed, the rules and the panels' queries are also parsed by it and
the alerts are run against synthetic series (`promtool test rules`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.contract.manifest import read
from tests.deploy.ops.promql import (
    ALERTS,
    EXPECTED_ALERTS,
    alert_rules,
    dashboard_exprs,
    load_dashboard,
    load_rules,
    metric_names,
    panels,
    rule_exprs,
    unknown,
)
from tests.support import cloud as fake_cloud
from tests.support.agent import start_agent, write_models
from tests.support.broker import client, make_broker
from tests.support.cloud import FakeCloud, status


def test_metric_names_finds_the_metrics_and_only_them() -> None:
    cases = {
        'histogram_quantile(0.99, sum by (le, model) (rate(edge_agent_request_duration_seconds_bucket{model=~"$model"}'
        "[5m])))": {"edge_agent_request_duration_seconds_bucket"},
        'sum(rate(edge_agent_escalations_total{instance=~"$instance"}[$__rate_interval])) by (model)'
        ' / on (model) group_left (version) sum by (model) (rate(edge_agent_requests_total{outcome="answered"}[1d]'
        " offset 1d)) > bool 0.1": {"edge_agent_escalations_total", "edge_agent_requests_total"},
        'up{job="edge-agent"} == 0 or absent(up{job="edge-agent"})': {"up"},
        "process_resident_memory_bytes > 350e6 unless on() vector(1) * 1e-3": {"process_resident_memory_bytes"},
        'label_replace(max_over_time(edge_agent_spool_rows[1h:5m]), "q", "$1", "queue", "(.*)") and inf': {
            "edge_agent_spool_rows"
        },
        "count by (model, version) (edge_agent_model_info) + ignoring(state) job:edge_agent:rate5m": {
            "edge_agent_model_info",
            "job:edge_agent:rate5m",
        },
        "topk(3, sum without (le) (edge_agent_batch_size_count)) @ start()": {"edge_agent_batch_size_count"},
        "edge_agent_mqtt_connected": {"edge_agent_mqtt_connected"},
        'sum(edge_agent_model_on_probation{model="on"})': {"edge_agent_model_on_probation"},  # `on` in a name
    }
    for expr, names in cases.items():
        assert metric_names(expr) == names, expr


def test_panels_finds_those_in_collapsed_rows() -> None:
    dashboard = {"panels": [{"title": "a"}, {"type": "row", "title": "r", "panels": [{"title": "b"}]}, {"title": "c"}]}
    assert [p["title"] for p in panels(dashboard)] == ["a", "r", "b", "c"]


# -- what the agent exports ----------------------------------------------------------------

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "stateset": ("",),
}


@dataclass(frozen=True)
class Exported:
    declared: frozenset[str]  # every series name the families declare (counter foo: foo_total; histogram: _bucket...)
    sampled: frozenset[str]  # the series names that had samples in the scrape


@pytest.fixture(scope="module")
def exported(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    tmp = tmp_path_factory.mktemp("ops")
    broker = make_broker(tmp)
    broker.start()
    labels = read(tiny_artifact).labels
    # the first call fails three times (2 retries): failures, retries and a fallback get their series
    script = FakeCloud(teacher=lambda text: labels[-1]).then(status(500), status(500), status(500))
    try:
        with fake_cloud.serve(script) as cloud:
            models = write_models(
                tmp,
                [
                    {"name": "tiny", "path": str(tiny_artifact), "threshold": 0.0},
                    {"name": "esc", "path": str(tiny_artifact), "threshold": 1.0, "budget": {"per_hour": 100}},
                ],
            )
            env = {
                "EDGE_AGENT_CLOUD__BASE_URL": cloud.base_url,
                "EDGE_AGENT_CLOUD__MODEL": "teacher",
                "EDGE_AGENT_CLOUD__BACKOFF_S": "0",
                "EDGE_AGENT_CLOUD__PRICE_PER_CALL_USD": "0.001",
            }
            agent = start_agent(broker, models, tmp, "ops", env=env)
            try:
                with client(broker.port) as c:
                    c.subscribe("me/r")
                    sent = [("tiny", '{"text": "turn on the light"}'), ("tiny", "not json")]
                    sent += [("esc", '{"text": "what is the weather"}')] * 2  # fallback, then the cloud answers
                    for model, payload in sent:
                        c.publish(f"edge-agent/ops/req/{model}", payload, "me/r")
                        c.get(topic="me/r")  # one at a time: each settled before the next
                text = httpx.get(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5).text
            finally:
                agent.stop()
    finally:
        broker.stop()
    declared: set[str] = set()
    sampled: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        sampled.update(sample.name for sample in family.samples)
    assert sampled <= declared, sampled - declared  # the suffix table knows every kind the agent exports
    yield Exported(frozenset(declared), frozenset(sampled))


def test_the_scrape_has_the_series_the_fixture_makes(exported: Exported) -> None:
    for name in ("edge_agent_cloud_failures_total", "edge_agent_fallbacks_total", "edge_agent_cloud_retries_total"):
        assert name in exported.sampled, name
    assert "edge_agent_requests" not in exported.declared  # a counter's family name is no series


def test_dashboard_uses_only_exported_metrics(exported: Exported) -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert len(exprs) > 30
    assert unknown(exprs, exported.declared) == {}
    assert unknown(exprs, exported.sampled) == {}  # and each had samples after the fixture's requests


def test_alert_rules_use_only_exported_metrics(exported: Exported) -> None:
    exprs = rule_exprs(load_rules())
    assert unknown(exprs, exported.declared) == {}
    assert unknown(exprs, exported.sampled) == {}


def test_a_mistyped_metric_is_caught(exported: Exported) -> None:
    dashboard = load_dashboard()  # a fresh copy: the file stays as it is
    target = next(p for p in panels(dashboard) if p.get("title") == "Queue wait p50 / p99")["targets"][0]
    target["expr"] = target["expr"].replace("edge_agent_queue_wait_seconds_bucket", "edge_agent_queue_wait_seconds")
    assert unknown(dashboard_exprs(dashboard), exported.declared) == {
        "panel 'Queue wait p50 / p99' target A": {"edge_agent_queue_wait_seconds"}
    }
    rules = load_rules()
    next(alert_rules(rules))["expr"] = "edge_agent_escalation_total > 0"
    mistyped = {"alert EscalationShareJump": {"edge_agent_escalation_total"}}
    assert unknown(rule_exprs(rules), exported.declared) == mistyped
    assert unknown({"x": "vector(1)"}, exported.declared) == {"x": set()}  # naming no metric is caught too


# -- shape -------------------------------------------------------------------------------


def test_dashboard_is_importable() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["query"]["query"] == "label_values(edge_agent_model_info, instance)"
    assert variables["model"]["query"]["query"].startswith("label_values(edge_agent_model_info")
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel.get("title"), panel
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat", "table"), panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    model_filtered = [e for e in dashboard_exprs(dashboard).values() if 'model=~"$model"' in e]
    assert len(model_filtered) > 20  # the model variable filters the per-model panels


def test_alert_rules_are_complete() -> None:
    rules = load_rules()  # yaml.safe_load: the file is plain YAML
    assert [g["name"] for g in rules["groups"]] == ["edge-agent"]
    assert {rule["alert"] for rule in alert_rules(rules)} == EXPECTED_ALERTS
    for rule in alert_rules(rules):
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        if name != "AgentDown":
            assert 'job="edge-agent"' in rule["expr"], name  # every selector is scoped to the agents' job
    text = ALERTS.read_text()
    for name in EXPECTED_ALERTS:  # each rule has its comment just above it
        assert re.search(rf"#[^\n]*\n(?:\s*#[^\n]*\n)*\s*- alert: {name}\n", text), name
    assert 'up{job="edge-agent"} == 0' in next(r for r in alert_rules(rules) if r["alert"] == "AgentDown")["expr"]
