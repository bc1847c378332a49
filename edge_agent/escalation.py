"""One request through local and cloud as the router decides, always within its deadline.

The router says what should happen; this module makes it happen with tasks and timeouts, keeps
the budget, breaker and trend up to date, and hands each cloud-answered escalation to feedback.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from edge_agent import router, schema
from edge_agent.cloud import CloudClient, CloudFailure
from edge_agent.config import AgentSettings, CloudSettings, ModelEntry, ModelsFile
from edge_agent.errors import AgentError, CloudUnavailable, InvalidOutput
from edge_agent.feedback import FeedbackLog, record
from edge_agent.guards import Breaker, Budgets, Trend
from edge_agent.manifest import Manifest
from edge_agent.messages import Request
from edge_agent.router import Reason
from edge_agent.runtimes import Prediction
from edge_agent.runtimes.pool import Served

log = structlog.get_logger("edge_agent.escalation")


class WaitForCloud(CloudUnavailable):
    """A route=cloud request the cloud could not answer now; it may wait in the spool."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"the cloud is unavailable ({reason}); the request waits for it")
        self.reason = reason


@dataclass(frozen=True)
class Job:
    """A request for one model; `served` is None when the model cannot run on this device."""

    model: str
    entry: ModelEntry
    manifest: Manifest
    served: Served | None
    request: Request
    deadline: float


@dataclass(frozen=True)
class LocalRun:
    prediction: Prediction | None
    ms: float | None = None
    invalid: bool = False
    error: AgentError | None = None


@dataclass(frozen=True)
class CloudCall:
    task: asyncio.Task[Prediction]
    started: float

    @property
    def ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


@dataclass(frozen=True)
class Answer:
    """What the reply says: the prediction kept, who gave it, and why."""

    prediction: Prediction
    source: str
    reason: Reason | None = None
    trigger: Reason | None = None
    local: LocalRun | None = None
    cloud_ms: float | None = None

    def extras(self) -> dict[str, Any]:
        """The router's keys of the reply, added to messages.reply()."""
        local = self.local.prediction if self.local else None
        body: dict[str, Any] = {
            "escalated": self.reason is not None,
            "reason": str(self.reason) if self.reason else None,
            "timings": {
                "local_ms": _ms(self.local.ms if self.local else None),
                "cloud_ms": _ms(self.cloud_ms),
            },
        }
        if self.trigger is not None:
            body["trigger"] = str(self.trigger)
        if self.source == "cloud":
            body.update(confidence=None, top=[])
            if local is not None:
                body.update(local_label=local.label, local_confidence=round(local.confidence, 6))
                body["agree"] = local.label == self.prediction.label
        return body


