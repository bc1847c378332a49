"""The served models: each loaded once, each with one worker thread that takes requests in batches.

One thread per model keeps a small board's cores from thrashing; batching whatever queued up
while the previous pass ran gives throughput under load without adding latency when idle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.manifest import load as load_manifest
from edge_agent.contract.prediction import Prediction
from edge_agent.errors import AgentError, ArtifactError, ConfigError, Internal, Timeout, TooLarge, Unavailable
from edge_agent.runtimes import Runtime

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

Loader = Callable[[Path, Manifest, int], Runtime]
Spawn = Callable[[str, Callable[[], Awaitable[None]]], None]


@dataclass(frozen=True)
class Down:
    """A model of models.yaml that no version on this device can serve, and why."""

    entry: ModelEntry
    why: str


class Watch(Protocol):
    """Who watches a model's answers (probation after a swap)."""

    def answered(self, ok: bool, latency_ms: float) -> None: ...

    def compared_with_cloud(self, agreed: bool) -> None: ...


def default_loader(folder: Path, manifest: Manifest, threads: int) -> Runtime:
    """Pick the runtime the manifest names; its heavy import happens only here."""
    try:
        if manifest.runtime == "onnx":
            from edge_agent.runtimes.onnx import OnnxRuntime

            return OnnxRuntime(folder, manifest, threads)
        if manifest.runtime == "gguf":
            from edge_agent.runtimes.gguf import GgufRuntime

            return GgufRuntime(folder, manifest, threads)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("onnxruntime", "tokenizers", "numpy", "llama_cpp"):
            raise  # our own code is missing something: a bug, not an install to fix
        extra = {"onnx": "onnx", "gguf": "gguf"}[manifest.runtime]
        raise ArtifactError(
            f"artifact {manifest.name}: runtime {manifest.runtime} needs {exc.name}: pip install 'edge-agent[{extra}]'"
        ) from None
    raise ArtifactError(f"artifact {manifest.name}: runtime {manifest.runtime!r} is not available here")


@dataclass
class _Job:
    text: str
    deadline: float
    future: asyncio.Future[Prediction]
    queued: float = field(default_factory=time.monotonic)


class BatchMeter(Protocol):
    """Who counts the passes (metrics)."""

    def pass_done(self, model: str, waits: Iterable[float], seconds: float) -> None: ...


def batch_limit(manifest: Manifest, batch_max: int) -> int:
    """Texts per pass: several only where a text's answer cannot depend on its batch-mates. A GGUF
    model answers texts one after another anyway (a batch would only hold back the first answer);
    a dynamic int8 encoder scales activations over the whole batch."""
    independent = manifest.runtime == "onnx" and manifest.onnx is not None and manifest.onnx.batch_independent
    return batch_max if independent else 1


