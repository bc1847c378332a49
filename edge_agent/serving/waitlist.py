"""Requests that must reach the cloud, kept in the spool while it is down and retried in order.

Each ends in exactly one reply: the cloud's answer once it is back, or an expiry error when its
time to live runs out. The breaker paces the retries: while it is open, nothing is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import structlog

from edge_agent.config.sections import CloudSettings
from edge_agent.contract.messages import Inbound, Outbound
from edge_agent.routing.router import CloudWait
from edge_agent.serving.requests import Attempt
from edge_agent.transport.outcome import Outcome, Reply
from edge_agent.transport.spool import Spool, Spooled

log = structlog.get_logger("edge_agent.serving.waitlist")


class Retries(Protocol):
    async def attempt(self, msg: Inbound) -> Attempt: ...

    def expired(self, msg: Inbound) -> Outcome: ...


class Waitlist:
    """Parks route=cloud requests while the cloud is away and works through them when it may be tried."""

    def __init__(self, spool: Spool | None, cloud: CloudSettings | None) -> None:
        self.spool = spool
        self.cloud = cloud
        self.wake = asyncio.Event()

    def park(self, model: str, msg: Inbound) -> bool:
        """Keep the request until the cloud is back; False when there is no room, no cloud or no disk."""
        if self.spool is None or self.cloud is None:
            return False
        try:
            if self.spool.counts()["waiting"] >= self.cloud.wait_max:
                return False
            self.spool.wait(model, msg, self.cloud.wait_ttl_s)
        except sqlite3.Error as exc:
            log.error("spool_write_failed", model=model, error=str(exc))
            return False
        self.wake.set()
        return True

    async def run(
        self, retries: Retries, deliver: Callable[[Outbound], None], retry_in: Callable[[], float], idle_s: float = 1.0
    ) -> None:
        """Forever: one pass over the waiting requests, then sleep until a probe or an expiry is due."""
        while True:
            self.wake.clear()
            pending = await self.work(retries, deliver)
            if pending:
                delay = max(0.05, min(retry_in() or idle_s, min(w.expires for w in pending) - time.time()))
            else:
                delay = 3600.0
            with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
                await asyncio.wait_for(self.wake.wait(), delay)

    async def work(self, retries: Retries, deliver: Callable[[Outbound], None]) -> list[Spooled]:
        """Answer or expire waiting requests in order; stop at the first the cloud cannot take yet."""
        waiting = self.spool.waiting() if self.spool else []
        for i, item in enumerate(waiting):
            if item.expires <= time.time():
                self._finish(item, retries.expired(item.inbound), deliver, "expired")
                continue
            outcome = await retries.attempt(replace(item.inbound, received=time.monotonic()))
            if isinstance(outcome, CloudWait):
                return waiting[i:]
            self._finish(item, outcome, deliver, "answered")
        return []

    def _finish(self, item: Spooled, outcome: Outcome, deliver: Callable[[Outbound], None], how: str) -> None:
        if isinstance(outcome, Reply):
            deliver(outcome.out)
        assert self.spool is not None
        self.spool.done_waiting(item.id)
        log.info("waiting_request_done", model=item.model, outcome=how)
