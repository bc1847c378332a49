"""ops/: the Grafana dashboard and the Prometheus alert rules graph and alert on what the agent exports.

A real agent (mosquitto, the tiny artifact, a loopback fake cloud whose first call fails and is
retried) answers a few requests, so that every labelled series exists, and is scraped once. Every
metric name in a panel's or a rule's expression must be a series that scrape exports, with
samples. Where promtool is installed, the rules and the panels' queries are also parsed by it and
the alerts are run against synthetic series (`promtool test rules`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.manifest import read
from tests.support import cloud as fake_cloud
from tests.support.agent import start_agent, write_models
from tests.support.broker import client, make_broker
from tests.support.cloud import FakeCloud, status

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "edge-agent.json"
ALERTS = ROOT / "ops" / "prometheus" / "edge-agent-alerts.yml"
PROMETHEUS_MADE = {"up"}  # series Prometheus writes itself for every target

# -- metric names in a PromQL expression ---------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FUNCTIONS = _words(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort
    sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh
    time timestamp vector year
    """
)
AGGREGATIONS = _words(
    """
    avg bottomk count count_values group limit_ratio limitk max min quantile stddev stdvar sum topk
    """
)
KEYWORDS = _words(
    """
    and or unless bool by without on ignoring group_left group_right offset atan2 start end inf nan
    """
)
NOT_METRICS = FUNCTIONS | AGGREGATIONS | KEYWORDS

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")  # ranges, subqueries
_LABEL_LISTS = re.compile(r"(?<![\w:])(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBERS = re.compile(r"(?<![\w:])\.?\d[\w.]*")  # 0.99, 350e6, 0x1f, and durations (5m, 1d)
_IDENTIFIER = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*(\()?")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $variables allowed)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _GRAFANA_VARS.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call is None and name.lower() not in NOT_METRICS:
            names.add(name)
    return names


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


# -- what the dashboard and the rules use --------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows (collapsed rows keep theirs in `panels`) included."""
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        yield panel
        stack[:0] = panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """{where: expr} for every panel target and every template query."""
    out = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                out[f"panel {panel.get('title')!r} target {target.get('refId')}"] = target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out[f"variable {var['name']}"] = query
    return out


def test_panels_finds_those_in_collapsed_rows() -> None:
    dashboard = {"panels": [{"title": "a"}, {"type": "row", "title": "r", "panels": [{"title": "b"}]}, {"title": "c"}]}
    assert [p["title"] for p in panels(dashboard)] == ["a", "r", "b", "c"]


def alert_rules(rules: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in rules["groups"]:
        yield from group["rules"]


def names_used(expr: str) -> set[str]:
    template = _LABEL_VALUES.findall(expr)  # Grafana's label_values(metric, label): the label is no metric
    return set(template) if template else metric_names(expr)


def unknown(exprs: dict[str, str], exported: Iterable[str]) -> dict[str, set[str]]:
    """{where: names not exported}, and {where: set()} for an expression that names no metric at all."""
    allowed = set(exported) | PROMETHEUS_MADE
    out = {}
    for where, expr in exprs.items():
        names = names_used(expr)
        if not names or names - allowed:
            out[where] = names - allowed
    return out


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def load_rules() -> dict[str, Any]:
    return dict(yaml.safe_load(ALERTS.read_text()))


def rule_exprs(rules: dict[str, Any]) -> dict[str, str]:
    return {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules(rules)}


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


EXPECTED_ALERTS = {
    "EscalationShareJump",
    "SpoolGrowing",
    "CloudBreakerOpen",
    "LatencyP99OverDeadline",
    "AgentDown",
    "ErrorReplies",
    "BrokerDisconnected",
    "MemoryHigh",
    "BudgetNearlySpent",
}


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


# -- promtool, where it is installed -------------------------------------------------------

PROMTOOL = shutil.which("promtool")
# CI installs it (scripts/bootstrap): there a missing promtool fails instead of skipping
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true", reason="no promtool (Debian: apt-get install prometheus)"
)


def promtool(*args: str, cwd: Path) -> None:
    assert PROMTOOL is not None, "promtool is missing: scripts/bootstrap installs Debian's prometheus package"
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    promtool("check", "rules", str(ALERTS), cwd=tmp_path)


@needs_promtool
def test_promtool_parses_every_panel_query(tmp_path: Path) -> None:
    """Each panel query (Grafana's variables filled in) as a recording rule, which promtool parses."""
    fill = {"$__rate_interval": "5m", "$instance": ".*", "$model": ".*"}
    rules = []
    for i, (where, expr) in enumerate(sorted(dashboard_exprs(load_dashboard()).items())):
        if where.startswith("variable"):
            continue
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, where
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    promtool("check", "rules", "panels.yml", cwd=tmp_path)


# Synthetic series for each alert: one device that should fire and one close to it that should not.
PROMTOOL_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: 'up{job="edge-agent",instance="d1"}', values: '1 1 0x10'}
      - {series: 'up{job="edge-agent",instance="d2"}', values: '1x12'}
      - {series: 'edge_agent_mqtt_connected{job="edge-agent",instance="d1"}', values: '1 1 0x10'}
      - {series: 'edge_agent_mqtt_connected{job="edge-agent",instance="d2"}', values: '1 0 1 0 1 0 1 0'}
      - {series: 'process_resident_memory_bytes{job="edge-agent",instance="d1"}', values: '300e6 360e6x10'}
      - {series: 'process_resident_memory_bytes{job="edge-agent",instance="d2"}', values: '340e6x10'}
      # d1: open, one failing probe (half_open) at minute 3, open again; d2: closed
      - {series: 'edge_agent_cloud_breaker_state{job="edge-agent",instance="d1",state="closed"}', values: '1 0x8'}
      - {series: 'edge_agent_cloud_breaker_state{job="edge-agent",instance="d1",state="open"}', values: '0 1 1 0 1x5'}
      - {series: 'edge_agent_cloud_breaker_state{job="edge-agent",instance="d1",state="half_open"}',
         values: '0 0 0 1 0x5'}
      - {series: 'edge_agent_cloud_breaker_state{job="edge-agent",instance="d2",state="closed"}', values: '1x8'}
      - {series: 'edge_agent_cloud_breaker_state{job="edge-agent",instance="d2",state="open"}', values: '0x8'}
      - {series: 'edge_agent_cloud_budget_used_calls{job="edge-agent",instance="d1",scope="global",window="hour"}',
         values: '95x10'}
      - {series: 'edge_agent_cloud_budget_limit_calls{job="edge-agent",instance="d1",scope="global",window="hour"}',
         values: '100x10'}
      - {series: 'edge_agent_cloud_budget_used_calls{job="edge-agent",instance="d1",scope="m",window="day"}',
         values: '50x10'}
      - {series: 'edge_agent_cloud_budget_limit_calls{job="edge-agent",instance="d1",scope="m",window="day"}',
         values: '100x10'}
      - {series: 'edge_agent_cloud_budget_used_calls{job="edge-agent",instance="d2",scope="global",window="day"}',
         values: '999x10'}
    alert_rule_test:
      - {eval_time: 4m, alertname: AgentDown,
         exp_alerts: [{exp_labels: {severity: critical, job: edge-agent, instance: d1}}]}
      - {eval_time: 4m, alertname: BrokerDisconnected,
         exp_alerts: [{exp_labels: {severity: critical, job: edge-agent, instance: d1}}]}
      - {eval_time: 7m, alertname: MemoryHigh,
         exp_alerts: [{exp_labels: {severity: warning, job: edge-agent, instance: d1}}]}
      - {eval_time: 8m, alertname: CloudBreakerOpen,
         exp_alerts: [{exp_labels: {severity: warning, job: edge-agent, instance: d1}}]}
      - {eval_time: 6m, alertname: BudgetNearlySpent,
         exp_alerts: [{exp_labels: {severity: warning, job: edge-agent, instance: d1, scope: global, window: hour}}]}
  - interval: 1m
    input_series:
      # d1: replies pile up, a route=cloud request waits, old refused rows stay; d2: a blip of 5 replies
      - {series: 'edge_agent_spool_rows{job="edge-agent",instance="d1",queue="replies"}', values: '0 0+1x30'}
      - {series: 'edge_agent_spool_oldest_age_seconds{job="edge-agent",instance="d1",queue="replies"}',
         values: '0 0 60x30'}
      - {series: 'edge_agent_spool_rows{job="edge-agent",instance="d1",queue="waiting"}', values: '1x30'}
      - {series: 'edge_agent_spool_oldest_age_seconds{job="edge-agent",instance="d1",queue="waiting"}',
         values: '0+60x30'}
      - {series: 'edge_agent_spool_rows{job="edge-agent",instance="d1",queue="refused"}', values: '3x30'}
      - {series: 'edge_agent_spool_oldest_age_seconds{job="edge-agent",instance="d1",queue="refused"}',
         values: '7200+60x30'}
      - {series: 'edge_agent_spool_rows{job="edge-agent",instance="d2",queue="replies"}', values: '0 5 0x30'}
      - {series: 'edge_agent_spool_oldest_age_seconds{job="edge-agent",instance="d2",queue="replies"}',
         values: '0 1 0x30'}
      # d1: every request takes 5 to 10 s; d2: every one under 0.5 s
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d1",model="m",le="0.5"}',
         values: '0x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d1",model="m",le="5.0"}',
         values: '0x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d1",model="m",le="10.0"}',
         values: '0+10x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d1",model="m",le="+Inf"}',
         values: '0+10x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d2",model="m",le="0.5"}',
         values: '0+10x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d2",model="m",le="5.0"}',
         values: '0+10x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d2",model="m",le="10.0"}',
         values: '0+10x20'}
      - {series: 'edge_agent_request_duration_seconds_bucket{job="edge-agent",instance="d2",model="m",le="+Inf"}',
         values: '0+10x20'}
      # d1: 10 errors per 100 answers; d2: a third of its replies are errors, but 1.5 replies a minute
      - {series: 'edge_agent_requests_total{job="edge-agent",instance="d1",model="m",outcome="answered"}',
         values: '0+100x20'}
      - {series: 'edge_agent_requests_total{job="edge-agent",instance="d1",model="m",outcome="bad_request"}',
         values: '0+10x20'}
      - {series: 'edge_agent_requests_total{job="edge-agent",instance="d2",model="m",outcome="answered"}',
         values: '0+1x20'}
      - {series: 'edge_agent_requests_total{job="edge-agent",instance="d2",model="m",outcome="timeout"}',
         values: '0+0.5x20'}
    alert_rule_test:
      - eval_time: 20m
        alertname: SpoolGrowing
        exp_alerts:
          - {exp_labels: {severity: warning, job: edge-agent, instance: d1, queue: replies}}
          - {exp_labels: {severity: warning, job: edge-agent, instance: d1, queue: waiting}}
      - {eval_time: 15m, alertname: LatencyP99OverDeadline,
         exp_alerts: [{exp_labels: {severity: warning, instance: d1, model: m}}]}
      - {eval_time: 15m, alertname: ErrorReplies, exp_alerts: [{exp_labels: {severity: warning, instance: d1}}]}
  # model m: a day at 5% escalations, then 30%; model s: always 30% (high, but no jump)
  - interval: 1m
    input_series:
      - {series: 'edge_agent_requests_total{job="edge-agent",instance="d1",model="m",outcome="answered"}',
         values: '0+100x1500'}
      - {series: 'edge_agent_escalations_total{job="edge-agent",instance="d1",model="m",reason="low_confidence"}',
         values: '0+5x1439 7200+30x60'}
      - {series: 'edge_agent_requests_total{job="edge-agent",instance="d1",model="s",outcome="answered"}',
         values: '0+100x1500'}
      - {series: 'edge_agent_escalations_total{job="edge-agent",instance="d1",model="s",reason="low_confidence"}',
         values: '0+30x1500'}
    alert_rule_test:
      - {eval_time: 23h50m, alertname: EscalationShareJump, exp_alerts: []}
      - {eval_time: 24h30m, alertname: EscalationShareJump,
         exp_alerts: [{exp_labels: {severity: warning, instance: d1, model: m}}]}
"""


@needs_promtool
def test_promtool_alerts_fire_when_they_should(tmp_path: Path) -> None:
    rules = load_rules()
    for rule in alert_rules(rules):  # promtool compares annotations too: the labels are what is tested here
        rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = yaml.safe_load(PROMTOOL_TESTS)
    tested = {case["alertname"] for group in tests["tests"] for case in group["alert_rule_test"]}
    assert tested == EXPECTED_ALERTS
    (tmp_path / "tests.yml").write_text(PROMTOOL_TESTS)
    promtool("test", "rules", "tests.yml", cwd=tmp_path)
