"""Reading a registry: a folder, `file://` or `http(s)://` holding `{name}/latest.json` and `{name}/{version}/`.

Every read is bounded: small documents by a byte limit, model files by the size the signed manifest
gives them, so a truncated, padded or endless download is refused instead of filling the disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlparse

import httpx

from edge_agent.contract.manifest import check_version
from edge_agent.errors import ArtifactError

DOC_LIMIT = 1 << 20  # manifest.json, manifest.sig, latest.json
CHUNK = 1 << 16
GRACE_S = 30.0  # a download's first seconds are not held to the minimum rate (a slow start, a cold cache)


@dataclass(frozen=True)
class Pace:
    """What a registry GET may take in all: a deadline, and a minimum rate once past the grace period (a
    registry trickling a few bytes at a time never trips the per-read timeout alone)."""

    deadline_s: float = 1800.0
    min_bytes_per_s: int = 2048
    grace_s: float = GRACE_S
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)  # a rollback stops a pull

    def check(self, url: str, started: float, seen: int) -> None:
        if self.cancelled.is_set():
            raise ArtifactError(f"registry: GET {url}: cancelled (a rollback came first)")
        elapsed = time.monotonic() - started
        if elapsed > self.deadline_s:
            raise ArtifactError(f"registry: GET {url}: not done within {self.deadline_s:g} s ({seen} bytes)")
        if elapsed > self.grace_s and seen < self.min_bytes_per_s * elapsed:
            rate = seen / elapsed
            raise ArtifactError(f"registry: GET {url}: {rate:.0f} bytes/s, under {self.min_bytes_per_s} (a trickle)")


class Source(Protocol):
    def read(self, relpath: str, limit: int = DOC_LIMIT) -> bytes:
        """A small document; ArtifactError when missing or larger than `limit`."""
        ...

    def fetch(self, relpath: str, dest: Path, size: int, sha256: str) -> None:
        """A file of exactly `size` bytes whose sha256 is `sha256`, written to `dest`."""
        ...


def open_source(url: str, timeout_s: float = 30.0, pace: Pace | None = None) -> Source:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return HttpSource(url.rstrip("/"), timeout_s, pace)
    if parsed.scheme == "file":
        return FolderSource(Path(unquote(parsed.path)), pace)
    if parsed.scheme == "":
        return FolderSource(Path(url), pace)
    raise ArtifactError(f"registry {url}: scheme {parsed.scheme!r} is not supported (a folder, file:// or http(s)://)")


def latest(source: Source, name: str) -> str:
    """The version `{name}/latest.json` points at."""
    raw = source.read(f"{quote(name)}/latest.json")
    try:
        version = json.loads(raw)["version"]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested past Python's limit
        raise ArtifactError(f"registry: {name}/latest.json has no version") from None
    if not isinstance(version, str) or not version:
        raise ArtifactError(f"registry: {name}/latest.json has no version")
    return check_version(version, f"registry: {name}/latest.json names")


class _Digest:
    """Counts and hashes what is written, refusing a byte past the expected size."""

    def __init__(self, relpath: str, size: int) -> None:
        self.relpath, self.size, self.seen = relpath, size, 0
        self.hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.size:
            raise ArtifactError(f"{self.relpath}: larger than the {self.size} bytes the manifest gives it")
        self.hash.update(chunk)

    def check(self, sha256: str) -> None:
        if self.seen < self.size:
            raise ArtifactError(f"{self.relpath}: truncated ({self.seen} of {self.size} bytes)")
        if self.hash.hexdigest() != sha256:
            raise ArtifactError(f"{self.relpath}: sha256 does not match the manifest (corrupted or replaced)")


def _paced(chunks: Iterable[bytes], pace: Pace, url: str, started: float | None = None) -> Iterator[bytes]:
    """The chunks, each held to the pace (and to a rollback's cancel)."""
    started, seen = started or time.monotonic(), 0
    for chunk in chunks:
        seen += len(chunk)
        pace.check(url, started, seen)
        yield chunk


def _copy(chunks: Iterable[bytes], dest: Path, digest: _Digest, sha256: str) -> None:
    """Write `chunks` to `dest`, refusing a byte past the expected size, then check size and hash."""
    with dest.open("wb") as out:
        for chunk in chunks:
            digest.add(chunk)
            out.write(chunk)
    digest.check(sha256)


class FolderSource:
    def __init__(self, root: Path, pace: Pace | None = None) -> None:
        self.root = root
        self.pace = pace or Pace()

    def _path(self, relpath: str) -> Path:
        path = self.root / unquote(relpath)
        if not path.is_file():
            raise ArtifactError(f"registry {self.root}: no {unquote(relpath)}")
        return path

    def read(self, relpath: str, limit: int = DOC_LIMIT) -> bytes:
        path = self._path(relpath)
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise ArtifactError(f"registry {self.root}: {unquote(relpath)} is larger than {limit} bytes")
        return data

    def fetch(self, relpath: str, dest: Path, size: int, sha256: str) -> None:
        with self._path(relpath).open("rb") as src:
            chunks = _paced(iter(lambda: src.read(CHUNK), b""), self.pace, str(self.root / unquote(relpath)))
            _copy(chunks, dest, _Digest(unquote(relpath), size), sha256)


class HttpSource:
    """GETs that cannot cost more than they say: no content coding (every byte counted is a byte on the wire and
    in memory, no gzip bomb), a per-read timeout, a total deadline and a minimum rate (Pace)."""

    def __init__(self, base: str, timeout_s: float, pace: Pace | None = None) -> None:
        self.base = base
        self.timeout = httpx.Timeout(timeout_s)
        self.pace = pace or Pace()

    def read(self, relpath: str, limit: int = DOC_LIMIT) -> bytes:
        data = bytearray()
        with self._open(relpath) as response:
            for chunk in response.chunks():
                data += chunk
                if len(data) > limit:
                    raise ArtifactError(f"registry {self.base}: {unquote(relpath)} is larger than {limit} bytes")
        return bytes(data)

    def fetch(self, relpath: str, dest: Path, size: int, sha256: str) -> None:
        with self._open(relpath) as response:
            _copy(response.chunks(), dest, _Digest(unquote(relpath), size), sha256)

    def _open(self, relpath: str) -> _Response:
        return _Response(f"{self.base}/{relpath}", self.timeout, self.pace)


class _Response:
    """One GET as a context manager; transport errors and non-200 answers become one ArtifactError line."""

    def __init__(self, url: str, timeout: httpx.Timeout, pace: Pace) -> None:
        self.url, self.timeout, self.pace = url, timeout, pace
        self.client: httpx.Client | None = None
        self.response: httpx.Response | None = None
        self.started = time.monotonic()

    def __enter__(self) -> _Response:
        self.client = httpx.Client(timeout=self.timeout, follow_redirects=True)
        try:
            request = self.client.build_request("GET", self.url, headers={"Accept-Encoding": "identity"})
            self.response = self.client.send(request, stream=True)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            self.client.close()
            raise ArtifactError(f"registry: GET {self.url[:300]}: {type(exc).__name__}: {str(exc)[:200]}") from None
        status, coding = self.response.status_code, self.response.headers.get("content-encoding", "identity")
        if status != 200 or coding.strip().lower() not in ("", "identity"):
            self.__exit__()
            why = f"HTTP {status}" if status != 200 else f"Content-Encoding {coding[:40]!r} (asked for identity)"
            raise ArtifactError(f"registry: GET {self.url}: {why}")
        return self

    def chunks(self) -> Iterator[bytes]:
        """The body as sent (no decoding), as it arrives, every chunk held to the pace."""
        assert self.response is not None
        try:  # as it arrives: a trickle is seen, never buffered up
            yield from _paced(self.response.iter_raw(), self.pace, self.url, self.started)
        except httpx.HTTPError as exc:  # the connection dropped mid-file: a truncated download
            raise ArtifactError(f"registry: GET {self.url}: {type(exc).__name__} while reading") from None

    def __exit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.close()
        if self.client is not None:
            self.client.close()


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free
