"""sd_notify without a dependency: READY=1 once serving, WATCHDOG=1 while the agent is healthy."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable


def notify(state: str) -> bool:
    """Send a state line to systemd; False (and nothing else) when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)
    return True


async def watchdog(alive: Callable[[], bool] = lambda: True) -> None:
    """Ping at half the interval systemd asked for, only while `alive()`: a stuck event loop or a
    dead background task stops the pings, and systemd restarts the agent."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    if usec <= 0:
        return
    while True:
        if alive():
            notify("WATCHDOG=1")
        await asyncio.sleep(usec / 2e6)
