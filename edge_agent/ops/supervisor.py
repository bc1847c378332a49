"""Background work that must not die quietly: each piece restarts on failure, and `alive` says
whether all of them still run, so the systemd watchdog stops (and systemd restarts the agent)
once one has failed too often to be trusted."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("edge_agent.ops.supervisor")

Work = Callable[[], Awaitable[None]]


class Supervisor:
    """Restarts a failed task after `backoff_s`; more than `max_restarts` failures within `window_s`
    and it is left dead."""

    def __init__(self, max_restarts: int = 5, window_s: float = 60.0, backoff_s: float = 0.5) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.dead: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, work: Work) -> None:
        self._tasks[name] = asyncio.create_task(self._keep(name, work), name=name)

    def alive(self) -> bool:
        return not self.dead

    async def _keep(self, name: str, work: Work) -> None:
        failures: deque[float] = deque()
        while True:
            try:
                await work()
                return  # finished its job
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background_task_failed", task=name)
            now = time.monotonic()
            failures.append(now)
            while failures and failures[0] < now - self.window_s:
                failures.popleft()
            if len(failures) > self.max_restarts:
                log.error("background_task_dead", task=name, failures=len(failures), window_s=self.window_s)
                self.dead.add(name)
                return
            await asyncio.sleep(self.backoff_s)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
