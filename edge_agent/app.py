"""Composition root: builds every part through its constructor, supervises the tasks, and runs until a signal."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import structlog

from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest, cloud_only
from edge_agent.contract.manifest import read as read_manifest
from edge_agent.contract.messages import Outbound
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.rollout import Rollout
from edge_agent.lifecycle.store import Store
from edge_agent.ops import stalls, systemd
from edge_agent.ops.endpoint import Endpoint
from edge_agent.ops.metrics import GaugeReader, Metrics
from edge_agent.ops.supervisor import Supervisor
from edge_agent.routing.cloud import CloudClient
from edge_agent.routing.router import Router
from edge_agent.runtimes.pool import ModelPool
from edge_agent.serving.handler import Handler
from edge_agent.serving.homeassistant import HomeAssistant
from edge_agent.serving.replies import Missing
from edge_agent.serving.waitlist import Waitlist
from edge_agent.status import Status, prices, summary
from edge_agent.transport.delivery import Delivery
from edge_agent.transport.mqtt import MqttClient
from edge_agent.transport.spool import Spool

log = structlog.get_logger("edge_agent.app")


def load_served(
    settings: AgentSettings, models: ModelsFile, verified: Mapping[Path, Manifest] | None = None
) -> tuple[ModelPool, Missing]:
    """The pool, plus models only the cloud can answer here.

    A model none of whose versions loads does not stop the agent (a device that stays up can be mended by a
    pull): with a cloud its route allows, its requests escalate as `model_missing` when its manifest still
    reads; otherwise it is `down` and answers `unavailable`, saying why. The other models serve.
    """
    trusted = settings.trusted()
    pool = ModelPool.load_what_verifies(models, settings.threads, settings.batch_max, trusted, verified=verified)
    missing: Missing = {}
    for name, down in pool.down.items():
        manifest = _manifest_only(down.entry) if settings.cloud is not None else None
        if manifest is not None and down.entry.route != "local":
            log.error("model_missing_locally", model=name, why=down.why)
            missing[name] = (down.entry, manifest)
        else:
            log.error("model_unavailable", model=name, why=down.why)
    return pool, missing


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
    metrics = Metrics(prices(settings.cloud))
    cloud = CloudClient(settings.cloud) if settings.cloud else None
    spool = Spool(settings.state_dir / "spool.sqlite")
    waitlist = Waitlist(spool, settings.cloud)
    ha = HomeAssistant(settings, pool, models.bindings, metrics) if settings.homeassistant.discovery else None
    rollout = Rollout(settings, pool, Store(settings.state_dir), on_change=functools.partial(_changed, changed, ha))
    router = Router(settings, models, cloud, rollout.candidates, on_change=changed.set, metrics=metrics)
    handler = Handler(settings, models, pool, router, waitlist, missing, rollout, metrics, ha)
    client = MqttClient(settings, handler.subscriptions(), f"{settings.agent_prefix}/status")
    status = Status(settings, pool, router, spool, missing, rollout)
    delivery = Delivery(settings, client, handler, spool, status.retained, changed)
    GaugeReader(metrics, functools.partial(status.gauges, delivery))
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
    supervisor.start("waitlist", lambda: waitlist.run(handler, delivery.deliver, router.breaker.retry_in))
    supervisor.start("watchdog", lambda: systemd.watchdog(supervisor.alive))
    supervisor.start("rollout", rollout.run)
    supervisor.start("announce", lambda: _announce(delivery, handler.subscriptions()))
    if settings.metrics.publish_s > 0:
        supervisor.start("metrics", lambda: _publish_metrics(settings, metrics, delivery))
    if ha is not None:
        supervisor.start("homeassistant", functools.partial(ha.run, delivery))
    systemd.notify("READY=1")  # serving: requests spooled by the broker come once it is reachable
    if settings.loop_stall_ms:  # from here on the loop serves: building the parts above is start-up
        supervisor.start("stalls", stalls.watch(loop, settings.loop_stall_ms).sample)
    try:
        await delivery.run(stop)
    finally:
        await endpoint.close()
        await supervisor.stop()
        await rollout.candidates.stop()
        await pool.stop()
        await router.drain()
        if cloud is not None:
            await cloud.aclose()
        spool.close()
        systemd.notify("STOPPING=1")
        log.info("stopped")


def _changed(status: asyncio.Event, ha: HomeAssistant | None) -> None:
    """The versions served (or a trial) moved: the retained status says so, and Home Assistant's entities."""
    status.set()
    if ha is not None:
        ha.wake()


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


async def _announce(delivery: Delivery, subscriptions: list[str]) -> None:
    await delivery.ready.wait()
    log.info("ready", status_topic=delivery.client.status_topic, subscriptions=subscriptions)
