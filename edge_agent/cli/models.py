"""`edge-agent models list | pull | rollback` and `edge-agent status`: the device's side of a rollout.

A pull or rollback changes the store, then tells the running agent (SIGHUP to the pid in its state
folder), which swaps while serving; with no agent running, the next start serves the new version.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.config.settings import AgentSettings
from edge_agent.contract.manifest import read as read_manifest
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.rollout import PIDFILE, STATUS
from edge_agent.lifecycle.store import Current, Store, history
from edge_agent.lifecycle.versions import AlreadyServing, Prepared, install, resolve
from edge_agent.ops import readout
from edge_agent.ops.pidfile import running_agent

Common = Callable[[argparse.ArgumentParser], None]


def register(sub: Any, common: Common) -> None:
    common(sub.add_parser("list", help="every version on this device: serving, previous, refused, rolled back, why"))
    pull = sub.add_parser("pull", help="download, verify, warm up and serve a version from the registry")
    rollback = sub.add_parser("rollback", help="serve the previous version again (or --version, even older)")
    for parser in (pull, rollback):
        common(parser)
        parser.add_argument("name", help="model name from models.yaml")
        parser.add_argument("--version", help="default: the registry's latest (pull), the previous one (rollback)")


def cmd_list(args: argparse.Namespace, settings: AgentSettings, models: ModelsFile) -> int:
    store = Store(settings.state_dir)
    print(f"{'name':<20} {'version':<18} {'state':<12} {'since':<26} why")
    running = _read_status(settings).get("models", {})
    for entry in models.models:
        down = (running.get(entry.name) or {}).get("unavailable")  # the running agent's word: no version verifies
        if down:
            print(f"{entry.name:<20} {'-':<18} {'unavailable':<12} {'-':<26} {down}")
        rows = history(store, entry.name)
        if not rows and not down:
            print(f"{entry.name:<20} {_seed_version(entry):<18} {'serving':<12} {'-':<26} models.yaml path")
        for version, record in rows:
            why = record.why or (f"probation {record.probation}" if record.probation else "")
            print(f"{entry.name:<20} {version:<18} {record.state:<12} {record.at:<26} {why}")
    return 0


def _seed_version(entry: ModelEntry) -> str:
    try:
        return read_manifest(entry.artifact).version
    except ArtifactError:
        return "-"


def cmd_pull(args: argparse.Namespace, settings: AgentSettings, models: ModelsFile) -> int:
    entry = _entry(models, args.name)
    store = Store(settings.state_dir)
    now = _current(store, entry)
    version = resolve(settings, entry.name, args.version)
    try:
        prepared = _install(settings, store, entry.name, version, now)
    except AlreadyServing as exc:
        print(exc)
        return 0
    print(f"model {entry.name}: {prepared.version} installed ({prepared.samples} warm-up samples); {_tell(settings)}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: AgentSettings, models: ModelsFile) -> int:
    entry = _entry(models, args.name)
    store = Store(settings.state_dir)
    record = store.state(entry.name).versions.get(args.version or "")
    if args.version is not None and (record is None or record.path is None):  # not on disk: pull it, older or not
        prepared = _install(settings, store, entry.name, args.version, _current(store, entry), allow_older=True)
        store.passed(entry.name, prepared.version)  # chosen by hand: no probation
    else:
        store.rollback(entry.name, "rolled back by hand", args.version)
    print(f"model {entry.name}: {store.state(entry.name).serving} serves; {_tell(settings)}")
    return 0


def _install(
    settings: AgentSettings, store: Store, name: str, version: str, now: Current | None, allow_older: bool = False
) -> Prepared:
    """Pull, verify and warm up `version` in this process, then make it what the store serves (the
    agent loads it again on SIGHUP; this copy is closed)."""
    prepared = install(settings, store, name, version, now, allow_older)
    prepared.runtime.close()
    return prepared


def _entry(models: ModelsFile, name: str) -> ModelEntry:
    entry = models.entry(name)
    if entry is None:
        raise ArtifactError(f"no model named {name!r} in models.yaml (a device pulls only what it is set to serve)")
    return entry


def _current(store: Store, entry: ModelEntry) -> Current | None:
    """What serves now: the store's version, else models.yaml's seed artifact when it has one."""
    pulled = store.serving(entry.name)
    if pulled is not None or entry.path is None:
        return pulled
    try:
        return Current(read_manifest(entry.path).version, entry.path)
    except ArtifactError:
        return None


def _tell(settings: AgentSettings) -> str:
    """SIGHUP to the running agent, proven by the lock it holds on its pid file (never a stale pid)."""
    pid = running_agent(settings.state_dir / PIDFILE)
    if pid is None:
        return "no agent runs: its next start serves it"
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return f"could not tell the agent (pid {pid}: {exc.strerror}): restart it to serve the change"
    return f"the agent (pid {pid}) swaps it in"


def status(args: argparse.Namespace, settings: AgentSettings) -> int:
    """Print the agent's status file; with --wait-healthy, wait until MODEL serves VERSION, proven."""
    if args.wait_healthy is None:
        return _print_status(settings, args.json)
    name, version = args.wait_healthy
    deadline = time.monotonic() + args.timeout
    store = Store(settings.state_dir)
    while True:
        verdict = _health(store, _read_status(settings), name, version)
        if verdict is not None:
            healthy, line = verdict
            print(line, file=sys.stdout if healthy else sys.stderr)
            return 0 if healthy else 1
        if time.monotonic() > deadline:
            print(f"model {name}: {version} not healthy within {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(0.2)  # a CLI polling a file: nothing to wake it


def _print_status(settings: AgentSettings, as_json: bool) -> int:
    """The status file, then the running agent's metrics in a few lines (or both as one JSON object).
    An agent that cannot be reached is said in one line on stderr; the exit stays 0, as before metrics."""
    status, summary, problem = _read_status(settings), None, None
    if not settings.metrics.enabled:
        problem = "off (metrics.enabled is false)"
    else:
        try:
            summary = readout.fetch(settings)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            problem = f"no answer from {readout.url(settings)} ({type(exc).__name__}): is the agent running?"
    if as_json:
        print(json.dumps({"status": status, "metrics": summary if summary is not None else {"error": problem}}))
        return 0
    print(json.dumps(status, indent=2))
    if summary is None:
        print(f"metrics: {problem}", file=sys.stderr)
        return 0
    print(f"metrics ({readout.url(settings)}/metrics):")
    for line in readout.lines(summary):
        print(f"  {line}")
    return 0


def _read_status(settings: AgentSettings) -> dict[str, Any]:
    try:
        data = json.loads((settings.state_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    alive = running_agent(settings.state_dir / PIDFILE) == data.get("pid")
    return data if alive and isinstance(data, dict) else {}


def _health(store: Store, status: dict[str, Any], name: str, version: str) -> tuple[bool, str] | None:
    """(healthy, line) once it is known, None while probation runs (or the agent is not up)."""
    record = store.state(name).versions.get(version)
    if record is not None and record.state in ("refused", "rolled_back"):
        return False, f"model {name}: {version} {record.state.replace('_', ' ')}: {record.why}"
    model = status.get("models", {}).get(name)
    if model is not None and model.get("version") == version and model.get("probation") in ("passed", None):
        return True, f"model {name}: {version} serves, probation passed"
    return None


COMMANDS: dict[str, Callable[[argparse.Namespace, AgentSettings, ModelsFile], int]] = {
    "list": cmd_list,
    "pull": cmd_pull,
    "rollback": cmd_rollback,
}
