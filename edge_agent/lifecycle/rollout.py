"""New versions into service: pull, verify, warm up, swap while serving, watch on probation, roll back.

`versions.prepare` is the part the CLI and the daemon share. The daemon's `Rollout` does the rest on
one task, one change at a time: a swap never races another swap, a rollback, a poll or a candidate's
trial (`candidates.py`). It acts on SIGHUP (`edge-agent models pull` and `rollback` signal it after
changing the store), on MQTT commands, on its polling interval and on probation verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from edge_agent.config.settings import AgentSettings
from edge_agent.errors import ArtifactError, ConfigError
from edge_agent.lifecycle.candidates import Candidates
from edge_agent.lifecycle.durable import write_atomic
from edge_agent.lifecycle.probation import PASSED, Probation
from edge_agent.lifecycle.store import Current, ModelRecord, Store
from edge_agent.lifecycle.versions import AlreadyServing, Prepared, Skipped, current, install, load_checked, resolve
from edge_agent.runtimes.pool import Loader, ModelPool, default_loader

log = structlog.get_logger("edge_agent.lifecycle.rollout")
STATUS, PIDFILE = "status.json", "agent.pid"
NOTHING = "nothing changed"


@dataclass
class _Order:
    work: Callable[[], Awaitable[str]]
    done: asyncio.Future[str]


class _Watch:
    """Probation wired to the rollout: any answer that might settle the verdict wakes it."""

    def __init__(self, probation: Probation, wake: asyncio.Event) -> None:
        self.probation, self.wake = probation, wake

    def answered(self, ok: bool, latency_ms: float) -> None:
        self.probation.answered(ok, latency_ms)
        self.wake.set()

    def compared_with_cloud(self, agreed: bool) -> None:
        self.probation.compared_with_cloud(agreed)
        self.wake.set()


def _discard(work: asyncio.Future[Prepared]) -> None:
    """A cancelled pull's end: what it loaded is closed, its refusal read (it was answered already)."""
    if not work.cancelled() and work.exception() is None:
        work.result().runtime.close()


def _logged(done: asyncio.Future[str]) -> None:
    if done.exception() is not None:
        log.warning("reload_failed", error=str(done.exception()))
    else:
        log.info("reloaded", result=done.result())


