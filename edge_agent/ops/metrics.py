"""Prometheus metrics, and the same numbers as one JSON summary for fleets that only have MQTT.

Counters and histograms are updated where things happen (handler, pool, router, cloud client);
state (in flight, spool, breaker, budgets, models) is read when a scrape or a summary asks, through
one `Gauges` callable, so a gauge is never stale and never kept up to date on the hot path. Every
read happens on the event loop (the endpoint serves from it), where that state lives.

Names follow Prometheus conventions: `edge_agent_` prefix, base units in the name (seconds, bytes,
usd), `_total` for counters. Process RSS comes from the standard `process_resident_memory_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128)
BREAKER_STATES = ("closed", "half_open", "open")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double every counter for nothing we graph


@dataclass(frozen=True)
class Prices:
    """What a cloud call is estimated to cost (USD): per call, and per 1,000 prompt / completion tokens."""

    per_call: float = 0.0
    per_1k_prompt_tokens: float = 0.0
    per_1k_completion_tokens: float = 0.0


@dataclass(frozen=True)
class ModelGauge:
    name: str
    version: str
    runtime: str
    quantization: str
    on_probation: bool


@dataclass(frozen=True)
class BudgetGauge:
    scope: str  # "global" or a model's name
    window: str  # "hour" or "day"
    used: int
    limit: int | None


@dataclass(frozen=True)
class TrialGauge:
    """A candidate's trial (edge_agent/lifecycle/trial.py): its counts, figures and decision (None while it runs)."""

    model: str
    version: str
    shadowed: int
    escalated: int
    serving_agreement: float
    candidate_agreement: float
    p99_ms: tuple[float | None, float | None]  # serving, candidate
    decision: str | None


@dataclass(frozen=True)
class Gauges:
    """What the agent holds right now; read at scrape time."""

    inflight: int = 0
    backlog: int = 0
    spool: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # queue -> (rows, oldest age s)
    breaker: str | None = None  # None: no cloud configured
    budgets: list[BudgetGauge] = field(default_factory=list)
    models: list[ModelGauge] = field(default_factory=list)
    connected: bool = False
    trials: list[TrialGauge] = field(default_factory=list)


