"""PromQL as the ops/ tests read it: the metric names an expression uses, and the expressions of the
dashboard's panels and of the alert rules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
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
