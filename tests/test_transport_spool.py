"""The transport with a spool against a real mosquitto: replies survive a restart, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edge_agent.messages import Inbound, Outbound
from edge_agent.spool import Spool
from edge_agent.transport import Transport
from tests.mqtt_helpers import Broker, client
from tests.test_router_e2e import SessionClient
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


def test_a_local_reply_made_while_the_broker_is_away_arrives_without_the_spool(
    persistent_broker: Broker, tmp_path: Path
) -> None:
    """Not durable: nothing is written to the spool; the request stays unacked until the reply's PUBACK."""
    release = asyncio.Event()

    async def handle(msg: Inbound) -> Outbound:
        await release.wait()
        return Outbound("me/replies", b"answer:" + msg.payload)

    spool = Spool(tmp_path / "spool.sqlite")
    written: list[Outbound] = []
    put = spool.put_reply
    spool.put_reply = lambda out: written.append(out) or put(out)  # type: ignore[method-assign]

    async def scenario() -> list[bytes]:
        t = Transport(settings(persistent_broker.port), ["in/#"], handle, lambda m: None, spool)
        stop = asyncio.Event()
        runner = asyncio.create_task(t.run(stop))
        await asyncio.wait_for(t.ready.wait(), 10)
        me = SessionClient(persistent_broker.port, "tester-local")  # subscribed to me/replies, session kept
        try:
            await asyncio.to_thread(me.publish, "in/x", "1")
            await asyncio.wait_for(until(lambda: len(t._inflight) == 1), 10)
            t.ready.clear()
            persistent_broker.stop()
            release.set()  # the answer is made while the broker is away
            persistent_broker.start()
            await asyncio.wait_for(t.ready.wait(), 30)
            got = [(await asyncio.to_thread(me.messages.get, True, 30)).payload]  # a redelivery may add one more
        finally:
            me.close()
        stop.set()
        await runner
        return got

    assert asyncio.run(scenario()) == [b"answer:1"]
    assert written == [] and spool.counts()["replies"] == 0
    assert asyncio.run(next_session_sees(persistent_broker, b"2")) == [b"2"]  # "1" was acked: never redelivered


async def next_session_sees(broker: Broker, marker: bytes) -> list[bytes]:
    """What the agent's persistent session gets on its next connection, up to `marker` (published
    now): an unacked earlier request would be redelivered before it."""
    seen: list[bytes] = []
    done = asyncio.Event()

    async def record(msg: Inbound) -> None:
        seen.append(msg.payload)
        if msg.payload == marker:
            done.set()

    t = Transport(settings(broker.port), ["in/#"], record, lambda m: None)
    stop = asyncio.Event()
    runner = asyncio.create_task(t.run(stop))
    await asyncio.wait_for(t.ready.wait(), 10)
    with client(broker.port) as c:
        await asyncio.to_thread(c.publish, "in/x", marker)
        await asyncio.wait_for(done.wait(), 10)
    stop.set()
    await runner
    return seen


def test_the_reply_to_a_qos0_request_is_spooled(broker: Broker, tmp_path: Path) -> None:
    """The broker never redelivers a QoS 0 message, so its answer is kept until the broker has it."""

    async def handle(msg: Inbound) -> Outbound:
        return Outbound("out/q0", b"answer:" + msg.payload)

    spool = Spool(tmp_path / "spool.sqlite")
    written: list[bytes] = []
    put = spool.put_reply
    spool.put_reply = lambda out: written.append(out.payload) or put(out)  # type: ignore[method-assign]

    async def scenario() -> bytes:
        t = Transport(settings(broker.port), ["in/#"], handle, lambda m: None, spool)
        stop = asyncio.Event()
        runner = asyncio.create_task(t.run(stop))
        await asyncio.wait_for(t.ready.wait(), 10)
        with client(broker.port) as c:
            c.subscribe("out/q0")
            await asyncio.to_thread(lambda: c.client.publish("in/x", "0", qos=0).wait_for_publish(10))
            got = (await asyncio.to_thread(c.get, 10, "out/q0")).payload
        await asyncio.wait_for(drained(spool), 10)
        stop.set()
        await runner
        return got

    assert asyncio.run(scenario()) == b"answer:0"
    assert written == [b"answer:0"]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
