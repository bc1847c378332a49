"""The transport with a spool against a real mosquitto: replies survive a restart, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from edge_agent.messages import Inbound, Outbound
from edge_agent.spool import Spool
from edge_agent.transport import Delivery, Transport
from tests.support.agent import agent_settings as settings
from tests.support.broker import Broker, SessionClient, client


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
    written = spooled(spool)

    async def scenario() -> list[bytes]:
        t = Transport(settings(persistent_broker.port), ["in/#"], handle, lambda m: None, spool)
        async with serving(t):
            me = SessionClient(persistent_broker.port, "tester-local")  # subscribed to me/replies, session kept
            try:
                await asyncio.to_thread(me.publish, "in/x", "1")
                await asyncio.wait_for(until(lambda: len(t._inflight) == 1), 10)
                t.ready.clear()
                persistent_broker.stop()
                release.set()  # the answer is made while the broker is away
                persistent_broker.start()
                await asyncio.wait_for(t.ready.wait(), 30)
                return [(await asyncio.to_thread(me.messages.get, True, 30)).payload]  # a redelivery may add one
            finally:
                me.close()

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

    async with serving(Transport(settings(broker.port), ["in/#"], record, lambda m: None)):
        with client(broker.port) as c:
            await asyncio.to_thread(c.publish, "in/x", marker)
            await asyncio.wait_for(done.wait(), 10)
    return seen


def test_a_qos0_reply_is_spooled_only_while_the_broker_is_away(persistent_broker: Broker, tmp_path: Path) -> None:
    """The broker never redelivers a QoS 0 request: a reply made while it is away waits in the spool;
    one made while it is there goes straight out (no fsync on the hot path)."""
    release = asyncio.Event()

    async def handle(msg: Inbound) -> Outbound:
        if msg.payload == b"late":
            await release.wait()
        return Outbound("me/replies", b"answer:" + msg.payload)

    spool = Spool(tmp_path / "spool.sqlite")
    written = spooled(spool)

    async def scenario() -> list[bytes]:
        t = Transport(settings(persistent_broker.port), ["in/#"], handle, lambda m: None, spool)
        async with serving(t):
            me = SessionClient(persistent_broker.port, "tester-q0")
            try:
                got = []
                for text in ("now", "late"):
                    await asyncio.to_thread(lambda p=text: me.client.publish("in/x", p, qos=0).wait_for_publish(10))
                    if text == "now":
                        got.append((await asyncio.to_thread(me.messages.get, True, 30)).payload)
                await asyncio.wait_for(until(lambda: len(t._inflight) == 1), 10)
                persistent_broker.stop()
                await asyncio.wait_for(until(lambda: not t.client.is_connected()), 10)
                release.set()  # answered while the broker is away
                await asyncio.wait_for(until(lambda: bool(written)), 10)
                t.ready.clear()
                persistent_broker.start()
                await asyncio.wait_for(t.ready.wait(), 30)
                got.append((await asyncio.to_thread(me.messages.get, True, 30)).payload)
                await asyncio.wait_for(drained(spool), 10)
                return got
            finally:
                me.close()

    assert asyncio.run(scenario()) == [b"answer:now", b"answer:late"]
    assert written == [b"answer:late"]


def test_a_request_the_broker_resends_while_it_is_being_answered_is_answered_once(
    persistent_broker: Broker, tmp_path: Path
) -> None:
    release = asyncio.Event()
    handled: list[bytes] = []
    dispatched: list[bytes] = []

    async def handle(msg: Inbound) -> Outbound:
        handled.append(msg.payload)
        await release.wait()
        return Outbound("me/replies", b"answer:" + msg.payload)

    class Counting(Transport):
        def _dispatch(self, inbound: Inbound, delivery: Delivery) -> None:
            dispatched.append(inbound.payload)
            super()._dispatch(inbound, delivery)

    async def scenario() -> list[bytes]:
        t = Counting(settings(persistent_broker.port), ["in/#"], handle, lambda m: None, Spool(tmp_path / "s.sqlite"))
        async with serving(t):
            me = SessionClient(persistent_broker.port, "tester-dup")
            try:
                await asyncio.to_thread(me.publish, "in/x", "1")
                await asyncio.wait_for(until(lambda: len(handled) == 1), 10)
                t.ready.clear()
                persistent_broker.stop()
                persistent_broker.start()  # our session is resumed: the unacked request comes again (DUP)
                await asyncio.wait_for(until(lambda: len(dispatched) == 2), 30)
                release.set()
                return [(await asyncio.to_thread(me.messages.get, True, 30)).payload]
            finally:
                me.close()

    assert asyncio.run(scenario()) == [b"answer:1"]
    assert handled == [b"1"] and dispatched == [b"1", b"1"]
    assert asyncio.run(next_session_sees(persistent_broker, b"2")) == [b"2"]


@contextlib.asynccontextmanager
async def serving(t: Transport) -> AsyncIterator[Transport]:
    """The transport running and connected for the block; stopped (in-flight work finished) after it."""
    stop = asyncio.Event()
    runner = asyncio.create_task(t.run(stop))
    try:
        await asyncio.wait_for(t.ready.wait(), 10)
        yield t
    finally:
        stop.set()
        await runner


def spooled(spool: Spool) -> list[bytes]:
    """The payloads of every reply written to `spool` from now on."""
    written: list[bytes] = []
    put = spool.put_reply
    spool.put_reply = lambda out: written.append(out.payload) or put(out)  # type: ignore[method-assign]
    return written


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
