"""Composition root: builds the pool, the handler and the transport, and runs them until a signal."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from edge_agent import __version__, systemd
from edge_agent.config import AgentSettings, ModelsFile
from edge_agent.handler import Handler
from edge_agent.runtimes.pool import ModelPool
from edge_agent.transport import Transport

log = structlog.get_logger("edge_agent.app")


def load_pool(settings: AgentSettings, models: ModelsFile) -> ModelPool:
    """Every model loaded and verified; raises ConfigError listing what cannot be served."""
    return ModelPool.load(models, settings.threads, settings.batch_max, settings.signing_key())


async def serve(settings: AgentSettings, models: ModelsFile, pool: ModelPool) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight work and publish `offline`."""
    handler = Handler(settings, models, pool)
    transport = Transport(settings, handler.subscriptions(), handler.handle, handler.overloaded)
    transport.status = lambda: status(settings, pool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool.start()
    side = [asyncio.create_task(_announce(transport)), asyncio.create_task(systemd.watchdog())]
    try:
        await transport.run(stop)
    finally:
        for task in side:
            task.cancel()
        await pool.stop()
        systemd.notify("STOPPING=1")
        log.info("stopped")


def status(settings: AgentSettings, pool: ModelPool) -> dict[str, Any]:
    return {"device_id": settings.device_id, "agent": __version__, "models": pool.versions()}


async def _announce(transport: Transport) -> None:
    await transport.ready.wait()
    systemd.notify("READY=1")
    log.info("ready", status_topic=transport.status_topic, subscriptions=transport.subscriptions)
