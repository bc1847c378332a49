"""Store-and-forward in SQLite (WAL, synchronous=FULL): what was accepted survives a crash.

Two queues. `replies`: every reply the cloud answered (and every answer to a request that waited
here) is written before its request is acknowledged and deleted when the broker acknowledges it,
so those replies go out once the broker is back, even after a restart, and the cloud is never
asked twice. (Local answers need no spool: their requests stay unacknowledged until the reply's
PUBACK, so the broker redelivers them.) `waiting`: requests that must reach the cloud
(route=cloud) while it is down, each until its expiry time.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.contract.messages import Inbound, Outbound

BUSY_S = 0.05  # the longest a spool write waits for another process's lock, on the event loop
SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, correlation BLOB,
    refused TEXT, created REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS waiting (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    response_topic TEXT, correlation BLOB, expires REAL NOT NULL, arrived REAL NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Spooled:
    """A spooled request; `expires` is wall-clock time (it must mean the same after a restart)."""

    id: int
    model: str
    inbound: Inbound
    expires: float


class Spool:
    """One SQLite file under the state dir. Used from the event loop thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # BUSY_S, not sqlite3's 5 s: another process holding the write lock must not stall the event loop; a
        # write that cannot have the lock fails (sqlite3.Error), and every caller carries on without the spool
        self.db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_S)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._add_column("waiting", "arrived", "REAL NOT NULL DEFAULT 0")  # spools older than arrival times
        self._add_column("replies", "refused", "TEXT")  # spools older than broker refusals
        self._add_column("replies", "created", "REAL NOT NULL DEFAULT 0")  # spools older than the metrics
        now = time.time()  # rows from before either column: their age counts from now (a lower bound)
        self.db.execute("UPDATE replies SET created = ? WHERE created = 0", (now,))
        self.db.execute("UPDATE waiting SET arrived = ? WHERE arrived = 0", (now,))

    def _add_column(self, table: str, column: str, kind: str) -> None:
        if column not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # -- replies waiting for the broker ---------------------------------------------------
    def put_reply(self, out: Outbound) -> int:
        cur = self.db.execute(
            "INSERT INTO replies (topic, payload, correlation, created) VALUES (?, ?, ?, ?)",
            (out.topic, out.payload, out.correlation, time.time()),
        )
        return int(cur.lastrowid or 0)

    def replies(self) -> list[tuple[int, Outbound]]:
        """Every reply the broker has not taken yet (refused ones excepted), oldest first."""
        rows = self.db.execute("SELECT id, topic, payload, correlation FROM replies WHERE refused IS NULL ORDER BY id")
        return [(rid, Outbound(topic, bytes(payload), _opt(corr))) for rid, topic, payload, corr in rows]

    def reply_done(self, rid: int, refused: str | None = None) -> None:
        """The broker took the reply (it goes), or refused it (it stays, kept with why, never resent)."""
        if refused is None:
            self.db.execute("DELETE FROM replies WHERE id = ?", (rid,))
        else:
            self.db.execute("UPDATE replies SET refused = ? WHERE id = ?", (refused, rid))

    # -- requests waiting for the cloud ---------------------------------------------------
    def wait(self, model: str, msg: Inbound, ttl_s: float) -> int:
        """Park a request. Requests can reach here out of arrival order (each waits for its own failed
        cloud call), so the wall-clock arrival time is kept and orders them."""
        arrived = time.time() - (time.monotonic() - msg.received)
        cur = self.db.execute(
            "INSERT INTO waiting (model, topic, payload, response_topic, correlation, expires, arrived)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model, msg.topic, msg.payload, msg.response_topic, msg.correlation, time.time() + ttl_s, arrived),
        )
        return int(cur.lastrowid or 0)

    def waiting(self) -> list[Spooled]:
        """Every waiting request, in arrival order; `received` is set so each keeps its own deadline budget."""
        rows = self.db.execute(
            "SELECT id, model, topic, payload, response_topic, correlation, expires FROM waiting ORDER BY arrived, id"
        )
        now = time.monotonic()
        return [
            Spooled(rid, model, Inbound(topic, bytes(payload), rt, _opt(corr), now), expires)
            for rid, model, topic, payload, rt, corr, expires in rows
        ]

    def done_waiting(self, wid: int) -> None:
        self.db.execute("DELETE FROM waiting WHERE id = ?", (wid,))

    def counts(self) -> dict[str, int]:
        (replies,) = self.db.execute("SELECT COUNT(*) FROM replies WHERE refused IS NULL").fetchone()
        (refused,) = self.db.execute("SELECT COUNT(*) FROM replies WHERE refused IS NOT NULL").fetchone()
        (waiting,) = self.db.execute("SELECT COUNT(*) FROM waiting").fetchone()
        return {"replies": int(replies), "refused": int(refused), "waiting": int(waiting)}

    def depths(self) -> dict[str, tuple[int, float | None]]:
        """Per queue (replies, waiting, refused): rows, and the oldest row's age in seconds (None: empty)."""
        now = time.time()
        queries = {
            "replies": "SELECT COUNT(*), MIN(NULLIF(created, 0)) FROM replies WHERE refused IS NULL",
            "refused": "SELECT COUNT(*), MIN(NULLIF(created, 0)) FROM replies WHERE refused IS NOT NULL",
            "waiting": "SELECT COUNT(*), MIN(NULLIF(arrived, 0)) FROM waiting",
        }
        out: dict[str, tuple[int, float | None]] = {}
        for queue, query in queries.items():
            rows, oldest = self.db.execute(query).fetchone()
            out[queue] = (int(rows), None if oldest is None else max(0.0, now - float(oldest)))
        return out

    def close(self) -> None:
        self.db.close()


def _opt(blob: bytes | None) -> bytes | None:
    return bytes(blob) if blob is not None else None
