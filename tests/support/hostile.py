"""A registry that misbehaves on purpose, on loopback: it lies about encodings, trickles, never ends."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.support.registry import http_server

Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


@functools.cache
def bomb() -> bytes:
    """`{"version": "1", "pad": "0000…"}`, 64 MiB once decoded twice, a few hundred bytes on the wire."""
    return gzip.compress(gzip.compress(b'{"version": "1", "pad": "' + b"0" * (64 << 20) + b'"}'))


def gzip_bomb(handler: http.server.BaseHTTPRequestHandler) -> None:
    _send(handler, bomb(), {"Content-Encoding": "gzip, gzip"})


def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
    """10 bytes every 50 ms, for ever: each read comes well within any timeout."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 30))
    handler.end_headers()
    with _gone():
        while True:
            handler.wfile.write(b"0" * 10)
            handler.wfile.flush()
            time.sleep(0.05)


def endless(handler: http.server.BaseHTTPRequestHandler) -> None:
    """64 KiB chunks as fast as the socket takes them, for ever."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 40))
    handler.end_headers()
    with _gone():
        while True:
            handler.wfile.write(b"0" * (64 << 10))


def _send(handler: http.server.BaseHTTPRequestHandler, body: bytes, headers: dict[str, str]) -> None:
    handler.send_response(200)
    for key, value in {**headers, "Content-Length": str(len(body))}.items():
        handler.send_header(key, value)
    handler.end_headers()
    with _gone():
        handler.wfile.write(body)


def _gone() -> contextlib.suppress:
    """The client gave up: what the test wants."""
    return contextlib.suppress(BrokenPipeError, ConnectionResetError)


@contextmanager
def hostile(behaviour: Behaviour) -> Iterator[str]:
    """An HTTP registry on a free loopback port answering every GET with `behaviour`; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            behaviour(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with http_server(Handler) as url:
        yield url
