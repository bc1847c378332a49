"""promtool on ops/: the rules and every panel query parse, and the alerts fire (and stay quiet) on synthetic
series as they should."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.ops.promql import ALERTS, EXPECTED_ALERTS, alert_rules, dashboard_exprs, load_dashboard, load_rules

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
