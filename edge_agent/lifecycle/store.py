"""Artifacts on the device: pulled versions in `{state_dir}/models/NAME/VERSION/`, and what became of each.

`NAME/state.json` records every version the device has seen (serving, previous, refused, rolled back,
retired) and why. Only the serving and the previous version stay on disk. A pull lands in a
temporary folder and is renamed into place only once its signature and every hash check, so a
half-downloaded or tampered version never sits where a model is loaded from. Writers (the daemon,
`edge-agent models pull`) hold the model's lock, so the two never interleave. What a crash leaves here is
found and settled by recovery.py (the record of a pull under way, the start-up check).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

import structlog
from pydantic import BaseModel, ValidationError

from edge_agent.config.models_file import ModelsFile
from edge_agent.contract import manifest as mf
from edge_agent.contract import signing
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle import crashpoints
from edge_agent.lifecycle.durable import rename_durably, write_atomic
from edge_agent.lifecycle.registry import Source, free_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = structlog.get_logger("edge_agent.lifecycle.store")
VersionStatus = Literal["serving", "previous", "refused", "rolled_back", "retired"]
INCOMING = ".incoming-"  # a pull's download folder: .incoming-{version}.{pid}
HEADROOM = 16 << 20  # free space left after a pull: the spool and logs must still write


class VersionRecord(BaseModel):
    state: VersionStatus
    why: str = ""
    at: str = ""
    path: str | None = None  # where it lives: the store, or models.yaml's seed folder
    probation: Literal["watching", "passed"] | None = None
    command: str | None = None  # the command whose pull of it the process did not survive
    crashes: int = 0  # starts after the agent stopped uncleanly while this version was on probation


class ModelRecord(BaseModel):
    serving: str | None = None
    previous: str | None = None
    versions: dict[str, VersionRecord] = {}


@dataclass(frozen=True)
class Current:
    """What serves a model now: its version and folder."""

    version: str
    path: Path


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "models"

    def folder(self, name: str) -> Path:
        return self.root / name

    def version_folder(self, name: str, version: str) -> Path:
        """Where a version lives: the only place a version becomes a path, so never `.`, `..` or `a/b`."""
        return self.folder(name) / mf.check_version(version)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """The model's lock, across processes (the daemon and the CLI)."""
        self.folder(name).mkdir(parents=True, exist_ok=True)
        with (self.folder(name) / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def state(self, name: str) -> ModelRecord:
        path = self.folder(name) / "state.json"
        if not path.is_file():
            return ModelRecord()
        try:
            return ModelRecord.model_validate_json(path.read_bytes())
        except ValidationError:
            raise ArtifactError(f"{path}: unreadable; move it away to start this model's history afresh") from None

    def save(self, name: str, state: ModelRecord) -> None:
        data = (state.model_dump_json(indent=2) + "\n").encode()
        write_atomic(self.folder(name) / "state.json", data, step="state_write")

    def serving(self, name: str) -> Current | None:
        return _current(self.state(name))

    def overlay(self, models: ModelsFile) -> ModelsFile:
        """models.yaml with each pulled model's `path` pointing at the version the store serves."""
        entries = []
        for entry in models.models:
            current = self.serving(entry.name)
            entries.append(entry.model_copy(update={"path": current.path}) if current else entry)
        return models.model_copy(update={"models": entries})

    def pull(
        self,
        name: str,
        source: Source,
        trusted: Sequence[Ed25519PublicKey],
        version: str,
        current: Current | None,
        allow_older: bool = False,
    ) -> Path:
        """Download `version` into the store and verify it; the folder it now lives in (not serving yet)."""
        if not trusted:
            raise ArtifactError(
                "pulling needs trusted_keys: a device that verifies nothing serves what any registry holds"
            )
        base = f"{quote(name)}/{quote(mf.check_version(version))}"
        sig = source.read(f"{base}/{mf.SIGNATURE}")
        raw = source.read(f"{base}/{mf.MANIFEST}")
        where = Path(f"{name}/{version}/{mf.MANIFEST}")
        signing.verify(raw, sig.decode("utf-8", "replace"), trusted, where)
        manifest = mf.parse(raw, where)
        _check_identity(manifest, name, version)
        _check_order(manifest.version, current, allow_older)  # checked again under the lock at promote time
        return self._download(source, base, manifest, raw, sig)  # no lock held across a download

    def _download(self, source: Source, base: str, manifest: mf.Manifest, raw: bytes, sig: bytes) -> Path:
        folder = self.folder(manifest.name)
        folder.mkdir(parents=True, exist_ok=True)
        need = sum(entry.size for entry in manifest.files) + HEADROOM
        free = free_bytes(folder)
        if free < need:
            raise ArtifactError(f"disk full: version {manifest.version} needs {need >> 20} MiB, {free >> 20} MiB free")
        tmp = folder / f"{INCOMING}{manifest.version}.{os.getpid()}"  # this process's own: pulls never share one
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            (tmp / mf.MANIFEST).write_bytes(raw)
            (tmp / mf.SIGNATURE).write_bytes(sig)
            for entry in manifest.files:
                dest = tmp / _safe(entry.path)
                dest.parent.mkdir(parents=True, exist_ok=True)
                source.fetch(f"{base}/{quote(entry.path)}", dest, entry.size, entry.sha256)
                crashpoints.reached("download")
            with self.lock(manifest.name):  # only the move into place holds the lock
                return self._place(manifest.name, manifest.version, tmp)
        except OSError as exc:
            raise ArtifactError(f"cannot store version {manifest.version}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _place(self, name: str, version: str, tmp: Path) -> Path:
        """A downloaded version moved into its folder (under the lock); the serving one is never replaced under
        the agent's feet (two pulls of one version: the second finds it serving)."""
        final = self.version_folder(name, version)
        if final.exists() and self.state(name).serving == version:
            raise ArtifactError(f"model {name}: version {version} already serves")
        shutil.rmtree(final, ignore_errors=True)
        rename_durably(tmp, final)
        crashpoints.reached("rename")
        return final

    def adopt(self, name: str, version: str, folder: Path) -> Path:
        """A copy of a local artifact folder (a candidate that won its trial) as this version's folder in
        the store, verified; returns it. Copied beside its target and renamed: never half there."""
        target = self.version_folder(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.folder(name)))
        try:
            for entry in [*mf.read(folder).files, None]:
                relpath = entry.path if entry else mf.MANIFEST
                (staging / relpath).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / relpath, staging / relpath)
            if (folder / mf.SIGNATURE).is_file():
                shutil.copy2(folder / mf.SIGNATURE, staging / mf.SIGNATURE)
            mf.load(staging)
            rename_durably(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def promote(self, name: str, version: str, path: Path, current: Current | None, allow_older: bool = False) -> None:
        """`version` serves now (on probation); what served before becomes the previous version. Every decision
        is taken here, under the lock, on what serves now: a pull that read `current` before another pull
        promoted a newer version cannot downgrade it (`current` only names the seed folder of a first pull)."""
        with self.lock(name):
            state = self.state(name)
            if state.serving is not None:
                current = _current(state)
            _check_order(version, current, allow_older)
            if current is not None and current.version != version:
                mark(state, current.version, "previous", "", str(current.path))
                if state.previous not in (None, current.version, version):
                    self._retire(name, state, state.previous)
                state.previous = current.version
            mark(state, version, "serving", "", str(path)).probation = "watching"
            state.serving = version
            self.save(name, state)

    def refuse(self, name: str, version: str, why: str) -> None:
        """A version that must not serve: recorded with why, its files removed."""
        with self.lock(name):
            state = self.state(name)
            self.refused(name, state, version, why)
            self.save(name, state)

    def refused(self, name: str, state: ModelRecord, version: str, why: str) -> VersionRecord:
        """`version` recorded `refused` in `state` (the caller holds the lock and saves), its folder removed
        unless it serves or is the previous version."""
        keep = version in (state.serving, state.previous)
        record = mark(state, version, "refused", why, None)
        if not keep:
            shutil.rmtree(self.version_folder(name, version), ignore_errors=True)
        return record

    def stored(self, name: str, record: VersionRecord) -> Path | None:
        """The record's folder when it lives in this store (not models.yaml's seed folder)."""
        path = Path(record.path) if record.path else None
        return path if path is not None and path.parent == self.folder(name) else None

    def rollback(self, name: str, why: str, to: str | None = None) -> Current:
        """Mark what serves `rolled_back` (why) and serve the previous version (or `to`, kept on disk)."""
        if to is not None:
            mf.check_version(to)
        with self.lock(name):
            state = self.state(name)
            target = to or state.previous
            record = state.versions.get(target or "")
            if target is None or record is None or record.path is None or not Path(record.path).is_dir():
                raise ArtifactError(f"model {name}: no previous version on this device to roll back to")
            if state.serving is not None and state.serving != target:
                mark(state, state.serving, "rolled_back", why, state.versions[state.serving].path)
            state.previous = state.serving if state.serving != target else state.previous
            state.serving = target
            mark(state, target, "serving", "", record.path).probation = "passed"
            self.save(name, state)
            return Current(target, Path(record.path))

    def passed(self, name: str, version: str) -> None:
        with self.lock(name):
            state = self.state(name)
            if state.serving == version:
                state.versions[version].probation = "passed"
                self.save(name, state)

    def _retire(self, name: str, state: ModelRecord, version: str | None) -> None:
        if version is None:
            return
        record = state.versions.get(version)
        folder = self.stored(name, record) if record is not None else None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        mark(state, version, "retired", "replaced twice since", None)


def mark(state: ModelRecord, version: str, status: VersionStatus, why: str, path: str | None) -> VersionRecord:
    record = state.versions.setdefault(version, VersionRecord(state=status))
    record.state, record.at = status, now()
    record.why = why
    if path is not None or status in ("refused", "retired"):
        record.path = path
    if status != "serving":
        record.probation = None
    return record


def _current(state: ModelRecord) -> Current | None:
    """What the record says serves, with its folder."""
    record = state.versions.get(state.serving or "")
    return Current(state.serving, Path(record.path)) if state.serving and record and record.path else None


def _safe(relpath: str) -> PurePosixPath:
    path = PurePosixPath(relpath)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ArtifactError(f"manifest lists {relpath!r}: a file path must stay inside the artifact folder")
    return path


def _check_identity(manifest: mf.Manifest, name: str, version: str) -> None:
    """A signed manifest for another name or version is a replay (an old signed artifact relabelled)."""
    if (manifest.name, manifest.version) != (name, version):
        raise ArtifactError(
            f"registry {name}/{version} holds a manifest for {manifest.name} {manifest.version}: refused (a replay?)"
        )


def _check_order(version: str, current: Current | None, allow_older: bool) -> None:
    if current is None or allow_older:
        return
    if mf.version_key(version) < mf.version_key(current.version):
        raise ArtifactError(
            f"version {version} is older than {current.version}, which serves (a downgrade): "
            "use `edge-agent models rollback` to go back on purpose"
        )


def history(store: Store, name: str) -> list[tuple[str, VersionRecord]]:
    """Versions newest first, as `models list` shows them."""
    versions = store.state(name).versions.items()
    return sorted(versions, key=lambda item: mf.version_key(item[0]), reverse=True)