class Metrics:
    """One registry per agent (tests run several in one process)."""

    def __init__(self, prices: Prices | None = None) -> None:
        self.prices = prices or Prices()
        self.registry = CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "edge_agent_requests",
            "Requests and sensor messages answered, by model, who answered (local, cloud, local-fallback; "
            "none for an error) and outcome (answered, or the error code of the reply)",
            ["model", "source", "outcome"],
            registry=r,
        )
        self.latency = _histogram(
            "edge_agent_request_duration_seconds", "Message received to reply built, per model", r
        )
        self.queue_wait = _histogram(
            "edge_agent_queue_wait_seconds", "Time a text waited for its model's worker, per model", r
        )
        self.inference = _histogram(
            "edge_agent_inference_duration_seconds", "One model pass (a whole batch), per model", r
        )
        self.batch = Histogram(
            "edge_agent_batch_size", "Texts per model pass, per model", ["model"], buckets=BATCH, registry=r
        )
        self.escalations = Counter(
            "edge_agent_escalations",
            "Requests the router sent (or tried to send) to the cloud, by model and reason",
            ["model", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "edge_agent_fallbacks",
            "Escalated requests answered locally after all, by model and why the cloud did not answer",
            ["model", "reason"],
            registry=r,
        )
        self.cloud_latency = _histogram(
            "edge_agent_cloud_request_duration_seconds", "One cloud call (with its retries), per model", r
        )
        self.cloud_calls = Counter(
            "edge_agent_cloud_calls", "Cloud calls started (each spends budget), per model", ["model"], registry=r
        )
        self.cloud_failures = Counter(
            "edge_agent_cloud_failures",
            "Cloud calls that failed, by model and reason (cloud_error, cloud_timeout, cloud_invalid)",
            ["model", "reason"],
            registry=r,
        )
        self.cloud_retries = Counter(
            "edge_agent_cloud_retries",
            "HTTP retries inside cloud calls (429 and 5xx), per model",
            ["model"],
            registry=r,
        )
        self.cloud_tokens = Counter(
            "edge_agent_cloud_tokens",
            "Tokens the cloud reported using, by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=r,
        )
        self.cloud_spend = Counter(
            "edge_agent_cloud_spend_usd",
            "Estimated cloud spend in USD from the configured prices (per call and per token), per model",
            ["model"],
            registry=r,
        )

    # -- what the hot path calls ---------------------------------------------------------
    def replied(
        self, model: str, source: str, outcome: str, seconds: float, escalation: str | None, fallback: str | None
    ) -> None:
        self.requests.labels(model, source, outcome).inc()
        self.latency.labels(model).observe(seconds)
        if escalation is not None:
            self.escalations.labels(model, escalation).inc()
        if fallback is not None:
            self.fallbacks.labels(model, fallback).inc()

    def pass_done(self, model: str, waits: Iterable[float], seconds: float) -> None:
        """One model pass over a batch; `waits` are its texts' queue times."""
        wait = self.queue_wait.labels(model)
        size = 0
        for value in waits:
            wait.observe(value)
            size += 1
        self.batch.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)

    def cloud_call(self, model: str) -> CloudMeter:
        self.cloud_calls.labels(model).inc()
        return CloudMeter(self, model)

    # -- what readers call ---------------------------------------------------------------
    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (for the scrape endpoint)."""
        return bytes(prometheus_client.generate_latest(self.registry))

    def summary(self) -> dict[str, Any]:
        """Every sample as JSON: counters and gauges by label set, histograms as count, sum, p50, p99."""
        return summarize(self.registry.collect())


@dataclass
class CloudMeter:
    """One cloud call's meter, bound to its model: what the cloud client reports as it goes."""

    metrics: Metrics
    model: str

    def retried(self) -> None:
        self.metrics.cloud_retries.labels(self.model).inc()

    def used(self, prompt_tokens: int, completion_tokens: int) -> None:
        """One answered HTTP call: its tokens, and the spend they are estimated at."""
        m, prices = self.metrics, self.metrics.prices
        m.cloud_tokens.labels(self.model, "prompt").inc(prompt_tokens)
        m.cloud_tokens.labels(self.model, "completion").inc(completion_tokens)
        spend = (
            prices.per_call
            + (prompt_tokens * prices.per_1k_prompt_tokens + completion_tokens * prices.per_1k_completion_tokens) / 1000
        )
        m.cloud_spend.labels(self.model).inc(spend)

    def ended(self, seconds: float, failure: str | None) -> None:
        self.metrics.cloud_latency.labels(self.model).observe(seconds)
        if failure is not None:
            self.metrics.cloud_failures.labels(self.model, failure).inc()


def _histogram(name: str, doc: str, registry: CollectorRegistry) -> Histogram:
    return Histogram(name, doc, ["model"], buckets=SECONDS, registry=registry)


class GaugeReader(Collector):
    """Gauges read from the agent's parts at each collection (never stale, nothing kept up to date on the hot
    path); built once those parts are, it registers itself with the metrics' registry."""

    def __init__(self, metrics: Metrics, read: Callable[[], Gauges]) -> None:
        self.read = read
        metrics.registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # registering must not read anything yet

    def collect(self) -> Iterator[Metric]:
        s = self.read()
        yield _gauge("edge_agent_inflight_requests", "Messages being answered now", [], [((), s.inflight)])
        yield _gauge("edge_agent_backlog_requests", "Messages admitted, waiting for a free slot", [], [((), s.backlog)])
        yield _gauge("edge_agent_mqtt_connected", "1 while connected to the broker", [], [((), int(s.connected))])
        yield _gauge(
            "edge_agent_spool_rows",
            "Rows in the spool: replies waiting for the broker, requests waiting for the cloud, refused replies",
            ["queue"],
            [((queue,), rows) for queue, (rows, _) in s.spool.items()],
        )
        yield _gauge(
            "edge_agent_spool_oldest_age_seconds",
            "Age of the oldest row of each spool queue (0 when empty)",
            ["queue"],
            [((queue,), age or 0.0) for queue, (_, age) in s.spool.items()],
        )
        if s.breaker is not None:
            yield _gauge(
                "edge_agent_cloud_breaker_state",
                "The cloud circuit breaker: 1 for its current state (closed, half_open, open)",
                ["state"],
                [((state,), int(state == s.breaker)) for state in BREAKER_STATES],
            )
        yield from _budgets(s.budgets)
        yield _gauge(
            "edge_agent_model_info",
            "The model version serving, with its runtime and quantization (always 1)",
            ["model", "version", "runtime", "quantization"],
            [((m.name, m.version, m.runtime, m.quantization), 1) for m in s.models],
        )
        yield _gauge(
            "edge_agent_model_on_probation",
            "1 while a newly swapped-in version is on probation (a failure rolls it back)",
            ["model"],
            [((m.name,), int(m.on_probation)) for m in s.models],
        )
        yield from _trials(s.trials)


