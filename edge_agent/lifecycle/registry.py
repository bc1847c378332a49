"""Reading a registry: a folder, `file://` or `http(s)://` holding `{name}/latest.json` and `{name}/{version}/`.

Every read is bounded: small documents by a byte limit, model files by the size the signed manifest
gives them, so a truncated, padded or endless download is refused instead of filling the disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlparse

import httpx

from edge_agent.errors import ArtifactError

DOC_LIMIT = 1 << 20  # manifest.json, manifest.sig, latest.json
CHUNK = 1 << 16


class Source(Protocol):
    def read(self, relpath: str, limit: int = DOC_LIMIT) -> bytes:
        """A small document; ArtifactError when missing or larger than `limit`."""
        ...

    def fetch(self, relpath: str, dest: Path, size: int, sha256: str) -> None:
        """A file of exactly `size` bytes whose sha256 is `sha256`, written to `dest`."""
        ...


def open_source(url: str, timeout_s: float = 30.0) -> Source:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return HttpSource(url.rstrip("/"), timeout_s)
    if parsed.scheme == "file":
        return FolderSource(Path(unquote(parsed.path)))
    if parsed.scheme == "":
        return FolderSource(Path(url))
    raise ArtifactError(f"registry {url}: scheme {parsed.scheme!r} is not supported (a folder, file:// or http(s)://)")


def latest(source: Source, name: str) -> str:
    """The version `{name}/latest.json` points at."""
    raw = source.read(f"{quote(name)}/latest.json")
    try:
        version = json.loads(raw)["version"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"registry: {name}/latest.json has no version") from None
    if not isinstance(version, str) or not version:
        raise ArtifactError(f"registry: {name}/latest.json has no version")
    return version


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


def _copy(chunks: Iterable[bytes], dest: Path, digest: _Digest, sha256: str) -> None:
    """Write `chunks` to `dest`, refusing a byte past the expected size, then check size and hash."""
    with dest.open("wb") as out:
        for chunk in chunks:
            digest.add(chunk)
            out.write(chunk)
    digest.check(sha256)


class FolderSource:
    def __init__(self, root: Path) -> None:
        self.root = root

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
            _copy(iter(lambda: src.read(CHUNK), b""), dest, _Digest(unquote(relpath), size), sha256)


class HttpSource:
    def __init__(self, base: str, timeout_s: float) -> None:
        self.base = base
        self.timeout = httpx.Timeout(timeout_s)

    def read(self, relpath: str, limit: int = DOC_LIMIT) -> bytes:
        data = bytearray()
        with self._open(relpath) as response:
            for chunk in response.iter_bytes(CHUNK):
                data += chunk
                if len(data) > limit:
                    raise ArtifactError(f"registry {self.base}: {unquote(relpath)} is larger than {limit} bytes")
        return bytes(data)

    def fetch(self, relpath: str, dest: Path, size: int, sha256: str) -> None:
        with self._open(relpath) as response:
            _copy(response.iter_bytes(CHUNK), dest, _Digest(unquote(relpath), size), sha256)

    def _open(self, relpath: str) -> _Response:
        return _Response(f"{self.base}/{relpath}", self.timeout)


class _Response:
    """One GET as a context manager; transport errors and non-200 answers become one ArtifactError line."""

    def __init__(self, url: str, timeout: httpx.Timeout) -> None:
        self.url, self.timeout = url, timeout
        self.client: httpx.Client | None = None
        self.response: httpx.Response | None = None

    def __enter__(self) -> _Response:
        self.client = httpx.Client(timeout=self.timeout, follow_redirects=True)
        try:
            self.response = self.client.send(self.client.build_request("GET", self.url), stream=True)
        except httpx.HTTPError as exc:
            self.client.close()
            raise ArtifactError(f"registry: GET {self.url}: {type(exc).__name__}: {exc}") from None
        if self.response.status_code != 200:
            status = self.response.status_code
            self.__exit__()
            raise ArtifactError(f"registry: GET {self.url}: HTTP {status}")
        return self

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        assert self.response is not None
        try:
            yield from self.response.iter_bytes(size)
        except httpx.HTTPError as exc:  # the connection dropped mid-file: a truncated download
            raise ArtifactError(f"registry: GET {self.url}: {type(exc).__name__} while reading") from None

    def __exit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.close()
        if self.client is not None:
            self.client.close()


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free
