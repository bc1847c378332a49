"""Composition root: builds the pool, the handler and the transport, and runs them until a signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import structlog

from edge_agent import __version__, systemd
from edge_agent.cloud import CloudClient
from edge_agent.config import AgentSettings, CloudSettings
from edge_agent.delivery import Delivery
from edge_agent.errors import ArtifactError, ConfigError
from edge_agent.escalation import Escalator
from edge_agent.handler import Handler
from edge_agent.manifest import Manifest, cloud_only
from edge_agent.manifest import read as read_manifest
from edge_agent.messages import Outbound
from edge_agent.metrics import Budget, Metrics, ModelState, Prices, State, TrialState
from edge_agent.models_file import ModelEntry, ModelsFile
from edge_agent.mqtt_client import MqttClient
from edge_agent.rollout import PIDFILE, Rollout
from edge_agent.runtimes.pool import ModelPool
from edge_agent.scrape import Endpoint
from edge_agent.spool import Spool
from edge_agent.store import Store
from edge_agent.supervisor import Supervisor
from edge_agent.waitlist import Waitlist

log = structlog.get_logger("edge_agent.app")


def load_pool(settings: AgentSettings, models: ModelsFile) -> ModelPool:
    """Every model loaded and verified; raises ConfigError listing what cannot be served."""
    return ModelPool.load(models, settings.threads, settings.batch_max, settings.trusted())


Missing = dict[str, tuple[ModelEntry, Manifest]]


def load_served(settings: AgentSettings, models: ModelsFile) -> tuple[ModelPool, Missing]:
    """The pool, plus models only the cloud can answer here.

    With a cloud configured, an artifact that cannot load (corrupted, runtime not installed) does
    not stop the agent when its manifest still reads and its route allows the cloud: its requests
    escalate as `model_missing`. Anything else is a ConfigError listing every problem.
    """
    if settings.cloud is None:
        return load_pool(settings, models), {}
    served, missing, problems = {}, {}, []
    for entry in models.models:
        try:
            served.update(load_pool(settings, ModelsFile(models=[entry])).served)
        except ConfigError as exc:
            manifest = _manifest_only(entry)
            if manifest is None or entry.route == "local":
                problems.extend(exc.problems)
                continue
            log.error("model_missing_locally", model=entry.name, problems=exc.problems)
            missing[entry.name] = (entry, manifest)
    if problems:
        for model in served.values():
            model.runtime.close()
        raise ConfigError(problems)
    return ModelPool(served), missing


def _manifest_only(entry: ModelEntry) -> Manifest | None:
    """What the cloud needs to answer for a model that cannot run here: its manifest, or for a model
    with no artifact yet (a cold start), the labels models.yaml lets the cloud answer with."""
    if entry.path is None and entry.cloud_labels:
        return cloud_only(entry.name, entry.cloud_labels)
    try:
        return read_manifest(entry.artifact)
    except ArtifactError:
        return None


async def serve(settings: AgentSettings, models: ModelsFile, pool: ModelPool, missing: Missing | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight work and publish `offline`."""
    changed = asyncio.Event()  # breaker or budget moved: the retained status says so
    parts: dict[str, Any] = {}  # what the metrics read at scrape time, filled in as it is built
    metrics = Metrics(prices(settings.cloud), lambda: state(pool, **parts))
    cloud = CloudClient(settings.cloud) if settings.cloud else None
    escalator = Escalator(settings, models, cloud, on_change=changed.set, metrics=metrics)
    spool = Spool(settings.state_dir / "spool.sqlite")
    waitlist = Waitlist(spool, settings.cloud)
    rollout = Rollout(settings, pool, Store(settings.state_dir), on_change=changed.set, contenders=escalator.contenders)
    escalator.on_trial = rollout.wake.set
    handler = Handler(settings, models, pool, escalator, waitlist, missing, rollout, metrics)
    client = MqttClient(settings, handler.subscriptions(), f"{settings.agent_prefix}/status")
    delivery = Delivery(
        settings, client, handler, spool, lambda: status(settings, pool, escalator, spool, missing, rollout), changed
    )
    parts.update(delivery=delivery, spool=spool, escalator=escalator, rollout=rollout)
    endpoint = Endpoint(metrics, lambda: summary(settings, metrics))
    if settings.metrics.enabled:
        await endpoint.start(settings.metrics.address, settings.metrics.port)
    supervisor = Supervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, rollout.reload)
    pool.start(supervisor.start, metrics, settings.batch_wait_ms / 1000)
    supervisor.start("waitlist", lambda: waitlist.run(handler, delivery.deliver, escalator.breaker.retry_in))
    supervisor.start("watchdog", lambda: systemd.watchdog(supervisor.alive))
    supervisor.start("rollout", rollout.run)
    supervisor.start("announce", lambda: _announce(delivery, handler.subscriptions()))
    if settings.metrics.publish_s > 0:
        supervisor.start("metrics", lambda: _publish_metrics(settings, metrics, delivery))
    pidfile = _write_pid(settings.state_dir / PIDFILE)
    systemd.notify("READY=1")  # serving: requests spooled by the broker come once it is reachable
    try:
        await delivery.run(stop)
    finally:
        pidfile.unlink(missing_ok=True)
        await endpoint.close()
        await supervisor.stop()
        await rollout.trials.stop()
        await pool.stop()
        await escalator.drain()
        if cloud is not None:
            await cloud.aclose()
        spool.close()
        systemd.notify("STOPPING=1")
        log.info("stopped")


