"""The metrics endpoint: `GET /metrics` (Prometheus text format) and `GET /summary` (the MQTT summary's JSON).

A few lines of HTTP on the agent's own event loop rather than prometheus-client's threaded server:
every number is read on the loop that owns it, and a scrape costs no thread. It answers one
request per connection and closes it, which is all a Prometheus scraper or `curl` needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any

import structlog

from edge_agent.errors import ConfigError
from edge_agent.ops.metrics import Metrics

log = structlog.get_logger("edge_agent.ops.endpoint")

TEXT = "text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT_S = 2.0
LINE_LIMIT = 4096  # bytes of request line a connection may hold (asyncio's default is 64 KiB)
MAX_CONNECTIONS = 16  # a scraper needs one; more are closed at once (memory and file descriptors are the device's)


class Endpoint:
    """Serves the metrics on `host:port` until closed."""

    def __init__(self, metrics: Metrics, summary: Callable[[], dict[str, Any]]) -> None:
        self.metrics = metrics
        self.summary = summary
        self.server: asyncio.Server | None = None
        self.open = 0
        self.idle: dict[
            asyncio.StreamWriter, None
        ] = {}  # connections still waiting for their request line, oldest first

    async def start(self, host: str, port: int) -> None:
        """Listen; ConfigError (one line) when the address cannot be had, so a misconfigured port stops start-up."""
        try:
            self.server = await asyncio.start_server(self._serve, host, port, limit=LINE_LIMIT)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio words strerror with the address again
            raise ConfigError([f"metrics: cannot listen on {host}:{port}: {why}; set metrics.port"]) from None
        log.info("metrics_listening", url=f"http://{host}:{port}/metrics")

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS and not self._evict_idle():
            writer.close()  # every slot is answering a request: this one waits for the next scrape
            return
        self.open += 1
        self.idle[writer] = None
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            self.idle.pop(writer, None)
            try:
                status, kind, body = self._answer(line)
            except sqlite3.Error as exc:  # the spool's disk failing: say so, keep serving
                log.error("metrics_read_failed", error=str(exc))
                status, kind, body = "500 Internal Server Error", "text/plain", f"{exc}\n".encode()
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # a scraper that went away, or a request line past the reader's limit: nothing to answer
        finally:
            self.open -= 1
            self.idle.pop(writer, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _evict_idle(self) -> bool:
        """Room for a new connection at the cap: the oldest one that has sent nothing yet is closed (idle
        connections must not blind the scraper). False when every connection is being answered."""
        oldest = next(iter(self.idle), None)
        if oldest is None:
            return False
        self.idle.pop(oldest)
        oldest.close()
        return True

    def _answer(self, request_line: bytes) -> tuple[str, str, bytes]:
        parts = request_line.decode("latin-1").split()
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics or /summary\n"
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return "200 OK", TEXT, self.metrics.exposition()
        if path == "/summary":
            return "200 OK", "application/json", json.dumps(self.summary()).encode()
        return "404 Not Found", "text/plain", b"GET /metrics or /summary\n"
