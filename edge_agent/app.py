"""Composition root: builds every part through its constructor, supervises the tasks, and runs until a signal."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sqlite3

import structlog

from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import Manifest, cloud_only
from edge_agent.contract.manifest import read as read_manifest
from edge_agent.contract.messages import Outbound
from edge_agent.errors import ArtifactError, ConfigError
from edge_agent.lifecycle.rollout import PIDFILE, Rollout
from edge_agent.lifecycle.store import Store
from edge_agent.ops import systemd
from edge_agent.ops.endpoint import Endpoint
from edge_agent.ops.metrics import GaugeReader, Metrics
from edge_agent.ops.pidfile import PidFile
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


def load_pool(settings: AgentSettings, models: ModelsFile) -> ModelPool:
    """Every model loaded and verified; raises ConfigError listing what cannot be served."""
    return ModelPool.load(models, settings.threads, settings.batch_max, settings.trusted())


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
    pidfile = PidFile(settings.state_dir / PIDFILE)
    pidfile.hold()
    systemd.notify("READY=1")  # serving: requests spooled by the broker come once it is reachable
    try:
        await delivery.run(stop)
    finally:
        pidfile.release()
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
