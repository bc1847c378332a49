"""Candidates on trial beside the serving models: started from models.yaml, judged by their rule, then
promoted (copied into the store, swapped in already warm) or rejected (recorded as refused).

The rollout drives this on its own task, between its other changes; the router routes requests to
the candidates (`Candidates.get`) and wakes the rollout when a trial has counted one (`counted`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from edge_agent.config.models_file import Candidate
from edge_agent.config.settings import AgentSettings
from edge_agent.contract import manifest as mf
from edge_agent.errors import ArtifactError
from edge_agent.lifecycle.contender import Contender
from edge_agent.lifecycle.latency import p99
from edge_agent.lifecycle.store import Store
from edge_agent.lifecycle.trial import Trial, Verdict
from edge_agent.lifecycle.versions import Prepared, current, load_checked
from edge_agent.runtimes.pool import Loader, ModelPool, Served

log = structlog.get_logger("edge_agent.lifecycle.candidates")
REPORT_EVERY = 100  # shadowed requests between status updates while a trial runs
ENDED = ("refused", "rolled_back", "retired")  # a candidate in one of these states is not tried again


class Candidates:
    """Owns the contenders: the router asks it which candidate (if any) sees a request, and tells it when a
    trial counted one; the rollout starts, judges and stops them."""

    def __init__(
        self,
        settings: AgentSettings,
        pool: ModelPool,
        store: Store,
        loader: Loader,
        events: dict[str, str],
        changed: Callable[[], None],
        promoted: Callable[[str], None],
        counted: Callable[[], None],
    ) -> None:
        self.settings, self.pool, self.store, self.loader = settings, pool, store, loader
        self.contenders: dict[str, Contender] = {}  # model -> its candidate on trial
        self.counted = counted  # a trial counted a request: the rollout may judge it
        self.events = events  # the rollout's: the last thing that happened to each model
        self.changed = changed  # a decision (or enough new counts) for the status
        self.promoted = promoted  # a candidate serves now: the rollout forgets that model's probation
        self.decided: dict[str, dict[str, Any]] = {}  # model -> its last trial's snapshot, once decided
        self._reported: dict[str, int] = {}

    def get(self, model: str) -> Contender | None:
        """The candidate on trial beside `model`, if any."""
        return self.contenders.get(model)

    def snapshot(self, name: str) -> dict[str, Any] | None:
        return self.snapshots().get(name)

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """Every model's trial, running or decided (a running one wins: it is the newer)."""
        return {**self.decided, **{name: c.trial.snapshot() for name, c in self.contenders.items()}}

    def serving_changed(self, name: str) -> None:
        """A pull or rollback swapped the serving version: the trial's counts compared the old one."""
        contender = self.contenders.get(name)
        if contender is not None:
            contender.trial = Trial(name, contender.trial.version, contender.trial.rule)

    async def start(self) -> bool:
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

    async def judge(self) -> None:
        for name, contender in list(self.contenders.items()):
            if contender.trial.ready() and contender.trial.timed is None:
                contender.trial.timed = await self._duel(name, contender)
            verdict = contender.trial.judge() if contender.trial.ready() else None
            if verdict is None or verdict.decision is None:
                if contender.trial.counts.shadowed - self._reported.get(name, 0) >= REPORT_EVERY:
                    self._reported[name] = contender.trial.counts.shadowed
                    self.changed()  # the status carries the trial's counts: the fleet report reads them
                continue
            contender.trial.verdict = verdict
            del self.contenders[name]  # no new request goes to it from here on
            try:
                await self._decide(name, contender, verdict)
            finally:
                self.decided[name] = contender.trial.snapshot()
                self.changed()
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
            await _withdraw(contender)
            await asyncio.to_thread(self.store.refuse, name, version, f"rejected after its trial: {verdict.why}")
            self.events[name] = f"candidate {version} rejected: {verdict.why}"
            return
        try:  # a copy in the store: the candidate's folder may be rebuilt in place by the next improve
            path = await asyncio.to_thread(self.store.adopt, name, version, contender.served.entry.artifact)
        except (ArtifactError, OSError) as exc:
            await _withdraw(contender)
            self.events[name] = f"candidate {version} won its trial but could not be kept: {exc}"
            log.error("candidate_not_kept", model=name, why=str(exc))
            return
        await contender.served.stop(handover=served)
        await asyncio.to_thread(
            self.store.promote, name, version, path, current(self.pool, self.store, name), allow_older=True
        )  # won its trial
        await asyncio.to_thread(self.store.passed, name, version)  # its trial was its probation
        before = served.manifest.version
        # already loaded and warm: it serves from the next batch on; nothing is reloaded
        served.swap(served.entry.model_copy(update={"path": path}), contender.served.runtime)
        self.promoted(name)
        self.events[name] = f"candidate {version} promoted (was {before}): {verdict.why}"

    async def stop(self) -> None:
        """Shutdown: candidates still on trial stop and free their memory (the trial starts over next time)."""
        for contender in list(self.contenders.values()):
            await _withdraw(contender)
        self.contenders.clear()


async def _withdraw(contender: Contender) -> None:
    """A candidate that will not serve: its worker stopped (what it queued fails), its memory freed."""
    await contender.served.stop()
    await asyncio.to_thread(contender.served.runtime.close)
