"""The SQLite spool: durable, ordered, and the same after reopening (a restart)."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.messages import Inbound, Outbound
from edge_agent.spool import Spool


def test_replies_survive_reopen_in_order_until_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s" / "spool.sqlite")
    ids = [spool.put_reply(Outbound(f"t/{i}", f"p{i}".encode(), b"c" if i == 1 else None)) for i in range(3)]
    spool.reply_sent(ids[0])
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
    assert spool.counts() == {"replies": 1, "waiting": 1}
    spool.done_waiting(wid)
    assert spool.counts() == {"replies": 1, "waiting": 0}
