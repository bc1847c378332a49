"""Delivery against a real mosquitto, with a stand-in handler (pure logic) to control timing: overload,
reconnects, the spool across restarts, acks on PUBACK, duplicates, refused publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from edge_agent.contract.messages import Inbound, Outbound
from edge_agent.transport.delivery import Delivery
from edge_agent.transport.mqtt import Message
from edge_agent.transport.spool import Spool
from tests.support.agent import agent_settings as settings
from tests.support.broker import Broker, SessionClient, client
from tests.support.delivery import make_delivery


def test_overload_under_mqtt_311_gets_an_overloaded_reply_not_a_drop(broker: Broker) -> None:
    release = asyncio.Event()

    async def handle(msg: Inbound) -> Outbound:
        await release.wait()
        return Outbound("out/ok", msg.payload)

    def refuse(msg: Inbound) -> Outbound:
        return Outbound("out/overloaded", msg.payload)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        s = settings(broker.port, max_inflight=2)
        s.mqtt.protocol = "3.1.1"  # no flow control: the agent must refuse what it cannot take
        t = make_delivery(s, ["in/#"], handle, refuse)
        async with serving(t):
            with client(broker.port) as c:
                c.subscribe("out/#")
                for i in range(5):
                    await asyncio.to_thread(c.publish, "in/x", str(i))
                refused = [(await asyncio.to_thread(c.get, 10, "out/overloaded")).payload for _ in range(3)]
                release.set()
                ok = [(await asyncio.to_thread(c.get, 10, "out/ok")).payload for _ in range(2)]
        return refused, ok

    refused, ok = asyncio.run(scenario())
    assert sorted(refused + ok) == [b"0", b"1", b"2", b"3", b"4"]
    assert sorted(ok) == [b"0", b"1"]


def test_under_mqtt_5_receive_maximum_makes_the_broker_hold_a_burst_back_instead_of_the_agent_refusing(
    broker: Broker,
) -> None:
    inside = 0
    most = 0

    async def handle(msg: Inbound) -> Outbound:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0)  # hand the loop over: more messages could be admitted meanwhile
        inside -= 1
        return Outbound("out/ok", msg.payload)

    def refuse(msg: Inbound) -> Outbound:
        return Outbound("out/overloaded", msg.payload)

    async def scenario() -> list[bytes]:
        t = make_delivery(settings(broker.port, max_inflight=4), ["in/#"], handle, refuse)
        async with serving(t):
            with client(broker.port) as c:
                c.subscribe("out/#")
                for i in range(300):
                    c.client.publish("in/x", str(i), qos=1)
                got = [await asyncio.to_thread(c.get, 20) for _ in range(300)]
        return [m.payload for m in got if m.topic == "out/ok"]

    ok = asyncio.run(scenario())
    assert sorted(ok, key=int) == [str(i).encode() for i in range(300)]  # all served, none refused
    assert most <= 4


def test_reconnects_after_broker_restart(broker: Broker) -> None:
    async def handle(msg: Inbound) -> Outbound:
        return Outbound("out/echo", msg.payload)

    async def scenario() -> bytes:
        s = settings(broker.port)
        t = make_delivery(s, ["in/#"], handle, status=lambda: {"models": {}})
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
        t = make_delivery(settings(broker.port), ["in/#"], handle, lambda m: None, spool)
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
        t = make_delivery(settings(persistent_broker.port), ["in/#"], handle, lambda m: None, spool)
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

    async with serving(make_delivery(settings(broker.port), ["in/#"], record, lambda m: None)):
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
        t = make_delivery(settings(persistent_broker.port), ["in/#"], handle, lambda m: None, spool)
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
                await asyncio.wait_for(until(lambda: not t.client.connected()), 10)
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

    class Counting(Delivery):
        def _admit(self, event: Message) -> None:
            dispatched.append(event.inbound.payload)
            super()._admit(event)

    async def scenario() -> list[bytes]:
        spool = Spool(tmp_path / "s.sqlite")
        t = make_delivery(settings(persistent_broker.port), ["in/#"], handle, spool=spool, cls=Counting)
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
async def serving(t: Delivery) -> AsyncIterator[Delivery]:
    """Delivery running and connected for the block; stopped (in-flight work finished) after it."""
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


class FullDisk(Spool):
    """A spool whose disk fails on every write (full, or an I/O error)."""

    def put_reply(self, out: Outbound) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    def wait(self, model: str, msg: Inbound, ttl_s: float) -> int:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_paid_reply_the_disk_cannot_keep_is_still_published_and_its_request_acked_on_puback(
    persistent_broker: Broker, tmp_path: Path
) -> None:
    async def handle(msg: Inbound) -> Outbound:
        return Outbound("me/replies", b"paid:" + msg.payload, durable=True)

    async def scenario() -> list[bytes]:
        t = make_delivery(settings(persistent_broker.port), ["in/#"], handle, spool=FullDisk(tmp_path / "s.sqlite"))
        async with serving(t):
            me = SessionClient(persistent_broker.port, "tester-disk")
            try:
                await asyncio.to_thread(me.publish, "in/x", "1")
                return [(await asyncio.to_thread(me.messages.get, True, 30)).payload]
            finally:
                me.close()

    assert asyncio.run(scenario()) == [b"paid:1"]
    assert asyncio.run(next_session_sees(persistent_broker, b"2")) == [b"2"]  # "1" was acked


def test_a_request_that_cannot_be_parked_is_refused_not_lost(tmp_path: Path) -> None:
    from edge_agent.config.sections import CloudSettings
    from edge_agent.serving.waitlist import Waitlist

    waitlist = Waitlist(FullDisk(tmp_path / "s.sqlite"), CloudSettings(base_url="http://127.0.0.1:1/v1", model="m"))
    assert waitlist.park("m", Inbound("edge-agent/d/req/m", b'{"text": "x"}')) is False  # the handler replies an error
