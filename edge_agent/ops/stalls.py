"""The event loop held too long: in asyncio's debug mode every callback is timed, and one that holds the loop
longer than `loop_stall_ms` is logged as `loop_stalled` (what ran, for how long). Every request, PUBACK and
watchdog ping waits behind such a callback, so the end-to-end tests run with it on and fail on any. Off by
default: debug mode costs a little on every callback.

A callback's wall time also counts the time its thread waited for a CPU that other threads held (the model's
own threads, other processes): that is not the loop being blocked, and on a busy 2-core board it can pass
100 ms. Where Linux tells it (`/proc/thread-self/schedstat`), the wait for a CPU is taken off: a callback that
held the loop is `loop_stalled`; one that only waited its turn is `loop_preempted`, at info.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import structlog

log = structlog.get_logger("edge_agent.ops.stalls")
SLOW_CALLBACK = "Executing %s took %.3f seconds"  # asyncio's own message, base_events._run_once
SCHEDSTAT = Path("/proc/thread-self/schedstat")  # cpu ns, run-queue wait ns, timeslices of this thread
SAMPLE_S = 0.05


def _waited_ns() -> int:
    """How long this thread has waited for a CPU, in all (0 where the kernel does not say)."""
    try:
        return int(SCHEDSTAT.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class Stalls(logging.Handler):
    """asyncio's warnings as structured lines; a slow callback judged by the time it held the loop."""

    def __init__(self, limit_ms: int) -> None:
        super().__init__(logging.WARNING)
        self.limit_ms = limit_ms
        self.waited = _waited_ns()  # as of the last sample: before any callback now being reported began

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg != SLOW_CALLBACK or len(args) != 2 or not isinstance(args[1], float):
            log.warning("asyncio", message=record.getMessage()[:1000])
            return
        ms = args[1] * 1000
        waited = (_waited_ns() - self.waited) / 1e6
        event, level = ("loop_stalled", log.warning) if ms - waited > self.limit_ms else ("loop_preempted", log.info)
        level(event, ms=round(ms, 1), waited_for_cpu_ms=round(waited, 1), what=str(args[0])[:400])

    async def sample(self) -> None:
        """Forever: note the run-queue wait so far, between callbacks (this runs on the loop's thread)."""
        while True:
            self.waited = _waited_ns()
            await asyncio.sleep(SAMPLE_S)


def watch(loop: asyncio.AbstractEventLoop, limit_ms: int) -> Stalls:
    """Log every callback that holds `loop` longer than `limit_ms`; run the returned `sample()` on the loop."""
    loop.set_debug(True)
    loop.slow_callback_duration = limit_ms / 1000
    stalls = Stalls(limit_ms)
    logger = logging.getLogger("asyncio")
    logger.addHandler(stalls)
    logger.propagate = False
    return stalls