def status(
    settings: AgentSettings,
    pool: ModelPool,
    escalator: Escalator | None = None,
    spool: Spool | None = None,
    missing: Missing | None = None,
    rollout: Rollout | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"device_id": settings.device_id, "agent": __version__, "models": pool.versions()}
    if rollout is not None:
        body["rollout"] = rollout.snapshot()
    if missing:
        body["cloud_only"] = {name: manifest.version for name, (_, manifest) in missing.items()}
    if escalator is not None:
        body["router"] = escalator.snapshot()
    if spool is not None:
        body["spool"] = spool.counts()
    return body


def prices(cloud: CloudSettings | None) -> Prices:
    if cloud is None:
        return Prices()
    return Prices(
        cloud.price_per_call_usd, cloud.price_per_1k_prompt_tokens_usd, cloud.price_per_1k_completion_tokens_usd
    )


def state(
    pool: ModelPool,
    delivery: Delivery | None = None,
    spool: Spool | None = None,
    escalator: Escalator | None = None,
    rollout: Rollout | None = None,
) -> State:
    """What the metrics' gauges read, from the parts that hold it (on the loop)."""
    watching = rollout.watching if rollout is not None else {}
    models = [
        ModelState(name, m.manifest.version, m.manifest.runtime, _quantization(m.manifest), name in watching)
        for name, m in pool.served.items()
    ]
    budgets = []
    if escalator is not None and escalator.cloud is not None:
        for scope, windows in escalator.budgets.snapshot().items():
            budgets += [Budget(scope, window, w["used"], w["limit"]) for window, w in windows.items()]
    return State(
        inflight=delivery.inflight if delivery else 0,
        backlog=delivery.backlog if delivery else 0,
        spool=spool.depths() if spool else {},
        breaker=escalator.breaker.state if escalator is not None and escalator.cloud is not None else None,
        budgets=budgets,
        models=models,
        connected=delivery.client.connected() if delivery else False,
        trials=_trials(rollout) if rollout is not None else [],
    )


def _trials(rollout: Rollout) -> list[TrialState]:
    """Every model's trial on this device, running or decided, as the metrics show it."""
    out = []
    for name, t in rollout.trials.snapshots().items():
        f = t["figures"]
        p99 = (f.get("serving_p99_ms"), f.get("candidate_p99_ms"))
        out.append(
            TrialState(
                name, t["version"], t["counts"]["shadowed"], t["counts"]["escalated"],
                f["serving_cloud_agreement"], f["candidate_cloud_agreement"], p99, t["decision"],
            )
        )  # fmt: skip
    return out


def _quantization(manifest: Manifest) -> str:
    return manifest.onnx.kind if manifest.onnx is not None else "unknown"


def summary(settings: AgentSettings, metrics: Metrics) -> dict[str, Any]:
    """The metrics summary published on `{prefix}/metrics` and served at /summary."""
    return {
        "device_id": settings.device_id,
        "agent": __version__,
        "time": round(time.time(), 3),
        "interval_s": settings.metrics.publish_s,
        "metrics": metrics.summary(),
    }


async def _publish_metrics(settings: AgentSettings, metrics: Metrics, delivery: Delivery) -> None:
    """Every `publish_s`, while connected: the summary, retained, so a late subscriber sees the last one."""
    topic = f"{settings.agent_prefix}/metrics"
    while True:
        await asyncio.sleep(settings.metrics.publish_s)
        if not delivery.ready.is_set():
            continue
        try:
            payload = json.dumps(summary(settings, metrics)).encode()
        except sqlite3.Error as exc:  # the spool's disk failing must not end the summaries (nor restart the agent)
            log.error("metrics_summary_failed", error=str(exc))
            continue
        delivery.announce(Outbound(topic, payload))


def _write_pid(path: Path) -> Path:
    """The pid `edge-agent models pull` signals (SIGHUP) after changing the store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    return path


async def _announce(delivery: Delivery, subscriptions: list[str]) -> None:
    await delivery.ready.wait()
    log.info("ready", status_topic=delivery.client.status_topic, subscriptions=subscriptions)
