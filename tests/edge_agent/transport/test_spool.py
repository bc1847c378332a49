"""The SQLite spool: durable, ordered, and the same after reopening (a restart)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edge_agent.contract.messages import Inbound, Outbound
from edge_agent.transport.spool import Spool


def test_replies_survive_reopen_in_order_until_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s" / "spool.sqlite")
    ids = [spool.put_reply(Outbound(f"t/{i}", f"p{i}".encode(), b"c" if i == 1 else None)) for i in range(3)]
    spool.reply_done(ids[0])
    spool.close()
    again = Spool(tmp_path / "s" / "spool.sqlite")
    assert [(o.topic, o.payload, o.correlation) for _, o in again.replies()] == [
        ("t/1", b"p1", b"c"),
        ("t/2", b"p2", None),
    ]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_waiting_requests_keep_everything_and_an_absolute_expiry(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    msg = Inbound("edge-agent/d/req/m", b'{"text": "x"}', "me/r", b"\x00k")
    before = time.time()
    spool.wait("m", msg, ttl_s=60)
    spool.wait("m", Inbound("sensors/a/log", b"raw"), ttl_s=1)
    spool.close()
    waiting = Spool(tmp_path / "spool.sqlite").waiting()
    first = waiting[0]
    assert (first.model, first.inbound.topic, first.inbound.payload) == ("m", msg.topic, msg.payload)
    assert (first.inbound.response_topic, first.inbound.correlation) == ("me/r", b"\x00k")
    assert before + 60 <= first.expires <= time.time() + 60
    assert waiting[1].inbound.response_topic is None and waiting[1].inbound.correlation is None


def test_counts_and_done(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    wid = spool.wait("m", Inbound("a", b"b"), 5)
    spool.put_reply(Outbound("a", b"b"))
    assert spool.counts() == {"replies": 1, "refused": 0, "waiting": 1}
    spool.done_waiting(wid)
    assert spool.counts() == {"replies": 1, "refused": 0, "waiting": 0}


def test_a_reply_the_broker_refused_is_kept_with_why_and_never_resent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    rid = spool.put_reply(Outbound("denied/topic", b"paid answer"))
    spool.reply_done(rid, "Not authorized")
    assert spool.replies() == [] and spool.counts()["refused"] == 1
    assert spool.db.execute("SELECT payload, refused FROM replies").fetchone() == (b"paid answer", "Not authorized")


def test_waiting_requests_come_back_in_arrival_order_not_parking_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    early, late = Inbound("t", b"early", received=time.monotonic() - 5), Inbound("t", b"late")
    spool.wait("m", late, ttl_s=60)  # parked first: its cloud call failed sooner
    spool.wait("m", early, ttl_s=60)
    assert [w.inbound.payload for w in spool.waiting()] == [b"early", b"late"]


def test_a_spool_from_before_arrival_times_still_opens_and_keeps_its_requests(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE waiting (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, response_topic TEXT, correlation BLOB, expires REAL NOT NULL)"
    )
    db.execute("INSERT INTO waiting (model, topic, payload, expires) VALUES ('m', 't', X'6f6c64', 1e12)")
    db.commit()
    db.close()
    spool = Spool(path)
    spool.wait("m", Inbound("t", b"new"), ttl_s=60)
    assert [w.inbound.payload for w in spool.waiting()] == [b"old", b"new"]


def test_another_process_holding_the_lock_costs_the_loop_milliseconds_not_seconds(tmp_path: Path) -> None:
    """Before: sqlite3's 5 s busy timeout, on the event loop, for every spooled reply (a request took 9.7 s)."""
    import pytest

    spool = Spool(tmp_path / "spool.sqlite")
    other = sqlite3.connect(tmp_path / "spool.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 shell, a backup tool...
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        spool.put_reply(Outbound("t", b"x"))
    assert time.monotonic() - started < 0.5
    other.execute("ROLLBACK")
    spool.put_reply(Outbound("t", b"x"))
    assert spool.counts()["replies"] == 1
