"""The pool's batching rule: several texts per pass only for models whose answers cannot depend on the batch.

A recording runtime stands in for the model (pure scheduling logic); the ONNX runtime's own batch
independence is tested on a real artifact in test_onnx.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from edge_agent.config.models_file import ModelEntry
from edge_agent.contract.manifest import FileEntry, Manifest, OnnxIO
from edge_agent.contract.prediction import Prediction
from edge_agent.runtimes.pool import Served, batch_limit


def manifest(runtime: str = "onnx", quantization: str | None = "static") -> Manifest:
    return Manifest(
        name="m",
        version="1",
        task="classify",
        runtime=runtime,  # type: ignore[arg-type]
        files=[FileEntry(path="model.onnx", role="model", sha256="0" * 64, size=1)],
        labels=["a", "b"],
        onnx=OnnxIO(quantization=quantization) if runtime == "onnx" else None,  # type: ignore[arg-type]
    )


class Recording:
    """Answers every text with label "a" and remembers the batch sizes it was given."""

    def __init__(self, m: Manifest) -> None:
        self.manifest = m
        self.batches: list[int] = []

    def check_input(self, text: str) -> None:
        pass

    def predict(self, texts: list[str], top_k: int = 3, deadlines: list[float] | None = None) -> list[Prediction]:
        self.batches.append(len(texts))
        return [Prediction("a", 1.0) for _ in texts]

    def close(self) -> None:
        pass


class Passes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, float]] = []

    def pass_done(self, model: str, waits: Iterable[float], seconds: float) -> None:
        self.seen.append((model, len(list(waits)), seconds))


@pytest.mark.parametrize(
    ("runtime", "quantization", "limit"),
    [("onnx", "static", 32), ("onnx", "none", 32), ("onnx", "dynamic", 1), ("onnx", None, 1), ("gguf", None, 1)],
)
def test_batch_limit(runtime: str, quantization: str | None, limit: int) -> None:
    assert batch_limit(manifest(runtime, quantization), 32) == limit


async def served_burst(m: Manifest, wait_s: float, n: int = 20) -> tuple[Recording, Passes, list[Any]]:
    runtime, passes = Recording(m), Passes()
    served = Served(ModelEntry(name="m", path="unused"), m, runtime, batch_max=8, meter=passes, batch_wait_s=wait_s)
    worker = asyncio.create_task(served.work())
    loop = asyncio.get_running_loop()
    try:
        answers = await asyncio.gather(*(served.predict(f"t{i}", loop.time() + 10) for i in range(n)))
    finally:
        worker.cancel()
    return runtime, passes, answers


def test_queued_texts_share_a_pass_up_to_batch_max() -> None:
    runtime, passes, answers = asyncio.run(served_burst(manifest(), 0.0))
    assert len(answers) == 20 and sum(runtime.batches) == 20
    assert max(runtime.batches) == 8 and len(runtime.batches) < 20
    assert [size for _, size, _ in passes.seen] == runtime.batches  # the meter hears every pass


def test_a_dynamic_int8_model_takes_one_text_per_pass() -> None:
    runtime, _, answers = asyncio.run(served_burst(manifest(quantization="dynamic"), 0.0))
    assert len(answers) == 20 and runtime.batches == [1] * 20


def test_batch_wait_gathers_texts_that_arrive_just_after_the_first() -> None:
    async def trickle() -> list[int]:
        m = manifest()
        runtime = Recording(m)
        served = Served(ModelEntry(name="m", path="unused"), m, runtime, batch_max=8, batch_wait_s=0.5)
        worker = asyncio.create_task(served.work())
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(served.predict("t0", loop.time() + 10))
        await asyncio.sleep(0)  # the worker takes t0 and waits for company
        rest = [asyncio.ensure_future(served.predict(f"t{i}", loop.time() + 10)) for i in range(1, 4)]
        await asyncio.gather(first, *rest)
        worker.cancel()
        return runtime.batches

    assert asyncio.run(trickle()) == [4]


class Gated(Recording):
    """Holds each pass until the test opens the gate (a threading.Event): a pass is surely running."""

    def __init__(self, m: Manifest, label: str) -> None:
        super().__init__(m)
        import threading

        self.label, self.gate, self.entered = label, threading.Event(), threading.Event()

    def predict(self, texts: list[str], top_k: int = 3, deadlines: list[float] | None = None) -> list[Prediction]:
        self.entered.set()
        self.gate.wait(10)
        return [Prediction(self.label, 1.0) for _ in texts]


@pytest.mark.parametrize("handover", [True, False])
def test_a_stopped_candidate_finishes_its_pass_and_hands_the_queue_over(handover: bool) -> None:
    async def run() -> list[Any]:
        entry = ModelEntry(name="m", path="x")  # type: ignore[arg-type]
        candidate = Served(entry, manifest(), Gated(manifest(), "candidate"), batch_max=1)
        serving = Served(entry, manifest(), Recording(manifest()), batch_max=1)
        candidate.task = asyncio.create_task(candidate.work())
        serving_task = asyncio.create_task(serving.work())
        deadline = asyncio.get_running_loop().time() + 10
        first = asyncio.create_task(candidate.predict("one", deadline))
        await asyncio.to_thread(candidate.runtime.entered.wait, 10)  # type: ignore[attr-defined]
        queued = [asyncio.create_task(candidate.predict(t, deadline)) for t in ("two", "three")]
        await asyncio.sleep(0)  # let them reach the queue
        stopping = asyncio.create_task(candidate.stop(handover=serving if handover else None))
        candidate.runtime.gate.set()  # type: ignore[attr-defined]
        await stopping
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        serving_task.cancel()
        return [r.label if isinstance(r, Prediction) else type(r).__name__ for r in results]

    got = asyncio.run(run())
    assert got[0] == "candidate"  # the pass that was running delivered its answer
    assert got[1:] == (["a", "a"] if handover else ["Unavailable", "Unavailable"])
