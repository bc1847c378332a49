"""A version made ready to serve: resolved against the registry, pulled and verified, loaded, warmed up.

`prepare` is what the CLI and the daemon share (it blocks: run it off the loop); the daemon's `Rollout`
and its `Trials` swap what it returns into service.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.settings import AgentSettings
from edge_agent.contract import manifest as mf
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle import crashpoints, recovery
from edge_agent.lifecycle.registry import Pace, Source, latest, open_source
from edge_agent.lifecycle.store import Current, Store
from edge_agent.runtimes import Runtime
from edge_agent.runtimes.pool import Loader, ModelPool, default_loader
from edge_agent.runtimes.warmup import warm_up


class AlreadyServing(Exception):
    """Nothing to do: the version asked for is the one serving."""


class Skipped(Exception):
    """A poll found a version this device already refused or rolled back."""


@dataclass
class Prepared:
    version: str
    path: Path
    runtime: Runtime
    samples: int


def resolve(settings: AgentSettings, name: str, version: str | None) -> str:
    """The version to pull: the one asked for, else the registry's latest."""
    if settings.registry is None:
        raise ArtifactError("no registry is configured (settings: registry.url)")
    if version is not None:
        return mf.check_version(version)
    return latest(source_of(settings), name)


def source_of(settings: AgentSettings, cancelled: threading.Event | None = None) -> Source:
    """The registry the settings name, with their bounds on every read and download (and a cancel)."""
    assert settings.registry is not None
    r = settings.registry
    return open_source(
        r.url, r.timeout_s, Pace(r.deadline_s, r.min_bytes_per_s, cancelled=cancelled or threading.Event())
    )


def install(
    settings: AgentSettings,
    store: Store,
    name: str,
    version: str,
    current: Current | None,
    allow_older: bool = False,
    loader: Loader = default_loader,
    command: str | None = None,
    cancelled: threading.Event | None = None,
) -> Prepared:
    """`prepare`, then `version` is what the store serves (on probation). The pull is on record while it runs
    (`Store.pulling`): a version whose pull the process does not survive is refused after."""
    with recovery.pulling(store, name, version, command):
        prepared = prepare(settings, store, name, version, current, allow_older, loader, cancelled)
        try:
            store.promote(name, prepared.version, prepared.path, current, allow_older)
        except BaseException:
            prepared.runtime.close()
            raise
        crashpoints.reached("promote")
    return prepared


def prepare(
    settings: AgentSettings,
    store: Store,
    name: str,
    version: str,
    current: Current | None,
    allow_older: bool = False,
    loader: Loader = default_loader,
    cancelled: threading.Event | None = None,
) -> Prepared:
    """Download and verify `version`, load it and run its warm-up. A refusal is recorded (except a
    downgrade, which is only a wrong request) and raised as one ArtifactError line."""
    assert settings.registry is not None
    if current is not None and current.version == version:
        raise AlreadyServing(f"model {name}: version {version} already serves")
    cancelled = cancelled or threading.Event()
    path = store.pull(name, source_of(settings, cancelled), settings.trusted(), version, current, allow_older)
    try:
        prepared = load_checked(settings, path, loader)
    except ArtifactError as exc:
        store.refuse(name, version, str(exc))
        raise
    if cancelled.is_set():  # a rollback came while it loaded: it never serves
        prepared.runtime.close()
        raise ArtifactError(f"model {name}: the pull of {version} was cancelled (a rollback came first)")
    return prepared


def load_checked(settings: AgentSettings, path: Path, loader: Loader = default_loader) -> Prepared:
    """An artifact folder loaded, verified and warmed up; ArtifactError otherwise (nothing left open)."""
    crashpoints.reached("verify")
    manifest = mf.load(path, settings.trusted())
    runtime = loader(path, manifest, settings.threads)
    try:
        crashpoints.reached("warm_up")
        samples = warm_up(runtime)
    except ArtifactError:
        runtime.close()
        raise
    return Prepared(manifest.version, path, runtime, samples)


def current(pool: ModelPool, store: Store, name: str) -> Current | None:
    """What serves `name`: the daemon's loaded version when it runs, else what the store says."""
    served = pool.get(name)
    if served is not None:
        return Current(served.manifest.version, served.entry.artifact)
    return store.serving(name)