@dataclass
class Served:
    """A loaded model and what limits it."""

    entry: ModelEntry
    manifest: Manifest
    runtime: Runtime
    batch_max: int  # the setting; `batch_limit` says what this model may take
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    watch: Watch | None = None  # probation, after a swap
    meter: BatchMeter | None = None
    batch_wait_s: float = 0.0
    task: asyncio.Task[None] | None = None  # its worker, when it runs outside the pool (a candidate)
    passing: bool = False  # a pass is running on the worker's thread
    closing: bool = False  # stop() was called: no pass starts after the one running
    _passed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def threshold(self) -> float:
        return self.entry.threshold_for(self.manifest)

    def check_input(self, text: str) -> None:
        limit = self.entry.max_input_chars
        if limit is not None and len(text) > limit:
            raise TooLarge(f"text has {len(text)} characters; model {self.entry.name} takes {limit}")
        self.runtime.check_input(text)

    async def predict(self, text: str, deadline: float) -> Prediction:
        """Queue the text for the worker; Timeout when the deadline (monotonic) passes first."""
        self.check_input(text)
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Job(text, deadline, future))
        started = time.monotonic()
        try:
            prediction = await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:  # on 3.10 not the builtin TimeoutError (3.11 made them one)
            self._observe(False, started)
            raise Timeout(f"no answer from model {self.entry.name} within the deadline") from None
        except (Timeout, Internal):
            self._observe(False, started)
            raise
        self._observe(True, started)
        return prediction

    def _observe(self, ok: bool, started: float) -> None:
        if self.watch is not None:
            self.watch.answered(ok, (time.monotonic() - started) * 1000)

    def swap(self, entry: ModelEntry, runtime: Runtime) -> None:
        """Serve `runtime` from the next batch on, on the loop. The batch running now finishes on the
        old runtime, which is closed on the worker's thread right after it: no request fails, none
        waits for more than the one pass already running."""
        old = self.runtime
        self.entry, self.manifest, self.runtime = entry, runtime.manifest, runtime
        self.watch = None
        asyncio.get_running_loop().run_in_executor(self.executor, old.close)

    async def timed(self, text: str) -> float | None:
        """One text through the model on its own worker thread (after whatever pass runs there), in ms;
        None when it fails. For the candidate's latency duel."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._time_one, text)

    def _time_one(self, text: str) -> float | None:
        started = time.perf_counter()
        try:
            self.runtime.predict([text], self.entry.top_k)
        except Exception:  # a failure is counted by the trial's error rate, not timed here
            return None
        return (time.perf_counter() - started) * 1000

    async def stop(self, handover: Served | None = None) -> None:
        """Stop a worker started on its own (`task`): the pass running finishes and delivers its answers;
        what is still queued goes to `handover` (the model taking over) or fails as unavailable."""
        self.closing = True
        while self.passing:  # never cancel a pass: its answers would be lost with it
            self._passed.clear()
            await self._passed.wait()
        if self.task is not None:
            self.task.cancel()  # it waits on the queue now, which a cancel leaves intact
            await asyncio.gather(self.task, return_exceptions=True)
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if handover is not None:
                handover.queue.put_nowait(job)
            else:
                _settle(job.future, Unavailable(f"model {self.entry.name}: its candidate was withdrawn"))
        await asyncio.to_thread(self.executor.shutdown, True)

    async def work(self) -> None:
        """Forever: take what is queued (up to the batch limit), drop expired jobs, run it."""
        while not self.closing:
            jobs = await self._take()
            now = time.monotonic()
            live = [j for j in jobs if not j.future.done() and j.deadline > now]
            runtime = self.runtime  # a swap takes effect between passes
            limit = batch_limit(runtime.manifest, self.batch_max)  # smaller when a swap came while it gathered
            self.passing = True
            try:
                for start in range(0, len(live), limit):
                    await self._pass(runtime, live[start : start + limit])
            finally:
                self.passing = False
                self._passed.set()

    async def _pass(self, runtime: Runtime, jobs: list[_Job]) -> None:
        started = time.monotonic()
        texts, deadlines = [j.text for j in jobs], [j.deadline for j in jobs]
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self._run, runtime, texts, deadlines)
        for job, result in zip(jobs, results, strict=True):
            _settle(job.future, _stamped(result, runtime.manifest.version))
        if self.meter is not None:
            waits = (started - j.queued for j in jobs)
            self.meter.pass_done(self.entry.name, waits, time.monotonic() - started)

    async def _take(self) -> list[_Job]:
        """The next batch: what queued while the last pass ran, topped up for `batch_wait_s` when set."""
        jobs = [await self.queue.get()]
        limit = batch_limit(self.manifest, self.batch_max)
        until = time.monotonic() + self.batch_wait_s
        while len(jobs) < limit:
            if not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                continue
            left = until - time.monotonic()
            if left <= 0:
                break
            # asyncio.wait, not wait_for: before 3.12 wait_for can swallow a cancel (shutdown) that races the get
            getter = asyncio.ensure_future(self.queue.get())
            try:
                done, _ = await asyncio.wait({getter}, timeout=left)
            finally:
                getter.cancel()  # Queue.get is cancel-safe: a text it had not returned stays queued
            if getter not in done:
                break
            jobs.append(getter.result())
        return jobs

    def _run(self, runtime: Runtime, texts: list[str], deadlines: list[float]) -> list[Prediction | AgentError]:
        """One pass; when a batch fails, each text is retried alone so one bad text (or one past its
        deadline) fails alone."""
        try:
            return list(runtime.predict(texts, self.entry.top_k, deadlines))
        except Exception as exc:
            if len(texts) > 1:
                return [self._alone(runtime, t, d) for t, d in zip(texts, deadlines, strict=True)]
            return [exc if isinstance(exc, AgentError) else Internal(f"{type(exc).__name__}: {exc}")]

    def _alone(self, runtime: Runtime, text: str, deadline: float) -> Prediction | AgentError:
        if time.monotonic() > deadline:  # its time went to the failed batch: no second run
            return Timeout(f"no answer from model {self.entry.name} within the deadline")
        return self._run(runtime, [text], [deadline])[0]


def _stamped(result: Prediction | AgentError, version: str) -> Prediction | AgentError:
    return dataclasses.replace(result, version=version) if isinstance(result, Prediction) else result


def _settle(future: asyncio.Future[Prediction], result: Prediction | AgentError) -> None:
    if future.done():
        return
    if isinstance(result, AgentError):
        future.set_exception(result)
    else:
        future.set_result(result)


class ModelPool:
    """Every model of models.yaml: those loaded and verified, and those that could not be (`down`, with why),
    which answer `unavailable` until a pull brings a version that verifies (`add`)."""

    def __init__(self, served: dict[str, Served], down: dict[str, Down] | None = None, batch_max: int = 1) -> None:
        self.served, self.down, self.batch_max = served, down or {}, batch_max
        self._tasks: list[asyncio.Task[None]] = []
        self._spawn: Spawn | None = None
        self._meter: BatchMeter | None = None
        self._batch_wait_s = 0.0

    @classmethod
    def load(
        cls,
        models: ModelsFile,
        threads: int,
        batch_max: int,
        trusted: Sequence[Ed25519PublicKey] = (),
        loader: Loader = default_loader,
    ) -> ModelPool:
        """Load every model; a ConfigError lists every artifact that cannot be served."""
        pool = cls.load_what_verifies(models, threads, batch_max, trusted, loader)
        if pool.down:
            pool.close()
            raise ConfigError([down.why for down in pool.down.values()])
        return pool

    @classmethod
    def load_what_verifies(
        cls,
        models: ModelsFile,
        threads: int,
        batch_max: int,
        trusted: Sequence[Ed25519PublicKey] = (),
        loader: Loader = default_loader,
        verified: Mapping[Path, Manifest] | None = None,
    ) -> ModelPool:
        """Every model that loads and verifies; the others are `down`, with why (the agent still starts).
        `verified`: folders checked a moment ago (the store's start-up check), not hashed a second time."""
        served, down = {}, {}
        for entry in models.models:
            try:
                known = (verified or {}).get(entry.artifact)
                manifest = known or load_manifest(entry.artifact, trusted)
                runtime = loader(entry.artifact, manifest, entry.threads or threads)
            except ArtifactError as exc:
                down[entry.name] = Down(entry, f"model {entry.name}: {exc}")
                continue
            served[entry.name] = Served(entry, manifest, runtime, batch_max)
        return cls(served, down, batch_max)

    def get(self, name: str) -> Served | None:
        return self.served.get(name)

    def start(
        self,
        spawn: Spawn | None = None,
        meter: BatchMeter | None = None,
        batch_wait_s: float = 0.0,
    ) -> None:
        """Start each model's worker: through `spawn` (a supervisor) when given, else as plain tasks."""
        self._spawn, self._meter, self._batch_wait_s = spawn, meter, batch_wait_s
        for name, model in self.served.items():
            self._run(name, model)

    def _run(self, name: str, model: Served) -> None:
        model.meter, model.batch_wait_s = self._meter, self._batch_wait_s
        if self._spawn is not None:
            self._spawn(f"model-{name}", model.work)
        else:
            self._tasks.append(asyncio.create_task(model.work(), name=f"model-{name}"))

    def add(self, entry: ModelEntry, runtime: Runtime) -> Served:
        """A model that was down serves `runtime` from now on (a pull brought a version that verifies)."""
        self.down.pop(entry.name, None)
        model = Served(entry, runtime.manifest, runtime, self.batch_max)
        self.served[entry.name] = model
        self._run(entry.name, model)
        return model

    def close(self) -> None:
        for model in self.served.values():
            model.runtime.close()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self.served.values():
            model.executor.shutdown(wait=True)
        self.close()

    def versions(self) -> dict[str, str]:
        return {name: m.manifest.version for name, m in self.served.items()}