def _trials(trials: list[TrialGauge]) -> Iterator[Metric]:
    yield _gauge(
        "edge_agent_candidate_requests",
        "A candidate's trial: requests shadowed, and escalated ones compared with the cloud (kind)",
        ["model", "version", "kind"],
        [
            ((t.model, t.version, k), v)
            for t in trials
            for k, v in (("shadowed", t.shadowed), ("escalated", t.escalated))
        ],
    )
    yield _gauge(
        "edge_agent_candidate_cloud_agreement",
        "Share of the trial's escalated requests where each side (serving, candidate) agreed with the cloud",
        ["model", "version", "side"],
        [
            ((t.model, t.version, side), v)
            for t in trials
            for side, v in zip(SIDES, (t.serving_agreement, t.candidate_agreement), strict=True)
        ],
    )
    yield _gauge(
        "edge_agent_candidate_p99_seconds",
        "p99 latency of each side (serving, candidate) on the shadowed requests",
        ["model", "version", "side"],
        [
            ((t.model, t.version, side), v / 1000)
            for t in trials
            for side, v in zip(SIDES, t.p99_ms, strict=True)
            if v is not None
        ],
    )
    yield _gauge(
        "edge_agent_candidate_decision",
        "1 for the trial's decision once made (promote, reject); pending while it runs",
        ["model", "version", "decision"],
        [((t.model, t.version, t.decision or "pending"), 1) for t in trials],
    )


SIDES = ("serving", "candidate")


def _budgets(budgets: list[BudgetGauge]) -> Iterator[Metric]:
    yield _gauge(
        "edge_agent_cloud_budget_used_calls",
        "Cloud calls spent in the budget's sliding window, by scope (global or model) and window (hour, day)",
        ["scope", "window"],
        [((b.scope, b.window), b.used) for b in budgets],
    )
    yield _gauge(
        "edge_agent_cloud_budget_limit_calls",
        "The budget's limit for that window (absent: no limit)",
        ["scope", "window"],
        [((b.scope, b.window), b.limit) for b in budgets if b.limit is not None],
    )


def _gauge(name: str, doc: str, labels: list[str], values: list[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def summarize(families: Iterable[Metric]) -> dict[str, Any]:
    """`{sample name: {"k=v,...": value}}`; a histogram as `{"k=v,...": {count, sum, p50, p99}}`."""
    out: dict[str, Any] = {}
    for family in families:
        if family.type == "histogram":
            out[family.name] = _histograms(family)
            continue
        for sample in family.samples:
            out.setdefault(sample.name, {})[label_key(sample.labels)] = sample.value
    return out


def _histograms(family: Metric) -> dict[str, dict[str, float | None]]:
    buckets: dict[str, list[tuple[float, float]]] = {}
    totals: dict[str, dict[str, float | None]] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = label_key(labels)
        entry = totals.setdefault(key, {})
        if sample.name.endswith("_bucket"):
            buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
    for key, entry in totals.items():
        ordered = sorted(buckets.get(key, []))
        entry["p50"] = quantile(0.5, ordered)
        entry["p99"] = quantile(0.99, ordered)
    return totals


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative (upper bound, count) buckets: linear within a bucket."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: its lower edge is all that is known
            within = (rank - below) / (count - below) if count > below else 0.0
            return lower + (upper - lower) * within
        lower, below = upper, count
    return lower


def label_key(labels: dict[str, str]) -> str:
    """A label set as the summary keys it: `k=v,...`, sorted by name ("" for none)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def labels_of(key: str) -> dict[str, str]:
    """The label set of a summary key (label_key's inverse)."""
    return dict(part.split("=", 1) for part in key.split(",") if "=" in part)
