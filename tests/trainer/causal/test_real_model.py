"""A real pretrained model, end to end: SmolLM2-135M-Instruct's GGUF file -> `edge-trainer build-causal`
(import, a few LoRA steps, merge, GGUF, Q8_0, evaluation) -> the agent over MQTT answers with a real label.

Slow (a few minutes: the 98 MB GGUF is fetched once per machine, see bench/smollm2.py), run in CI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="the [gguf] extra (llama-cpp-python) is not installed")

from bench import smollm2
from edge_agent.contract.manifest import load
from tests.support.agent import ROOT, Agent, write_models
from tests.support.broker import Broker, client
from trainer import cli as trainer_cli

pytestmark = pytest.mark.slow
IOT = ROOT / "data" / "hwu64-iot"


def _subset(source: Path, out: Path, per_label: int) -> Path:
    """The first rows of each label: a small, balanced slice of the shipped data."""
    seen: dict[str, int] = {}
    kept = []
    for line in source.read_text().splitlines():
        label = json.loads(line)["intent"]
        if seen.get(label, 0) < per_label:
            seen[label] = seen.get(label, 0) + 1
            kept.append(line)
    out.write_text("\n".join(kept) + "\n")
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smollm2")
    train = _subset(IOT / "train.jsonl", root / "train.jsonl", 8)
    dev = _subset(IOT / "dev.jsonl", root / "dev.jsonl", 3)
    argv = ["build-causal", "--base", str(smollm2.gguf()), "--train", str(train), "--dev", str(dev)]
    argv += ["--name", "smollm2-iot", "--out", str(root / "smollm2-iot"), "--quant", "q8_0", "--llama-threads", "2"]
    argv += ["--max-steps", "16", "--batch-size", "8", "--lr", "1e-3", "--threads", "2"]
    assert trainer_cli.main(argv) == 0
    return root / "smollm2-iot"


def test_a_gguf_file_is_a_base_and_the_manifest_says_what_it_was(artifact: Path) -> None:
    manifest = load(artifact)
    assert manifest.base is not None and manifest.base.sha256 == smollm2.SHA256
    assert manifest.base.quantization == "Q4_1" and manifest.base.file == Path(smollm2.MEMBER).name
    assert manifest.label_scoring == "tree" and manifest.metrics["served"] == "q8_0"
    assert manifest.prompt is not None and "<|im_start|>system" in manifest.prompt.template
    assert manifest.metrics["dev"]["intent_accuracy"] > 3 / 9  # a few steps already learn: chance is 1/9


def test_the_agent_answers_with_the_real_model(
    artifact: Path, broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    """Dev texts the build box's model answered right: the device, over MQTT, answers them the same."""
    asked = {sample.text: sample.label for sample in load(artifact).samples[:3]}
    assert len(asked) == 3
    agent = agent_factory(write_models(tmp_path, [{"name": "intent", "path": str(artifact), "threads": 2}]))
    with client(broker.port) as c:
        c.subscribe("me/+")
        for n, text in enumerate(asked):
            c.publish(f"{agent.prefix}/req/intent", json.dumps({"text": text, "id": n}), f"me/{n}")
        replies = {msg.json()["id"]: msg.json() for msg in (c.get(timeout=60) for _ in asked)}
    for n, label in enumerate(asked.values()):
        # answered on the device: below the dev-calibrated threshold it is "local-fallback" (no cloud configured)
        assert replies[n]["label"] == label and replies[n]["source"] in ("local", "local-fallback"), replies[n]
        assert 0 < replies[n]["confidence"] <= 1
    assert agent.stop() == 0
