"""The transport with a spool against a real mosquitto: replies survive a restart, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.messages import Inbound, Outbound
from edge_agent.spool import Spool
from edge_agent.transport import Transport
from tests.mqtt_helpers import Broker, client
from tests.test_transport import settings


def test_spooled_replies_from_a_previous_run_go_out_in_order_then_leave_the_spool(
    broker: Broker, tmp_path: Path
) -> None:
    previous = Spool(tmp_path / "spool.sqlite")
    for i in range(5):
        previous.put_reply(Outbound("out/replay", str(i).encode()))
    previous.close()

    async def handle(msg: Inbound) -> Outbound:
        return Outbound("out/replay", b"live:" + msg.payload)

    async def scenario(spool: Spool) -> list[bytes]:
        t = Transport(settings(broker.port), ["in/#"], handle, lambda m: None, spool)
        stop = asyncio.Event()
        with client(broker.port) as c:
            c.subscribe("out/replay")
            runner = asyncio.create_task(t.run(stop))
            got = [(await asyncio.to_thread(c.get, 10, "out/replay")).payload for _ in range(5)]
            await asyncio.to_thread(c.publish, "in/x", "6")
            got.append((await asyncio.to_thread(c.get, 10, "out/replay")).payload)
        await asyncio.wait_for(drained(spool), 10)
        stop.set()
        await runner
        return got

    spool = Spool(tmp_path / "spool.sqlite")
    assert asyncio.run(scenario(spool)) == [b"0", b"1", b"2", b"3", b"4", b"live:6"]
    assert spool.counts()["replies"] == 0


async def drained(spool: Spool) -> None:
    """Until the last PUBACK has removed its row (PUBACKs are handled on the loop)."""
    while spool.counts()["replies"]:
        await asyncio.sleep(0.01)
