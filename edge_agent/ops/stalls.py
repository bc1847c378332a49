"""The event loop held too long: in asyncio's debug mode every callback is timed, and one that runs longer than
`loop_stall_ms` is logged as `loop_stalled` (what ran, for how long). Every request, PUBACK and watchdog ping
waits behind such a callback, so the end-to-end tests run with it on and fail on any. Off by default: debug
mode costs a little on every callback.
"""

from __future__ import annotations

import asyncio
import logging

import structlog

log = structlog.get_logger("edge_agent.ops.stalls")
SLOW_CALLBACK = "Executing %s took %.3f seconds"  # asyncio's own message, base_events._run_once


class _Relay(logging.Handler):
    """asyncio's warnings as structured lines, like every other line the agent writes."""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == SLOW_CALLBACK and len(args) == 2 and isinstance(args[1], float):
            log.warning("loop_stalled", ms=round(args[1] * 1000, 1), what=str(args[0])[:400])
        else:
            log.warning("asyncio", message=record.getMessage()[:1000])


def watch(loop: asyncio.AbstractEventLoop, limit_ms: int) -> None:
    """Log every callback that holds `loop` longer than `limit_ms`."""
    loop.set_debug(True)
    loop.slow_callback_duration = limit_ms / 1000
    logger = logging.getLogger("asyncio")
    logger.addHandler(_Relay(logging.WARNING))
    logger.propagate = False
