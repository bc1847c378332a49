"""The metrics summary as `edge-agent status` prints it: fetched from the running agent's endpoint, in lines.

The numbers are the agent's own (GET /summary, the same JSON as `{prefix}/metrics`); this module only
adds them up per model and says them in words.
"""

from __future__ import annotations

from typing import Any

import httpx

from edge_agent.config.settings import AgentSettings
from edge_agent.ops.metrics import labels_of


def url(settings: AgentSettings) -> str:
    host = settings.metrics.address
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.metrics.port}"


def fetch(settings: AgentSettings, timeout_s: float = 3.0) -> dict[str, Any]:
    """The running agent's summary; httpx errors (and InvalidURL) are the caller's to word."""
    response = httpx.get(f"{url(settings)}/summary", timeout=timeout_s, trust_env=False)  # never via a proxy
    response.raise_for_status()
    data = response.json()
    return data if isinstance(data, dict) else {}


def lines(summary: dict[str, Any]) -> list[str]:
    """A few lines an operator reads at a glance: volume, escalation, latency, cloud, spool, health."""
    m = summary.get("metrics", {})
    requests = _by(m.get("edge_agent_requests_total", {}), "source")
    errors = sum(v for k, v in m.get("edge_agent_requests_total", {}).items() if "outcome=answered" not in k)
    total = sum(requests.values())
    escalated = _by(m.get("edge_agent_escalations_total", {}), "reason")
    answered = total - errors
    share = sum(escalated.values()) / answered if answered else 0.0  # of answered requests, as the dashboard
    latency = _merged(m.get("edge_agent_request_duration_seconds", {}))
    inference = _merged(m.get("edge_agent_inference_duration_seconds", {}))
    spool = ", ".join(f"{key.split('=', 1)[1]} {rows:.0f}" for key, rows in m.get("edge_agent_spool_rows", {}).items())
    oldest = max(m.get("edge_agent_spool_oldest_age_seconds", {}).values(), default=0.0)
    breaker = [k.split("=", 1)[1] for k, v in m.get("edge_agent_cloud_breaker_state", {}).items() if v == 1]
    rss = m.get("process_resident_memory_bytes", {}).get("", 0.0)
    return [
        f"requests: {total:.0f} ({_listed(requests)}; {errors:.0f} error replies)",
        f"escalation share: {share:.1%} ({_listed(escalated) or 'none'})",
        f"latency p50 / p99: {_ms(latency.get('p50'))} / {_ms(latency.get('p99'))} ms "
        f"(model pass p50 {_ms(inference.get('p50'))} ms)",
        f"cloud: {_total(m, 'edge_agent_cloud_calls_total'):.0f} calls, "
        f"{_total(m, 'edge_agent_cloud_failures_total'):.0f} failed, "
        f"{_total(m, 'edge_agent_cloud_retries_total'):.0f} retries, "
        f"est. spend ${_total(m, 'edge_agent_cloud_spend_usd_total'):.4f}; breaker {breaker[0] if breaker else 'n/a'}",
        f"spool: {spool or 'n/a'} "
        f"(oldest {oldest:.0f} s); in flight {_total(m, 'edge_agent_inflight_requests'):.0f}; "
        f"RSS {rss / 2**20:.0f} MB",
    ]


def _by(samples: dict[str, float], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in samples.items():
        name = labels_of(key).get(label, "")
        out[name] = out.get(name, 0.0) + value
    return {k: v for k, v in out.items() if v}


def _merged(histograms: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """One model's quantiles as they are; several models': the busiest one's (quantiles do not add up)."""
    if not histograms:
        return {}
    return max(histograms.values(), key=lambda h: h.get("count") or 0.0)


def _total(m: dict[str, Any], name: str) -> float:
    return float(sum(m.get(name, {}).values()))


def _listed(counts: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in sorted(counts.items(), key=lambda kv: -kv[1]))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