class Rollout:
    def __init__(
        self,
        settings: AgentSettings,
        pool: ModelPool,
        store: Store,
        on_change: Callable[[], None] = lambda: None,
        loader: Loader = default_loader,
    ) -> None:
        self.settings, self.pool, self.store, self.loader = settings, pool, store, loader
        self.on_change = on_change
        self.orders: deque[_Order] = deque()
        self._pulling: dict[str, tuple[threading.Event, asyncio.Event]] = {}  # model -> how to cancel its pull
        self.wake = asyncio.Event()
        self.watching: dict[str, Probation] = {}
        self.events: dict[str, str] = {}  # model -> the last thing that happened to it, for status
        self.candidates = Candidates(
            settings, pool, store, loader, self.events, self._changed, self._unwatch, self.wake.set
        )
        self._next_poll = time.monotonic()
        self.status_due = False  # the status file is behind what the trials decided

    def reload(self) -> None:
        """SIGHUP: the store changed under us (a CLI pull or rollback)."""
        self._order(self._reconcile_all).add_done_callback(_logged)

    async def pull(self, name: str, version: str | None = None, command: str | None = None) -> str:
        """The outcome line of pulling `name` (MQTT command `command`); ArtifactError when refused."""
        return await self._order(lambda: self._pull(name, version, explicit=True, command=command))

    async def rollback(self, name: str, version: str | None = None, command: str | None = None) -> str:
        """Ahead of any order waiting, and a pull of `name` under way is cancelled: going back is what an
        operator does when something is wrong, so it must not wait for a download to end."""
        for cancel in self._pulling.get(name, ()):  # the download's thread, and the rollout's wait on it
            cancel.set()
        return await self._order(lambda: self._rollback(name, "rolled back by hand", version), first=True)

    def _order(self, work: Callable[[], Awaitable[str]], first: bool = False) -> asyncio.Future[str]:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        (self.orders.appendleft if first else self.orders.append)(_Order(work, done))
        self.wake.set()
        return done

    async def run(self) -> None:
        """Forever, one change at a time: orders, probation verdicts, the polling interval."""
        self._resume_probation()
        caught_up = await self._catch_up()
        if await self.candidates.start() or caught_up:
            self.on_change()  # the status says what changed, or that a trial runs (and, as it goes, its counts)
        await self.write_status()
        try:
            while True:
                await self._turn()
        finally:  # stopping: a pull's thread ends at its next read instead of holding up the exit
            for cancelled, _ in self._pulling.values():
                cancelled.set()

    async def _turn(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):  # 3.10: not the builtin TimeoutError
            await asyncio.wait_for(self.wake.wait(), timeout=self._tick())
        self.wake.clear()
        while self.orders:
            await self._carry_out(self.orders.popleft())
        await self._judge()
        await self.candidates.judge()
        await self._maybe_poll()
        if self.status_due:
            self.status_due = False
            await self.write_status()

    def _tick(self) -> float:
        waits = [5.0]
        if self.settings.registry is not None and self.settings.registry.poll_minutes > 0:
            waits.append(max(0.0, self._next_poll - time.monotonic()))
        return min(waits)

    async def _carry_out(self, order: _Order) -> None:
        outcome: str | Exception
        try:
            outcome = await order.work()
        except (ArtifactError, AlreadyServing, Skipped, ConfigError) as exc:
            outcome = exc
        except Exception as exc:  # a bug must not kill the rollout task, nor leave the caller waiting
            log.exception("rollout_failed")
            outcome = ArtifactError(f"the agent failed: {type(exc).__name__}: {exc}")
        if not order.done.done():  # the caller may have gone (a cancelled command)
            if isinstance(outcome, Exception):
                order.done.set_exception(outcome)
            else:
                order.done.set_result(outcome)
        await self.write_status()
        self.on_change()

    async def _pull(self, name: str, version: str | None, explicit: bool, command: str | None = None) -> str:
        if self.pool.get(name) is None and name not in self.pool.down:
            raise ArtifactError(f"model {name}: not served here (models.yaml names the models a device serves)")
        version = await asyncio.to_thread(resolve, self.settings, name, version)
        record = self.store.state(name).versions.get(version)
        if not explicit and record is not None and record.state in ("refused", "rolled_back", "retired"):
            raise Skipped(f"model {name}: {version} was {record.state} ({record.why})")
        if record is not None and record.state == "refused" and command is not None and record.command == command:
            raise ArtifactError(
                f"model {name}: {version} refused: this command's pull stopped the agent once: {record.why}"
            )
        now = current(self.pool, self.store, name)
        prepared = await self._install(name, version, now, command)
        if self.pool.get(name) is None:
            return self._revive(name, prepared)
        return self._swap(name, prepared, probation=True)

    async def _install(self, name: str, version: str, now: Current | None, command: str | None) -> Prepared:
        """`install` on a thread, given up on when a rollback cancels it: the thread stops at its next read
        (or closes what it loaded), and the rollout goes on at once."""
        cancelled, gave_up = threading.Event(), asyncio.Event()
        self._pulling[name] = (cancelled, gave_up)
        log.info("pull_started", model=name, version=version, command=command)
        args = (self.settings, self.store, name, version, now, False, self.loader, command, cancelled)
        work = asyncio.ensure_future(asyncio.to_thread(install, *args))
        stop = asyncio.ensure_future(gave_up.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pulling.pop(name, None)
            stop.cancel()
        if not work.done() or cancelled.is_set():
            work.add_done_callback(_discard)
            raise ArtifactError(f"model {name}: the pull of {version} was cancelled (a rollback came first)")
        return work.result()

    def _revive(self, name: str, prepared: Prepared) -> str:
        """A model that was down serves the version just pulled (on probation, as after any swap)."""
        entry = self.pool.down[name].entry.model_copy(update={"path": prepared.path})
        self.pool.add(entry, prepared.runtime)
        self._watch(name)
        self.events[name] = f"{prepared.version} serves (no version served before)"
        log.info("model_revived", model=name, version=prepared.version)
        return f"model {name}: {prepared.version} serves (was unavailable)"

    async def _catch_up(self) -> bool:
        """A CLI pull while the agent started (its SIGHUP was ignored until now) served; True when it changed
        anything."""
        try:
            return await self._reconcile_all() != NOTHING
        except (ArtifactError, ConfigError) as exc:
            log.warning("reload_failed", error=str(exc))
            return True

    async def _reconcile_all(self) -> str:
        done = [await self._reconcile(name) for name in [*self.pool.served, *self.pool.down]]
        return "; ".join(line for line in done if line) or NOTHING

    async def _reconcile(self, name: str) -> str:
        """Serve what the store says serves `name`, when that is not what is loaded."""
        wanted = self.store.serving(name)
        served = self.pool.get(name)
        if wanted is None or (served is not None and served.manifest.version == wanted.version):
            return ""
        try:
            prepared = await asyncio.to_thread(load_checked, self.settings, wanted.path, self.loader)
        except ArtifactError as exc:
            await asyncio.to_thread(self.store.refuse, name, wanted.version, str(exc))
            await asyncio.to_thread(self.store.rollback, name, f"could not be loaded by the agent: {exc}")
            self.events[name] = f"{wanted.version} refused: {exc}"
            return self.events[name]
        if served is None:
            return self._revive(name, prepared)
        record = self.store.state(name).versions[wanted.version]
        return self._swap(name, prepared, probation=record.probation == "watching")

    def _swap(self, name: str, prepared: Prepared, probation: bool) -> str:
        served = self.pool.served[name]
        before = served.manifest.version
        self.candidates.serving_changed(name)
        served.swap(served.entry.model_copy(update={"path": prepared.path}), prepared.runtime)
        self.watching.pop(name, None)
        if probation:
            self._watch(name)
        self.events[name] = f"{before} -> {prepared.version} ({prepared.samples} warm-up samples)"
        log.info("model_swapped", model=name, before=before, after=prepared.version, probation=probation)
        return f"model {name}: {prepared.version} serves (was {before})"

    def _watch(self, name: str) -> None:
        probation = Probation(self.settings.probation)
        self.watching[name] = probation
        self.pool.served[name].watch = _Watch(probation, self.wake)

    def _resume_probation(self) -> None:
        """After a restart, a version still on probation is watched again from the start."""
        for name, served in self.pool.served.items():
            record = self.store.state(name).versions.get(served.manifest.version)
            if record is not None and record.probation == "watching" and record.state == "serving":
                self._watch(name)

    async def _judge(self) -> None:
        for name, probation in list(self.watching.items()):
            verdict = probation.verdict()
            if verdict is None:
                continue
            self.watching.pop(name)
            self.pool.served[name].watch = None
            version = self.pool.served[name].manifest.version
            if verdict == PASSED:
                await asyncio.to_thread(self.store.passed, name, version)
                self.events[name] = f"{version} passed probation ({probation.answers} answers)"
                log.info("probation_passed", model=name, version=version, **probation.snapshot())
            else:
                log.warning("probation_failed", model=name, version=version, why=verdict)
                await self._rollback(name, f"probation: {verdict}")
            await self.write_status()
            self.on_change()

    async def _rollback(self, name: str, why: str, to: str | None = None) -> str:
        if self.pool.get(name) is None:
            raise ArtifactError(f"model {name}: not served here")
        target = await asyncio.to_thread(self.store.rollback, name, why, to)  # its lock: never on the loop
        prepared = await asyncio.to_thread(load_checked, self.settings, target.path, self.loader)
        self._swap(name, prepared, probation=False)
        self.events[name] = f"rolled back to {target.version}: {why}"
        log.warning("model_rolled_back", model=name, to=target.version, why=why)
        return f"model {name}: {target.version} serves again ({why})"

    async def _maybe_poll(self) -> None:
        registry = self.settings.registry
        if registry is None or registry.poll_minutes <= 0 or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + registry.poll_minutes * 60
        for name in [*self.pool.served, *self.pool.down]:
            try:
                log.info("poll_pulled", line=await self._pull(name, None, explicit=False))
            except (AlreadyServing, Skipped):
                continue
            except ArtifactError as exc:  # a poll's refusal is logged and recorded; serving goes on
                log.warning("poll_refused", model=name, why=str(exc))
            except Exception:  # whatever a registry sends, the next poll and every command still run
                log.exception("poll_failed", model=name)
            await self.write_status()
            self.on_change()

    def _unwatch(self, name: str) -> None:
        """A candidate serves now, having passed its trial: no probation watches the version before it."""
        self.watching.pop(name, None)

    def _changed(self) -> None:
        """A trial decided (or counted enough): the status says so now, the status file at the next turn."""
        self.status_due = True
        self.wake.set()
        self.on_change()

    def snapshot(self) -> dict[str, Any]:
        """Per model: what serves, the previous version, probation, the last event."""
        out: dict[str, Any] = {}
        for name, served in self.pool.served.items():
            try:
                state = self.store.state(name)
            except ArtifactError as exc:  # a damaged state.json: the model still serves, and the status says why
                state = ModelRecord()
                self.events[name] = str(exc)
            probation = self.watching.get(name)
            record = state.versions.get(served.manifest.version)
            out[name] = {
                "version": served.manifest.version,
                "previous": state.previous,
                "probation": probation.snapshot() if probation else (record.probation if record else None),
                "last": self.events.get(name),
            }
            trial = self.candidates.snapshot(name)
            if trial is not None:
                out[name]["candidate"] = trial
        for name, down in self.pool.down.items():
            out[name] = {"version": None, "unavailable": down.why, "last": self.events.get(name)}
        return out

    async def write_status(self) -> None:
        """`{state_dir}/status.json`, what `edge-agent status --wait-healthy` reads on the device: made on the
        loop, written (and fsynced) in a thread."""
        data = json.dumps({"pid": os.getpid(), "models": self.snapshot()}, indent=2) + "\n"
        try:
            await asyncio.to_thread(write_atomic, self.settings.state_dir / STATUS, data.encode())
        except OSError as exc:  # a full disk must not stop serving; the MQTT status still tells
            log.warning("status_file_failed", error=str(exc))
