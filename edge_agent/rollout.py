"""New versions into service: pull, verify, warm up, swap while serving, watch on probation, roll back.

`prepare` is the part the CLI and the daemon share (it blocks: run it off the loop). The daemon's
`Rollout` does the rest on one task, one change at a time: a swap never races another swap, a
rollback or a poll. It acts on SIGHUP (`edge-agent models pull` and `rollback` signal it after
changing the store), on MQTT commands, on its polling interval and on probation verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edge_agent import manifest as mf
from edge_agent.config import AgentSettings
from edge_agent.errors import ArtifactError, ConfigError
from edge_agent.models_file import Candidate
from edge_agent.probation import PASSED, Probation
from edge_agent.registry import latest, open_source
from edge_agent.runtimes import Runtime
from edge_agent.runtimes.pool import Loader, ModelPool, Served, default_loader
from edge_agent.runtimes.warmup import warm_up
from edge_agent.shadow import Contender
from edge_agent.store import Current, Store
from edge_agent.trial import Trial, Verdict, p99

log = structlog.get_logger("edge_agent.rollout")
STATUS, PIDFILE = "status.json", "agent.pid"
REPORT_EVERY = 100  # shadowed requests between status updates while a trial runs
ENDED = ("refused", "rolled_back", "retired")  # a candidate in one of these states is not tried again


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
        return version
    return latest(open_source(settings.registry.url, settings.registry.timeout_s), name)


def prepare(
    settings: AgentSettings,
    store: Store,
    name: str,
    version: str,
    current: Current | None,
    allow_older: bool = False,
    loader: Loader = default_loader,
) -> Prepared:
    """Download and verify `version`, load it and run its warm-up. A refusal is recorded (except a
    downgrade, which is only a wrong request) and raised as one ArtifactError line."""
    assert settings.registry is not None
    if current is not None and current.version == version:
        raise AlreadyServing(f"model {name}: version {version} already serves")
    source = open_source(settings.registry.url, settings.registry.timeout_s)
    path = store.pull(name, source, settings.trusted(), version, current, allow_older)
    try:
        return load_checked(settings, path, loader)
    except ArtifactError as exc:
        store.refuse(name, version, str(exc))
        raise


def load_checked(settings: AgentSettings, path: Path, loader: Loader = default_loader) -> Prepared:
    """An artifact folder loaded, verified and warmed up; ArtifactError otherwise (nothing left open)."""
    manifest = mf.load(path, settings.trusted())
    runtime = loader(path, manifest, settings.threads)
    try:
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
        contenders: dict[str, Contender] | None = None,
    ) -> None:
        self.settings, self.pool, self.store, self.loader = settings, pool, store, loader
        self.on_change = on_change
        self.orders: asyncio.Queue[_Order] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.watching: dict[str, Probation] = {}
        self.events: dict[str, str] = {}  # model -> the last thing that happened to it, for status
        self.contenders = contenders if contenders is not None else {}  # shared with the escalator
        self.decided: dict[str, dict[str, Any]] = {}  # model -> its last trial's snapshot, once decided
        self._reported: dict[str, int] = {}
        self._next_poll = time.monotonic()

    def reload(self) -> None:
        """SIGHUP: the store changed under us (a CLI pull or rollback)."""
        self._order(self._reconcile_all).add_done_callback(_logged)

    async def pull(self, name: str, version: str | None = None) -> str:
        """The outcome line of pulling `name` (MQTT command); ArtifactError when refused."""
        return await self._order(lambda: self._pull(name, version, explicit=True))

    async def rollback(self, name: str, version: str | None = None) -> str:
        return await self._order(lambda: self._rollback(name, "rolled back by hand", version))

    def _order(self, work: Callable[[], Awaitable[str]]) -> asyncio.Future[str]:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.orders.put_nowait(_Order(work, done))
        self.wake.set()
        return done

    async def run(self) -> None:
        """Forever, one change at a time: orders, probation verdicts, the polling interval."""
        self._resume_probation()
        if await self._start_trials():
            self.on_change()  # the status says a trial runs (and, as it goes, its counts)
        self.write_status()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # 3.10: not the builtin TimeoutError
                await asyncio.wait_for(self.wake.wait(), timeout=self._tick())
            self.wake.clear()
            while not self.orders.empty():
                await self._carry_out(self.orders.get_nowait())
            await self._judge()
            await self._judge_trials()
            await self._maybe_poll()

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
        self.write_status()
        self.on_change()

    async def _pull(self, name: str, version: str | None, explicit: bool) -> str:
        if self.pool.get(name) is None:
            raise ArtifactError(f"model {name}: not served here (models.yaml names the models a device serves)")
        version = await asyncio.to_thread(resolve, self.settings, name, version)
        record = self.store.state(name).versions.get(version)
        if not explicit and record is not None and record.state in ("refused", "rolled_back", "retired"):
            raise Skipped(f"model {name}: {version} was {record.state} ({record.why})")
        now = current(self.pool, self.store, name)
        prepared = await asyncio.to_thread(prepare, self.settings, self.store, name, version, now, False, self.loader)
        self.store.promote(name, prepared.version, prepared.path, now)
        return self._swap(name, prepared, probation=True)

    async def _reconcile_all(self) -> str:
        done = [await self._reconcile(name) for name in list(self.pool.served)]
        return "; ".join(line for line in done if line) or "nothing changed"

    async def _reconcile(self, name: str) -> str:
        """Serve what the store says serves `name`, when that is not what is loaded."""
        wanted = self.store.serving(name)
        served = self.pool.get(name)
        if wanted is None or served is None or served.manifest.version == wanted.version:
            return ""
        try:
            prepared = await asyncio.to_thread(load_checked, self.settings, wanted.path, self.loader)
        except ArtifactError as exc:
            self.store.refuse(name, wanted.version, str(exc))
            self.store.rollback(name, f"could not be loaded by the agent: {exc}")
            self.events[name] = f"{wanted.version} refused: {exc}"
            return self.events[name]
        record = self.store.state(name).versions[wanted.version]
        return self._swap(name, prepared, probation=record.probation == "watching")

    def _swap(self, name: str, prepared: Prepared, probation: bool) -> str:
        served = self.pool.served[name]
        before = served.manifest.version
        contender = self.contenders.get(name)
        if contender is not None:  # its counts compared it with the version leaving: they start over
            contender.trial = Trial(name, contender.trial.version, contender.trial.rule)
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
                self.store.passed(name, version)
                self.events[name] = f"{version} passed probation ({probation.answers} answers)"
                log.info("probation_passed", model=name, version=version, **probation.snapshot())
            else:
                log.warning("probation_failed", model=name, version=version, why=verdict)
                await self._rollback(name, f"probation: {verdict}")
            self.write_status()
            self.on_change()

    async def _rollback(self, name: str, why: str, to: str | None = None) -> str:
        if self.pool.get(name) is None:
            raise ArtifactError(f"model {name}: not served here")
        target = self.store.rollback(name, why, to)
        prepared = await asyncio.to_thread(load_checked, self.settings, target.path, self.loader)
        self._swap(name, prepared, probation=False)
        self.events[name] = f"rolled back to {target.version}: {why}"
        log.warning("model_rolled_back", model=name, to=target.version, why=why)
        return f"model {name}: {target.version} serves again ({why})"

    async def _start_trials(self) -> bool:
        """Load each models.yaml candidate beside its serving model, unless it serves already or this
        device decided against it before (a restart does not rerun a trial); True when one runs."""
        for name, served in self.pool.served.items():
            config = served.entry.candidate
            if config is None or name in self.contenders:  # a restarted rollout task keeps its trials
                continue
            try:
                version = mf.read(config.path).version
                record = self.store.state(name).versions.get(version)
                if version == served.manifest.version or (record is not None and record.state in ENDED):
                    continue
                prepared = await asyncio.to_thread(load_checked, self.settings, config.path, self.loader)
            except ArtifactError as exc:
                self.events[name] = f"candidate refused: {exc}"
                log.warning("candidate_refused", model=name, why=str(exc))
                continue
            self._contend(name, served, config, prepared)
        return bool(self.contenders)

    def _contend(self, name: str, served: Served, config: Candidate, prepared: Prepared) -> None:
        entry = served.entry.model_copy(update={"path": prepared.path, "candidate": None})
        candidate = Served(entry, prepared.runtime.manifest, prepared.runtime, served.batch_max, meter=None)
        candidate.task = asyncio.create_task(candidate.work(), name=f"candidate-{name}")
        self.contenders[name] = Contender(candidate, config, Trial(name, prepared.version, config.promote))
        shares = f"shadow {config.shadow:g}, canary {config.canary:g}"
        self.events[name] = f"candidate {prepared.version} on trial ({shares})"
        log.info("candidate_on_trial", model=name, version=prepared.version, shadow=config.shadow, canary=config.canary)

    async def _judge_trials(self) -> None:
        for name, contender in list(self.contenders.items()):
            if contender.trial.ready() and contender.trial.timed is None:
                contender.trial.timed = await self._duel(name, contender)
            verdict = contender.trial.judge() if contender.trial.ready() else None
            if verdict is None or verdict.decision is None:
                if contender.trial.counts.shadowed - self._reported.get(name, 0) >= REPORT_EVERY:
                    self._reported[name] = contender.trial.counts.shadowed
                    self.on_change()  # the status carries the trial's counts: the fleet report reads them
                continue
            contender.trial.verdict = verdict
            del self.contenders[name]  # no new request goes to it from here on
            try:
                await self._decide(name, contender, verdict)
            finally:
                self.decided[name] = contender.trial.snapshot()
                self.write_status()
                self.on_change()
            log.info("candidate_decided", model=name, decision=verdict.decision, why=verdict.why, **verdict.figures)

    async def _duel(self, name: str, contender: Contender) -> tuple[float | None, float | None]:
        """Both models answer the trial's newest shadowed texts, alternately, one at a time, each on its
        own worker thread: the same texts under the same load, so the p99s compare the models."""
        serving = self.pool.served[name]
        times: tuple[list[float], list[float]] = ([], [])
        for text in list(contender.trial.texts):
            for side, model in enumerate((serving, contender.served)):
                ms = await model.timed(text)
                if ms is not None:
                    times[side].append(ms)
        return p99(times[0]), p99(times[1])

    async def _decide(self, name: str, contender: Contender, verdict: Verdict) -> None:
        served, version = self.pool.served[name], contender.trial.version
        if verdict.decision != "promote":
            await contender.served.stop()
            await asyncio.to_thread(contender.served.runtime.close)
            self.store.refuse(name, version, f"rejected after its trial: {verdict.why}")
            self.events[name] = f"candidate {version} rejected: {verdict.why}"
            return
        try:  # a copy in the store: the candidate's folder may be rebuilt in place by the next improve
            path = await asyncio.to_thread(self.store.adopt, name, version, contender.served.entry.artifact)
        except (ArtifactError, OSError) as exc:
            await contender.served.stop()
            await asyncio.to_thread(contender.served.runtime.close)
            self.events[name] = f"candidate {version} won its trial but could not be kept: {exc}"
            log.error("candidate_not_kept", model=name, why=str(exc))
            return
        await contender.served.stop(handover=served)
        self.store.promote(name, version, path, current(self.pool, self.store, name))
        self.store.passed(name, version)  # its trial was its probation
        before = served.manifest.version
        # already loaded and warm: it serves from the next batch on; nothing is reloaded
        served.swap(served.entry.model_copy(update={"path": path}), contender.served.runtime)
        self.watching.pop(name, None)
        self.events[name] = f"candidate {version} promoted (was {before}): {verdict.why}"

    async def stop_trials(self) -> None:
        """Shutdown: candidates still on trial stop and free their memory (the trial starts over next time)."""
        for contender in list(self.contenders.values()):
            await contender.served.stop()
            contender.served.runtime.close()
        self.contenders.clear()

    async def _maybe_poll(self) -> None:
        registry = self.settings.registry
        if registry is None or registry.poll_minutes <= 0 or time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + registry.poll_minutes * 60
        for name in list(self.pool.served):
            try:
                log.info("poll_pulled", line=await self._pull(name, None, explicit=False))
            except (AlreadyServing, Skipped):
                continue
            except ArtifactError as exc:  # a poll's refusal is logged and recorded; serving goes on
                log.warning("poll_refused", model=name, why=str(exc))
            self.write_status()
            self.on_change()

    def snapshot(self) -> dict[str, Any]:
        """Per model: what serves, the previous version, probation, the last event."""
        out: dict[str, Any] = {}
        for name, served in self.pool.served.items():
            state = self.store.state(name)
            probation = self.watching.get(name)
            record = state.versions.get(served.manifest.version)
            out[name] = {
                "version": served.manifest.version,
                "previous": state.previous,
                "probation": probation.snapshot() if probation else (record.probation if record else None),
                "last": self.events.get(name),
            }
            contender = self.contenders.get(name)
            trial = contender.trial.snapshot() if contender is not None else self.decided.get(name)
            if trial is not None:
                out[name]["candidate"] = trial
        return out

    def write_status(self) -> None:
        """`{state_dir}/status.json`, what `edge-agent status --wait-healthy` reads on the device."""
        path = self.settings.state_dir / STATUS
        tmp = path.with_name(f".{STATUS}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"pid": os.getpid(), "models": self.snapshot()}, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as exc:  # a full disk must not stop serving; the MQTT status still tells
            log.warning("status_file_failed", error=str(exc))
