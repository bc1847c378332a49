"""One request through local and cloud as the router decides, always within its deadline.

The router says what should happen; this module makes it happen with tasks and timeouts, keeps
the budget, breaker and trend up to date, and hands each cloud-answered escalation to feedback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.config.sections import Budget
from edge_agent.config.settings import AgentSettings
from edge_agent.contract import schema
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.messages import Answer, Request
from edge_agent.contract.prediction import Prediction
from edge_agent.errors import AgentError, CloudUnavailable, InvalidOutput, Unavailable
from edge_agent.lifecycle.candidates import Candidates
from edge_agent.lifecycle.contender import Contender
from edge_agent.ops.metrics import CloudMeter, Metrics
from edge_agent.routing import policy
from edge_agent.routing.cloud import CloudClient, CloudFailure
from edge_agent.routing.feedback import FeedbackLog, record
from edge_agent.routing.guards import Allowances, Breaker, Trend
from edge_agent.routing.policy import Reason
from edge_agent.runtimes.pool import Served

log = structlog.get_logger("edge_agent.routing.router")
SHADOW_BUDGET_S = 10.0  # a shadowed text's deadline on the candidate, from when the reply was made


@dataclass(frozen=True)
class CloudWait:
    """A route=cloud request the cloud could not answer now: it may wait in the spool for it."""

    model: str
    reason: Reason


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
    meter: CloudMeter

    @property
    def ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


class Router:
    """Owns the cloud client and the state that guards it (budgets, breaker, trends, feedback)."""

    def __init__(
        self,
        settings: AgentSettings,
        models: ModelsFile,
        cloud: CloudClient | None = None,
        candidates: Candidates | None = None,
        on_change: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.cloud = cloud
        overall = settings.cloud.budget if settings.cloud is not None else Budget()
        self.budgets = Allowances(overall, {m.name: m.budget for m in models.models}, clock)
        self.breaker = Breaker.of(settings.cloud, clock)
        self.trends = {m.name: Trend() for m in models.models}
        self.redact = {m.name: [re.compile(p) for p in m.redact] for m in models.models}
        self.feedback = FeedbackLog(
            settings.state_dir / "feedback", settings.feedback_max_rows, settings.feedback_max_bytes
        )
        self.on_change = on_change  # breaker or budget state changed: the status should say so
        self.candidates = candidates  # versions on trial beside the serving ones (the rollout's)
        self.taught = {m.name: m.cloud_labels for m in models.models}
        self._background: set[asyncio.Task[None]] = set()

    async def answer(self, job: Job) -> Answer | CloudWait:
        """The reply's prediction and routing facts, or CloudWait; raises AgentError when there is no answer.
        Where a candidate is on trial, it answers this request instead (canary) or beside it (shadow)."""
        contender = self.candidates.get(job.model) if self.candidates is not None else None
        role = contender.pick() if contender is not None and job.served is not None else None
        if contender is None or role is None:
            return await self._answer(job)
        if role == "canary":
            return await self._canary(job, contender)
        try:
            result = await self._answer(job)
        except AgentError as exc:
            self._later(self._shadow(contender, job, exc))
            raise
        if isinstance(result, Answer):
            self._later(self._shadow(contender, job, result))
        return result

    async def _canary(self, job: Job, contender: Contender) -> Answer | CloudWait:
        served = contender.served
        try:
            result = await self._answer(dataclasses.replace(job, served=served, manifest=served.manifest))
        except AgentError:
            contender.trial.canary(False)
            raise
        contender.trial.canary(True)
        return result

    async def _shadow(self, contender: Contender, job: Job, result: Answer | AgentError) -> None:
        """The candidate's answer to a request already answered: after the reply, so that on a small
        board the shadow never holds the reply back, nor races the serving model for the cores (which
        would time the one that starts second as the slower)."""
        candidate = await contender.run(job.request.text, time.monotonic() + SHADOW_BUDGET_S)
        would_escalate = candidate is not None and _escalates(contender.served, candidate)
        contender.record(job.request.text, result, candidate, would_escalate)
        if self.candidates is not None:
            self.candidates.counted()

    async def _answer(self, job: Job) -> Answer | CloudWait:
        threshold, limit = job.entry.threshold_for(job.manifest), job.manifest.max_distance
        p = policy.policy_for(job.entry, threshold, job.request.route, self.cloud is not None, limit)
        if p.route == "cloud" and not p.cloud:
            raise Unavailable(f"route cloud was asked for, but no cloud is configured on {job.model}'s device")
        if job.served is None:
            if not p.cloud:
                raise CloudUnavailable(f"model {job.model} cannot run here and the cloud may not be asked")
            return await self._escalate(job, p, LocalRun(None), Reason.MODEL_MISSING)
        local = asyncio.create_task(self._local(job, job.served))
        early = self._start(job) if policy.cloud_first(p, self.trends[job.model].value) else None
        if isinstance(early, CloudCall):
            return await self._race(job, p, local, early)
        return await self._after_local(job, p, await local)

    async def _after_local(
        self, job: Job, p: policy.Policy, run: LocalRun, call: CloudCall | None = None
    ) -> Answer | CloudWait:
        reason = policy.escalation(p, run.prediction, run.invalid)
        if reason is None or not p.cloud:
            if call is not None:
                call.task.cancel()
            return self._local_answer(p, run, reason)
        if run.error is not None and not run.invalid and reason is not Reason.FORCED:
            raise run.error  # a timeout or a bad input: the cloud would not help
        return await self._escalate(job, p, run, reason, call)

    def _local_answer(self, p: policy.Policy, run: LocalRun, reason: Reason | None) -> Answer:
        """The local answer; one the policy would have escalated is marked as a fallback, saying why not."""
        if run.error is not None:
            raise run.error
        if run.prediction is None or run.invalid:
            raise InvalidOutput("the local model's answer does not fit its labels or schema")
        if reason is None:
            return Answer(run.prediction, "local", local_ms=run.ms)
        return Answer(run.prediction, "local-fallback", str(policy.stays_local(p)), str(reason), local_ms=run.ms)

    async def _race(
        self, job: Job, p: policy.Policy, local: asyncio.Task[LocalRun], call: CloudCall
    ) -> Answer | CloudWait:
        """Local and cloud at once: keep the first valid answer that the policy accepts."""
        left = max(0.0, job.deadline - time.monotonic())
        await asyncio.wait({local, call.task}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if not local.done() and _succeeded(call.task):
            reason = Reason.FORCED if p.route == "cloud" else Reason.SPECULATIVE
            return self._cloud_answer(job, LocalRun(None), reason, call.task.result(), call.ms, local)
        return await self._after_local(job, p, await local, call)

    async def _escalate(
        self, job: Job, p: policy.Policy, run: LocalRun, reason: Reason, call: CloudCall | None = None
    ) -> Answer | CloudWait:
        started = call or self._start(job)
        if isinstance(started, Reason):
            return self._fallback(job, p, run, reason, started, None)
        await asyncio.wait({started.task}, timeout=max(0.0, job.deadline - time.monotonic()))
        if not started.task.done():
            self._cut(started)
            return self._fallback(job, p, run, reason, Reason.CLOUD_TIMEOUT, started.ms)
        failure = CloudFailure("cloud_error", "cancelled") if started.task.cancelled() else started.task.exception()
        if failure is not None:
            cause = failure.reason if isinstance(failure, CloudFailure) else Reason.CLOUD_ERROR
            return self._fallback(job, p, run, reason, Reason(cause), started.ms)
        return self._cloud_answer(job, run, reason, started.task.result(), started.ms)

    def _cut(self, call: CloudCall) -> None:
        """The deadline cut a call short: for the breaker that is a timeout, not a call nobody needed."""
        self.breaker.failure()
        call.meter.ended(call.ms / 1000, "cloud_timeout")
        call.task.cancel()

    def _start(self, job: Job) -> CloudCall | Reason:
        """Start a cloud call when the breaker and both budgets allow; the budget is spent at start."""
        stop = policy.blocked(self.breaker.state != "open", self.budgets.allows(job.model))
        if stop is None and not self.breaker.allows():
            stop = Reason.CIRCUIT_OPEN  # a half-open probe is already out
        if stop is not None:
            return stop
        exhausted_before = not self.budgets.overall.allows()
        self.budgets.spend(job.model)
        if exhausted_before != (not self.budgets.overall.allows()):
            self.on_change()
        meter = self.metrics.cloud_call(job.model)
        task = asyncio.create_task(self._ask(job, meter))
        task.add_done_callback(_succeeded)  # a failure nobody awaits is still retrieved
        return CloudCall(task, time.monotonic(), meter)

    async def _ask(self, job: Job, meter: CloudMeter) -> Prediction:
        """One cloud call; every way it can end gives the breaker its verdict (none when cancelled)."""
        assert self.cloud is not None
        before, started = self.breaker.state, time.monotonic()
        try:
            prediction = await self.cloud.ask(self._cloud_view(job), job.request.text, job.deadline, meter)
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception as exc:
            self.breaker.failure()
            failure = exc if isinstance(exc, CloudFailure) else CloudFailure("cloud_error", type(exc).__name__)
            log.warning("cloud_failed", model=job.model, reason=failure.reason, error=failure.message)
            meter.ended(time.monotonic() - started, failure.reason)
            raise failure from None
        else:
            self.breaker.success()
            meter.ended(time.monotonic() - started, None)
        finally:
            if self.breaker.state != before:
                self.on_change()
        return prediction

    def _cloud_view(self, job: Job) -> Manifest:
        """The manifest the cloud answers within: the model's labels and the ones models.yaml lets it teach."""
        extra = [label for label in self.taught.get(job.model, []) if label not in job.manifest.labels]
        return job.manifest.model_copy(update={"labels": [*job.manifest.labels, *extra]}) if extra else job.manifest

    def _fallback(
        self, job: Job, p: policy.Policy, run: LocalRun, trigger: Reason, reason: Reason, cloud_ms: float | None
    ) -> Answer | CloudWait:
        """The deadline wins: the local answer, marked, or an error when there is none to give."""
        log.info("escalation_fell_back", model=job.model, trigger=str(trigger), reason=str(reason))
        if policy.waits_for_cloud(p.route, job.request.deadline_ms is not None):
            return CloudWait(job.model, reason)
        if run.prediction is None or run.invalid:
            raise CloudUnavailable(
                f"no usable local answer ({trigger}) and the cloud failed ({reason})", escalation=str(trigger)
            )
        return Answer(run.prediction, "local-fallback", str(reason), str(trigger), None, run.ms, cloud_ms)

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
        watch = job.served.watch if job.served is not None else None
        if watch is not None and run.prediction is not None:  # a new version on probation: does it agree?
            watch.compared_with_cloud(run.prediction.label == cloud.label)
        return Answer(cloud, "cloud", str(reason), None, run.prediction, run.ms, cloud_ms)

    async def _keep(
        self, job: Job, run: LocalRun, cloud: Prediction, reason: Reason, pending: asyncio.Task[LocalRun] | None
    ) -> None:
        """Write the feedback row off the reply's path (after the local run, when it still runs)."""
        if pending is not None:
            run = await pending
        meta = {"model": job.model, "version": job.manifest.version, "reason": str(reason)}
        row = record(job.request.text, run.prediction, cloud, meta, self.redact.get(job.model, []))
        try:
            await asyncio.to_thread(self.feedback.append, job.model, row)
        except OSError as exc:  # a full disk, a planted link: the answer stands, the row is lost and logged
            log.error("feedback_write_failed", model=job.model, error=str(exc))

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


def _escalates(served: Served, prediction: Prediction) -> bool:
    """Whether a model's own rule would send this prediction to the cloud."""
    p = policy.policy_for(served.entry, served.threshold, "auto", True, served.manifest.max_distance)
    return policy.escalation(p, prediction) is not None


def valid_output(manifest: Manifest, prediction: Prediction) -> bool:
    """A local answer the reply may carry: a known label, fields that fit the schema."""
    if manifest.task != "extract" and manifest.labels and prediction.label not in manifest.labels:
        return False
    if manifest.task == "extract" and prediction.fields is None:
        return False
    if prediction.fields is not None and manifest.fields_schema:
        return not schema.errors(prediction.fields, manifest.fields_schema)
    return True