def _ms(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


class Escalator:
    """Owns the cloud client and the state that guards it (budgets, breaker, trends, feedback)."""

    def __init__(
        self,
        settings: AgentSettings,
        models: ModelsFile,
        cloud: CloudClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = settings.cloud or CloudSettings(base_url="http://unused", model="none")
        self.cloud = cloud
        self.budgets = Budgets(limits.budget, {m.name: m.budget for m in models.models}, clock)
        self.breaker = Breaker(limits.breaker_failures, limits.breaker_cooldown_s, clock)
        self.trends = {m.name: Trend() for m in models.models}
        self.redact = {m.name: [re.compile(p) for p in m.redact] for m in models.models}
        self.feedback = FeedbackLog(settings.state_dir / "feedback", settings.feedback_max_rows)
        self.on_change: Callable[[], object] = lambda: None  # breaker or budget state changed
        self._background: set[asyncio.Task[None]] = set()

    async def answer(self, job: Job) -> Answer:
        """The reply's prediction and routing facts; raises AgentError when there is no answer at all."""
        p = router.policy(job.entry, _threshold(job.entry, job.manifest), job.request.route, self.cloud is not None)
        if job.served is None:
            if not p.cloud:
                raise CloudUnavailable(f"model {job.model} cannot run here and the cloud may not be asked")
            return await self._escalate(job, p, LocalRun(None), Reason.MODEL_MISSING)
        local = asyncio.create_task(self._local(job, job.served))
        early = self._start(job) if router.cloud_first(p, self.trends[job.model].value) else None
        if isinstance(early, CloudCall):
            return await self._race(job, p, local, early)
        return await self._after_local(job, p, await local)

    async def _after_local(self, job: Job, p: router.Policy, run: LocalRun, call: CloudCall | None = None) -> Answer:
        reason = router.escalation(p, run.prediction, run.invalid)
        if reason is None:
            if call is not None:
                call.task.cancel()
            if run.error is not None:
                raise run.error
            assert run.prediction is not None
            return Answer(run.prediction, "local", local=run)
        if run.error is not None and not run.invalid and reason is not Reason.FORCED:
            raise run.error  # a timeout or a bad input: the cloud would not help
        return await self._escalate(job, p, run, reason, call)

    async def _race(self, job: Job, p: router.Policy, local: asyncio.Task[LocalRun], call: CloudCall) -> Answer:
        """Local and cloud at once: keep the first valid answer that the policy accepts."""
        left = max(0.0, job.deadline - time.monotonic())
        await asyncio.wait({local, call.task}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if not local.done() and _succeeded(call.task):
            reason = Reason.FORCED if p.route == "cloud" else Reason.SPECULATIVE
            return self._cloud_answer(job, LocalRun(None), reason, call.task.result(), call.ms, local)
        return await self._after_local(job, p, await local, call)

    async def _escalate(
        self, job: Job, p: router.Policy, run: LocalRun, reason: Reason, call: CloudCall | None = None
    ) -> Answer:
        started = call or self._start(job)
        if isinstance(started, Reason):
            return self._fallback(job, p, run, reason, started, None)
        try:
            cloud = await asyncio.wait_for(started.task, max(0.0, job.deadline - time.monotonic()))
        except TimeoutError:
            return self._fallback(job, p, run, reason, Reason.CLOUD_TIMEOUT, started.ms)
        except CloudFailure as exc:
            return self._fallback(job, p, run, reason, Reason(exc.reason), started.ms)
        return self._cloud_answer(job, run, reason, cloud, started.ms)

    def _start(self, job: Job) -> CloudCall | Reason:
        """Start a cloud call when the breaker and both budgets allow; the budget is spent at start."""
        stop = router.blocked(self.breaker.state != "open", self.budgets.allows(job.model))
        if stop is None and not self.breaker.allows():
            stop = Reason.CIRCUIT_OPEN  # a half-open probe is already out
        if stop is not None:
            return stop
        exhausted_before = not self.budgets.overall.allows()
        self.budgets.spend(job.model)
        if exhausted_before != (not self.budgets.overall.allows()):
            self.on_change()
        task = asyncio.create_task(self._ask(job))
        task.add_done_callback(_succeeded)  # a failure nobody awaits is still retrieved
        return CloudCall(task, time.monotonic())

    async def _ask(self, job: Job) -> Prediction:
        assert self.cloud is not None
        before = self.breaker.state
        try:
            prediction = await self.cloud.ask(job.manifest, job.request.text, job.deadline)
        except CloudFailure as exc:
            self.breaker.failure()
            log.warning("cloud_failed", model=job.model, reason=exc.reason, error=exc.message)
            raise
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        else:
            self.breaker.success()
        finally:
            if self.breaker.state != before:
                self.on_change()
        return prediction

    def _fallback(
        self, job: Job, p: router.Policy, run: LocalRun, trigger: Reason, reason: Reason, cloud_ms: float | None
    ) -> Answer:
        """The deadline wins: the local answer, marked, or an error when there is none to give."""
        log.info("escalation_fell_back", model=job.model, trigger=str(trigger), reason=str(reason))
        if router.waits_for_cloud(p.route, job.request.deadline_ms is not None):
            raise WaitForCloud(reason)
        if run.prediction is None or run.invalid:
            raise CloudUnavailable(f"no usable local answer ({trigger}) and the cloud failed ({reason})")
        return Answer(run.prediction, "local-fallback", reason, trigger, run, cloud_ms)

    def _cloud_answer(
        self,
        job: Job,
        run: LocalRun,
        reason: Reason,
        cloud: Prediction,
        cloud_ms: float,
        pending: asyncio.Task[LocalRun] | None = None,
    ) -> Answer:
        if job.entry.collect_feedback:
            self._later(self._keep(job, run, cloud, reason, pending))
        return Answer(cloud, "cloud", reason, None, run, cloud_ms)

    async def _keep(
        self, job: Job, run: LocalRun, cloud: Prediction, reason: Reason, pending: asyncio.Task[LocalRun] | None
    ) -> None:
        """Write the feedback row off the reply's path (after the local run, when it still runs)."""
        if pending is not None:
            run = await pending
        meta = {"model": job.model, "version": job.manifest.version, "reason": str(reason)}
        row = record(job.request.text, run.prediction, cloud, meta, self.redact.get(job.model, []))
        await asyncio.to_thread(self.feedback.append, job.model, row)

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _local(self, job: Job, served: Served) -> LocalRun:
        start = time.monotonic()
        try:
            prediction = await served.predict(job.request.text, job.deadline)
        except InvalidOutput as exc:
            return LocalRun(None, (time.monotonic() - start) * 1000, invalid=True, error=exc)
        except AgentError as exc:
            return LocalRun(None, (time.monotonic() - start) * 1000, error=exc)
        ms = (time.monotonic() - start) * 1000
        invalid = not valid_output(job.manifest, prediction)
        if not invalid:
            self.trends[job.model].add(prediction.confidence)
        return LocalRun(prediction, ms, invalid=invalid)

    async def drain(self) -> None:
        """Let pending feedback writes finish (shutdown)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)

    def snapshot(self) -> dict[str, Any]:
        """Budget and breaker, for the retained status message."""
        return {
            "cloud": self.cloud.name if self.cloud else None,
            "breaker": self.breaker.snapshot(),
            "budget": self.budgets.snapshot(),
        }


def _succeeded(task: asyncio.Task[Prediction]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _threshold(entry: ModelEntry, manifest: Manifest) -> float:
    return entry.threshold if entry.threshold is not None else manifest.thresholds.escalate


def valid_output(manifest: Manifest, prediction: Prediction) -> bool:
    """A local answer the reply may carry: a known label, fields that fit the schema."""
    if manifest.task != "extract" and manifest.labels and prediction.label not in manifest.labels:
        return False
    if manifest.task == "extract" and prediction.fields is None:
        return False
    if prediction.fields is not None and manifest.fields_schema:
        return not schema.errors(prediction.fields, manifest.fields_schema)
    return True
