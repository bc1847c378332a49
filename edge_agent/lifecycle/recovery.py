"""What a crash leaves in the store, found and settled: the record of a pull under way, and the start-up check.

A pull is on record while it runs (`models/NAME/.pulling.PID`, locked by its process): a marker found unlocked
means the process died during the pull, and its version is refused, naming the command that asked for it. At
start-up each model serves the newest stored version that verifies; what a killed pull or state write left is
removed; a version on probation when the agent last stopped uncleanly counts a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import structlog

from edge_agent.config.models_file import ModelsFile
from edge_agent.contract import manifest as mf
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.durable import write_atomic
from edge_agent.lifecycle.store import INCOMING, ModelRecord, Store, mark, now

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = structlog.get_logger("edge_agent.lifecycle.recovery")
PULLING = ".pulling."  # a pull under way: .pulling.{pid}, held locked by its process while it runs
CRASH_LIMIT = 2  # unclean stops on probation that refuse a version: one may be a power cut, two are a pattern


class Recovered(NamedTuple):
    models: ModelsFile  # each model's `path`: the version to serve
    verified: dict[Path, mf.Manifest]  # what was checked on the way (start-up hashes each file once)


@contextmanager
def pulling(store: Store, name: str, version: str, command: str | None) -> Iterator[None]:
    """A pull of `version` under way, on disk and locked while it runs: if the process dies during it (out
    of memory on a poisonous artifact, a crash), the next look at the store records the version `refused`
    and the command that asked for it, so its redelivery is refused instead of crashing the agent again."""
    marker = store.folder(name) / f"{PULLING}{os.getpid()}"
    with store.lock(name):
        _crashed(store, name)
        write_atomic(marker, json.dumps({"version": version, "command": command, "at": now()}).encode())
        held = marker.open("rb")
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)
        held.close()


def recover(store: Store, models: ModelsFile, trusted: Sequence[Ed25519PublicKey], unclean: bool = False) -> Recovered:
    """At start-up: each model's `path` set to the newest version that verifies, in the order the operator
    chose it: what the store says serves, the previous version, models.yaml's own folder. A stored version
    that fails (a power cut mid-write, a disk error, a hand edit) is recorded `refused` with why; a
    state.json that cannot be read is moved aside (`state.json.damaged`) and the model starts afresh.
    `unclean`: the last run did not stop cleanly; a version on probation then counts a crash, and at
    CRASH_LIMIT it is refused (one that kills the agent after its promote must not do so at every start)."""
    entries, verified = [], dict[Path, mf.Manifest]()
    for entry in models.models:
        path = _recover(store, entry.name, trusted, unclean, verified)
        entries.append(entry.model_copy(update={"path": path}) if path else entry)
    return Recovered(models.model_copy(update={"models": entries}), verified)


def sweep(store: Store, name: str) -> None:
    """What a killed pull or state write left behind (its process is gone), removed; the caller holds the lock."""
    for leftover in store.folder(name).glob(".*"):
        pid = leftover.name.rsplit(".", 1)[-1]
        gone = pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid)))  # ours: a pid before a reboot
        if leftover.name.startswith((INCOMING, ".state.json.")) and gone:
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _recover(
    store: Store,
    name: str,
    trusted: Sequence[Ed25519PublicKey],
    unclean: bool,
    verified: dict[Path, mf.Manifest],
) -> Path | None:
    folder = store.folder(name)
    if not folder.is_dir():
        return None
    with store.lock(name):
        sweep(store, name)
        running = _crashed(store, name)
        if not (folder / "state.json").is_file():
            return None
        try:
            state = store.state(name)
        except ArtifactError as exc:
            log.error("store_state_damaged", model=name, why=str(exc))
            os.replace(folder / "state.json", folder / "state.json.damaged")
            return None
        if not running:  # a pull under way may have placed its folder and not promoted it yet
            _orphans(store, name, state)
        changed = unclean and _count_crash(store, name, state)
        return _first_that_verifies(store, name, state, trusted, verified, changed)


def _crashed(store: Store, name: str) -> bool:
    """Pulls whose process died during them: each version recorded `refused`, naming the crash (the caller
    holds the model's lock). A marker still locked belongs to a pull that runs: True when there is one."""
    running = False
    for marker in store.folder(name).glob(f"{PULLING}*"):
        with marker.open("rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                running = True
                continue
            pull = _pull_record(fh.read())
        if pull is not None:
            _record_crash(store, name, *pull)
        marker.unlink(missing_ok=True)
    return running


def _record_crash(store: Store, name: str, version: str, command: str | None, at: str) -> None:
    state = store.state(name)
    if state.serving == version:  # promoted before the end: the pull did finish
        return
    why = f"the process pulling it stopped at {at} (a crash, out of memory, a power cut?): pull it again to retry"
    log.error("pull_crashed", model=name, version=version, command=command, at=at)
    store.refused(name, state, version, why).command = command
    store.save(name, state)


def _count_crash(store: Store, name: str, state: ModelRecord) -> bool:
    """The agent stopped uncleanly while the serving version was on probation: one more crash for it, and
    at CRASH_LIMIT it is refused (the previous version serves). True when the record changed."""
    record = state.versions.get(state.serving or "")
    if record is None or record.probation != "watching":
        return False
    record.crashes += 1
    if record.crashes >= CRASH_LIMIT:
        why = f"the agent stopped uncleanly {record.crashes} times while it was on probation (a crash loop?)"
        log.error("version_crash_loop", model=name, version=state.serving, crashes=record.crashes)
        folder = store.stored(name, record)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        mark(state, state.serving or "", "refused", why, None)
    return True


def _first_that_verifies(
    store: Store,
    name: str,
    state: ModelRecord,
    trusted: Sequence[Ed25519PublicKey],
    verified: dict[Path, mf.Manifest],
    changed: bool,
) -> Path | None:
    """The serving version's folder, else the previous one's (which then serves); state.json is written
    only when that changes it (a flash card is not worn by every start)."""
    for version in [v for v in (state.serving, state.previous) if v]:
        record = state.versions.get(version)
        if record is not None and record.state == "refused":  # refused just now (a crash loop)
            continue
        try:
            if record is None or record.path is None:
                raise ArtifactError(f"version {version}: no folder recorded")
            verified[Path(record.path)] = mf.load(Path(record.path), trusted)
        except ArtifactError as exc:
            log.error("stored_version_refused", model=name, version=version, why=str(exc))
            mark(state, version, "refused", f"failed verification at start-up: {exc}", None)
            changed = True
            continue
        if state.serving != version:  # the serving one failed: the previous serves, on probation's terms
            state.previous, state.serving = None, version
            mark(state, version, "serving", "", record.path)
        if changed:
            store.save(name, state)
        return Path(record.path)
    if state.serving or state.previous:  # nothing stored verifies: models.yaml's folder serves
        state.serving = state.previous = None
        store.save(name, state)
    return None


def _orphans(store: Store, name: str, state: ModelRecord) -> None:
    """Version folders no record points at (placed by a pull that stopped before its promote), removed."""
    kept = {folder for record in state.versions.values() if (folder := store.stored(name, record)) is not None}
    for folder in store.folder(name).iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and folder not in kept:
            log.warning("store_orphan_removed", model=name, folder=folder.name)
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def _pull_record(raw: bytes) -> tuple[str, str | None, str] | None:
    """(version, command, at) of a pull marker; None for one a power cut left empty or torn."""
    try:
        data = json.loads(raw)
        version = mf.check_version(data["version"])
    except (ValueError, KeyError, TypeError, ArtifactError):
        return None
    command = data.get("command")
    return version, command if isinstance(command, str) else None, str(data.get("at", "?"))
