"""Requests that must reach the cloud, kept in the spool while it is down and retried in order.

Each ends in exactly one reply: the cloud's answer once it is back, or an expiry error when its
time to live runs out. The breaker paces the retries: while it is open, nothing is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from edge_agent.escalation import WaitForCloud
from edge_agent.messages import Inbound, Outbound
from edge_agent.spool import Spool, Waiting

log = structlog.get_logger("edge_agent.waitlist")

Retry = Callable[[Inbound], Awaitable[Outbound | None]]
Expire = Callable[[Inbound], Outbound | None]
Deliver = Callable[[Outbound], None]


class Waitlist:
    """Works through the spool's waiting requests whenever the cloud may be tried again."""

    def __init__(
        self, spool: Spool, retry: Retry, expire: Expire, deliver: Deliver, retry_in: Callable[[], float]
    ) -> None:
        self.spool = spool
        self.retry = retry
        self.expire = expire
        self.deliver = deliver
        self.retry_in = retry_in
        self.wake = asyncio.Event()

    async def run(self, idle_s: float = 1.0) -> None:
        """Forever: one pass over the waiting requests, then sleep until a probe or an expiry is due."""
        while True:
            self.wake.clear()
            pending = await self.work()
            if pending:
                delay = max(0.05, min(self.retry_in() or idle_s, min(w.expires for w in pending) - time.time()))
            else:
                delay = 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    async def work(self) -> list[Waiting]:
        """Answer or expire waiting requests in order; stop at the first the cloud cannot take yet."""
        waiting = self.spool.waiting()
        for i, item in enumerate(waiting):
            if item.expires <= time.time():
                self._finish(item, self.expire(item.inbound), "expired")
                continue
            try:
                out = await self.retry(replace(item.inbound, received=time.monotonic()))
            except WaitForCloud:
                return waiting[i:]
            self._finish(item, out, "answered")
        return []

    def _finish(self, item: Waiting, out: Outbound | None, how: str) -> None:
        if out is not None:
            self.deliver(out)
        self.spool.done_waiting(item.id)
        log.info("waiting_request_done", model=item.model, outcome=how)
