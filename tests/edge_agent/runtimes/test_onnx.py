"""The ONNX runtime and the pool on a real tiny int8 artifact."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config.models_file import ModelEntry, ModelsFile
from edge_agent.contract.manifest import load
from edge_agent.errors import Timeout, TooLarge
from edge_agent.runtimes.onnx import OnnxRuntime
from edge_agent.runtimes.pool import ModelPool


@pytest.fixture(scope="module")
def runtime(tiny_artifact: Path) -> OnnxRuntime:
    return OnnxRuntime(tiny_artifact, load(tiny_artifact), threads=1)


def test_batch_equals_single_and_probabilities_are_sane(runtime: OnnxRuntime) -> None:
    texts = ["turn on the lights in the kitchen", "will it rain today", "lights off in the hall"]
    batch = runtime.predict(texts, top_k=3)
    for text, pred in zip(texts, batch, strict=True):
        single = runtime.predict([text], top_k=3)[0]
        # static int8 (the trainer's default): activation scales are fixed, so batch-mates and padding
        # change nothing (dynamic int8 moved a confidence by up to 0.06 here); the pool may batch it
        assert runtime.manifest.onnx is not None and runtime.manifest.onnx.quantization == "static"
        assert single.label == pred.label and abs(single.confidence - pred.confidence) < 1e-4
        assert pred.label in runtime.manifest.labels
        assert pred.top[0][0] == pred.label and len(pred.top) == 3
        assert abs(sum(p for _, p in pred.top) - 1) < 1e-4  # 3 labels: top-3 is the whole distribution
    logits = runtime.logits(texts)
    assert logits.shape == (3, len(runtime.manifest.labels)) and np.isfinite(logits).all()


def test_entities_point_into_the_text(runtime: OnnxRuntime) -> None:
    text = "switch the living room lights on"
    for entity in runtime.predict([text])[0].entities:
        assert text[entity.start : entity.end] == entity.value
        assert entity.type in runtime.manifest.entity_types


def test_too_many_tokens_is_too_large(runtime: OnnxRuntime) -> None:
    with pytest.raises(TooLarge, match="tokens"):
        runtime.predict(["lights " * (runtime.manifest.max_input_tokens + 5)])


def pool_for(artifact: Path) -> ModelPool:
    return ModelPool.load(ModelsFile(models=[ModelEntry(name="tiny", path=artifact)]), threads=1, batch_max=8)


def test_one_bad_text_in_a_batch_fails_alone(tiny_artifact: Path) -> None:
    pool = pool_for(tiny_artifact)
    served = pool.served["tiny"]

    async def scenario() -> list[object]:
        pool.start()
        deadline = time.monotonic() + 30
        long = "lights " * (served.manifest.max_input_tokens + 5)
        jobs = [served.predict(t, deadline) for t in ("lights on", long, "will it rain today")]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await pool.stop()
        return results

    ok1, bad, ok2 = asyncio.run(scenario())
    assert isinstance(bad, TooLarge)
    assert getattr(ok1, "label", None) in served.manifest.labels and getattr(ok2, "label", None)


def test_expired_deadline_is_a_timeout(tiny_artifact: Path) -> None:
    pool = pool_for(tiny_artifact)

    async def scenario() -> None:
        pool.start()
        try:
            await pool.served["tiny"].predict("lights on", time.monotonic() - 1)
        finally:
            await pool.stop()

    with pytest.raises(Timeout):
        asyncio.run(scenario())
