"""The transport against a real mosquitto, with a stand-in handler (pure logic) to control timing."""

from __future__ import annotations

import asyncio
import json

from edge_agent.messages import Inbound, Outbound
from edge_agent.transport import Transport
from tests.support.agent import agent_settings as settings
from tests.support.broker import Broker, client


def test_overload_gets_an_overloaded_reply_not_a_drop(broker: Broker) -> None:
    release = asyncio.Event()
    handled: list[str] = []

    async def handle(msg: Inbound) -> Outbound:
        await release.wait()
        handled.append(msg.payload.decode())
        return Outbound("out/ok", msg.payload)

    def refuse(msg: Inbound) -> Outbound:
        return Outbound("out/overloaded", msg.payload)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        t = Transport(settings(broker.port, max_inflight=2), ["in/#"], handle, refuse)
        stop = asyncio.Event()
        runner = asyncio.create_task(t.run(stop))
        await asyncio.wait_for(t.ready.wait(), 10)
        with client(broker.port) as c:
            c.subscribe("out/#")
            for i in range(5):
                await asyncio.to_thread(c.publish, "in/x", str(i))
            refused = [(await asyncio.to_thread(c.get, 10, "out/overloaded")).payload for _ in range(3)]
            release.set()
            ok = [(await asyncio.to_thread(c.get, 10, "out/ok")).payload for _ in range(2)]
        stop.set()
        await runner
        return refused, ok

    refused, ok = asyncio.run(scenario())
    assert sorted(refused + ok) == [b"0", b"1", b"2", b"3", b"4"]
    assert sorted(ok) == [b"0", b"1"]


def test_reconnects_after_broker_restart(broker: Broker) -> None:
    async def handle(msg: Inbound) -> Outbound:
        return Outbound("out/echo", msg.payload)

    async def scenario() -> bytes:
        s = settings(broker.port)
        t = Transport(s, ["in/#"], handle, lambda m: None)
        t.status = lambda: {"models": {}}
        stop = asyncio.Event()
        runner = asyncio.create_task(t.run(stop))
        await asyncio.wait_for(t.ready.wait(), 10)
        t.ready.clear()
        broker.stop()
        broker.start()
        await asyncio.wait_for(t.ready.wait(), 30)
        with client(broker.port) as c:
            c.subscribe("out/echo")
            c.subscribe("edge-agent/t1/status")
            status = json.loads((await asyncio.to_thread(c.get, 10, "edge-agent/t1/status")).payload)
            assert status["status"] == "online"
            await asyncio.to_thread(c.publish, "in/x", "back")
            reply = (await asyncio.to_thread(c.get, 10, "out/echo")).payload
        stop.set()
        await runner
        return reply

    assert asyncio.run(scenario()) == b"back"
