"""The loop-stall detector the end-to-end tests rely on: it must see a callback that blocks the loop."""

from __future__ import annotations

import asyncio
import logging
import time

from structlog.testing import capture_logs

from edge_agent.ops import stalls


def test_a_callback_blocking_the_loop_is_a_stall_and_a_quick_one_is_not() -> None:
    async def scenario() -> None:
        detector = stalls.watch(asyncio.get_running_loop(), 100)
        sampler = asyncio.create_task(detector.sample())
        try:
            await asyncio.sleep(0.06)
            time.sleep(0.03)  # quick: under the limit
            await asyncio.sleep(0.06)
            time.sleep(0.25)  # a blocking call on the loop: a file lock, a hash, an fsync
            await asyncio.sleep(0)
        finally:
            sampler.cancel()
            logging.getLogger("asyncio").removeHandler(detector)

    with capture_logs() as logs:
        asyncio.run(scenario())
    found = [line for line in logs if line["event"] == "loop_stalled"]
    assert len(found) == 1 and found[0]["ms"] >= 250 and found[0]["waited_for_cpu_ms"] < 150, logs
