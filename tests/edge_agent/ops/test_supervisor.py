"""Supervised background work and the watchdog it feeds (a real unix datagram socket stands in for systemd)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from edge_agent.ops import systemd
from edge_agent.ops.supervisor import Supervisor


def test_a_failing_task_is_restarted_then_left_dead_and_alive_says_so() -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    async def scenario() -> tuple[bool, bool]:
        sup = Supervisor(max_restarts=3, window_s=60, backoff_s=0)
        sup.start("flaky", flaky)
        await asyncio.sleep(0)
        before = sup.alive()
        while "flaky" not in sup.dead:
            await asyncio.sleep(0.001)
        await sup.stop()
        return before, sup.alive()

    assert asyncio.run(scenario()) == (True, False)
    assert len(runs) == 4  # the first run and three restarts


def test_a_task_that_recovers_keeps_the_agent_alive() -> None:
    attempts: list[int] = []
    done = asyncio.Event()

    async def recovers() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("transient")
        done.set()
        await asyncio.Event().wait()

    async def scenario() -> bool:
        sup = Supervisor(max_restarts=5, backoff_s=0)
        sup.start("recovers", recovers)
        await asyncio.wait_for(done.wait(), 5)
        alive = sup.alive()
        await sup.stop()
        return alive

    assert asyncio.run(scenario()) is True and len(attempts) == 3


def test_the_watchdog_is_fed_only_while_everything_is_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a ping every 10 ms
    alive = [True]

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(systemd.watchdog(lambda: alive[0]))
        pings = 0
        while pings < 3:
            await asyncio.sleep(0.01)
            pings += _drain(sock)
        alive[0] = False
        await asyncio.sleep(0.02)
        _drain(sock)  # a ping already in flight
        await asyncio.sleep(0.1)  # ten intervals: a live watchdog would ping about ten times
        after = _drain(sock)
        task.cancel()
        return pings, after

    pings, after = asyncio.run(scenario())
    sock.close()
    assert pings >= 3 and after == 0


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            assert sock.recv(64) == b"WATCHDOG=1"
        except BlockingIOError:
            return n
        n += 1
