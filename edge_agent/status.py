"""What the running agent says about itself: the retained status, the metrics' gauges, the summary.

A projection of the parts the composition root built, read on the event loop whenever a status is
published, a scrape arrives or a summary is due; it changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent import __version__
from edge_agent.config.sections import CloudSettings
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest
from edge_agent.lifecycle.rollout import Rollout
from edge_agent.ops.metrics import BudgetGauge, Gauges, Metrics, ModelGauge, Prices, TrialGauge
from edge_agent.routing.router import Router
from edge_agent.runtimes.pool import ModelPool
from edge_agent.serving.replies import Missing
from edge_agent.transport.delivery import Delivery
from edge_agent.transport.spool import Spool


class Status:
    """The agent's parts, as the status topic, the gauges and the summary show them."""

    def __init__(
        self,
        settings: AgentSettings,
        pool: ModelPool,
        router: Router | None = None,
        spool: Spool | None = None,
        missing: Missing | None = None,
        rollout: Rollout | None = None,
    ) -> None:
        self.settings, self.pool, self.router, self.spool = settings, pool, router, spool
        self.missing, self.rollout = missing or {}, rollout

    def retained(self) -> dict[str, Any]:
        """The body of the retained `{agent}/status` message."""
        body: dict[str, Any] = {"device_id": self.settings.device_id, "agent": __version__}
        body["models"] = self.pool.versions()
        if self.pool.down:
            body["unavailable"] = {name: down.why for name, down in self.pool.down.items()}
        if self.rollout is not None:
            body["rollout"] = self.rollout.snapshot()
        if self.missing:
            body["cloud_only"] = {
                name: manifest.version for name, (_, manifest) in self.missing.items() if name not in self.pool.served
            }
        if self.router is not None:
            body["router"] = self.router.snapshot()
        if self.spool is not None:
            body["spool"] = self.spool.counts()
        return body

    def gauges(self, delivery: Delivery | None = None) -> Gauges:
        """What the metrics' gauges read, from the parts that hold it."""
        watching = self.rollout.watching if self.rollout is not None else {}
        models = [
            ModelGauge(name, m.manifest.version, m.manifest.runtime, _quantization(m.manifest), name in watching)
            for name, m in self.pool.served.items()
        ]
        cloud = self.router is not None and self.router.cloud is not None
        return Gauges(
            inflight=delivery.inflight if delivery else 0,
            backlog=delivery.backlog if delivery else 0,
            spool=self.spool.depths() if self.spool else {},
            breaker=self.router.breaker.state if self.router is not None and cloud else None,
            budgets=self._budgets() if cloud else [],
            models=models,
            connected=delivery.client.connected() if delivery else False,
            trials=self._trials(),
        )

    def _budgets(self) -> list[BudgetGauge]:
        assert self.router is not None
        return [
            BudgetGauge(scope, window, w["used"], w["limit"])
            for scope, windows in self.router.budgets.snapshot().items()
            for window, w in windows.items()
        ]

    def _trials(self) -> list[TrialGauge]:
        """Every model's trial on this device, running or decided, as the metrics show it."""
        if self.rollout is None:
            return []
        out = []
        for name, t in self.rollout.candidates.snapshots().items():
            f = t["figures"]
            p99 = (f.get("serving_p99_ms"), f.get("candidate_p99_ms"))
            out.append(
                TrialGauge(
                    name, t["version"], t["counts"]["shadowed"], t["counts"]["escalated"],
                    f["serving_cloud_agreement"], f["candidate_cloud_agreement"], p99, t["decision"],
                )
            )  # fmt: skip
        return out


def prices(cloud: CloudSettings | None) -> Prices:
    """What the metrics count a cloud call as costing."""
    if cloud is None:
        return Prices()
    return Prices(
        cloud.price_per_call_usd, cloud.price_per_1k_prompt_tokens_usd, cloud.price_per_1k_completion_tokens_usd
    )


def summary(settings: AgentSettings, metrics: Metrics) -> dict[str, Any]:
    """The metrics summary published on `{agent}/metrics` and served at /summary."""
    return {
        "device_id": settings.device_id,
        "agent": __version__,
        "time": round(time.time(), 3),
        "interval_s": settings.metrics.publish_s,
        "metrics": metrics.summary(),
    }


def _quantization(manifest: Manifest) -> str:
    return manifest.onnx.kind if manifest.onnx is not None else "unknown"
