"""The whole causal chain on tiny models made here: LoRA -> merge -> GGUF -> Q8_0/Q4_K_M -> the agent's
GGUF runtime -> the daemon over MQTT. A Llama (plain prompt) learns to classify, a Qwen2 (ChatML
chat template) to extract JSON fields; both are trained until they answer their task.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

pytest.importorskip("llama_cpp", reason="the [gguf] extra (llama-cpp-python) is not installed")

from edge_agent.config.models_file import ModelEntry
from edge_agent.contract.manifest import Manifest, load
from edge_agent.contract.prediction import Prediction
from edge_agent.errors import InvalidOutput, Timeout, TooLarge
from edge_agent.runtimes import gguf
from edge_agent.runtimes.gguf import GgufRuntime, log_softmax
from edge_agent.runtimes.grammar import max_bytes
from edge_agent.runtimes.pool import Served
from tests.support.agent import Agent, write_models
from tests.support.broker import Broker, client
from trainer import cli as trainer_cli
from trainer.causal import converter, data, export
from trainer.causal.tiny import build_tiny_artifact, corpus, make_base
from trainer.errors import TrainerError
from trainer.records import write_builtin

LIGHTS = {"turn on the lights in the kitchen": "lights_on", "switch the hall lights off": "lights_off"}
WEATHER = {"will it rain today": "weather"}
EXAMPLES = {**LIGHTS, **WEATHER}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QLoRA (nf4 + double quantization, on this CPU) -> the checked merge -> GGUF: the chain the mission names."""
    folder = tmp_path_factory.mktemp("gguf") / "tiny-classify"
    return build_tiny_artifact(folder, "llama", "classify", steps=300, qlora="on")  # nf4 learns slower: 300 steps


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Through the one command a user runs: `edge-trainer build-causal` (in process)."""
    root = tmp_path_factory.mktemp("gguf")
    records = write_builtin(root / "train.jsonl")
    base = make_base(root / "base", corpus(records), "qwen2")
    recipe = "--lr 1e-2 --batch-size 8 --max-steps 150 --train-embeddings true --lora-dropout 0 --warmup 0.05"
    argv = ["build-causal", "--base", str(base), "--train", str(records), "--dev", str(records), "--task", "extract"]
    argv += ["--name", "tiny-qwen2-extract", "--out", str(root / "tiny-extract"), "--dtype", "float32"]
    argv += ["--max-tokens", "32", "--threads", "1", *recipe.split()]
    assert trainer_cli.main(argv) == 0
    return root / "tiny-extract"


@pytest.fixture(scope="module")
def classify_rt(classifier: Path) -> Iterator[GgufRuntime]:
    runtime = GgufRuntime(classifier, load(classifier), threads=1)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def extract_rt(extractor: Path) -> Iterator[GgufRuntime]:
    runtime = GgufRuntime(extractor, load(extractor), threads=1)
    yield runtime
    runtime.close()


def test_manifest_records_every_variant_and_its_real_tensor_types(classifier: Path, extractor: Path) -> None:
    for artifact in (classifier, extractor):
        manifest = load(artifact)
        assert (
            manifest.runtime == "gguf" and manifest.prompt is not None and manifest.file("model").path == "model.gguf"
        )
        variants = manifest.metrics["variants"]
        assert set(variants) == {"f32", "q8_0", "q4_k_m"} and manifest.metrics["served"] == "q8_0"
        assert variants["q4_k_m"]["size_bytes"] < variants["q8_0"]["size_bytes"] < variants["f32"]["size_bytes"]
        assert "delta_vs_f32" in variants["q8_0"]["dev"]
        # width 64 is not a multiple of 256: llama.cpp fell back from Q4_K; the manifest says what it did
        assert set(manifest.metrics["tensor_types"]) == {"F32", "Q8_0"}  # the served file
        q4_mix = variants["q4_k_m"]["tensor_types"]
        assert "Q4_K" not in q4_mix and {"Q5_0", "Q8_0"} & set(q4_mix) and q4_mix["F32"]["tensors"] > 0
    assert load(classifier).metrics["dev"]["intent_accuracy"] == 1.0
    trained = load(classifier).metrics["training"]
    assert trained["mode"] == "qlora" and trained["merged_into"] == "dequantized" and trained["processes"] == 1
    assert trained["merge_agreement"]["next_token"] >= 0.95
    assert load(extractor).metrics["training"]["mode"] == "lora"
    assert load(extractor).metrics["dev"]["json_valid"] == 1.0
    assert load(extractor).prompt.stop == ["<|im_end|>"]  # type: ignore[union-attr]


def test_the_gguf_computes_what_the_merged_model_computes(extractor: Path, tmp_path: Path) -> None:
    """Converter parity, measured at export: next-token log-probs, torch vs llama.cpp, fp32 here."""
    work = extractor.parent / ".work-tiny-qwen2-extract"
    measured = json.loads((work / "export" / "stage.json").read_text())["results"]["parity"]
    assert measured["prompts"] > 0 and measured["max_logprob_diff"] < 1e-2
    broken = tmp_path / "broken"  # what a conversion bug looks like: one tensor off, the tokenizer intact
    shutil.copytree(work / "merged", broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.0.self_attn.q_proj.weight"))
    weights[name] = weights[name] * 4
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    converter.convert(broken, tmp_path / "broken.gguf", "f32")
    spec = data.TaskSpec.load(work / "export")
    with pytest.raises(TrainerError, match="differ from the merged model"):
        export.parity(work / "merged", tmp_path, "broken.gguf", spec, list(EXAMPLES))


def test_classify_scores_the_label_set(classify_rt: GgufRuntime) -> None:
    texts = list(EXAMPLES)
    batch = classify_rt.predict(texts, top_k=3)
    for text, pred in zip(texts, batch, strict=True):
        assert pred.label == EXAMPLES[text] and pred.top[0] == (pred.label, pred.confidence)
        assert abs(sum(p for _, p in pred.top) - 1) < 1e-6  # 3 labels: top-3 is the whole distribution
        assert {label for label, _ in pred.top} == set(classify_rt.manifest.labels)


def test_prefix_cache_does_not_change_scores(classify_rt: GgufRuntime, classifier: Path) -> None:
    warm = [classify_rt.scores(t) for t in EXAMPLES]  # each call reuses the template prefix of the last
    fresh = GgufRuntime(classifier, load(classifier), threads=1)
    try:
        cold = [fresh.scores(t) for t in reversed(list(EXAMPLES))][::-1]
    finally:
        fresh.close()
    for a, b in zip(warm, cold, strict=True):
        assert abs(a - b).max() < 1e-3


def _tree_logprob(runtime: GgufRuntime, text: str, toks: list[int]) -> float:
    """A label's probability under the label tree, token by token: softmax over the children at every
    node with more than one."""
    logits, total, prefix = runtime.llm.prefill(runtime.prompt_ids(text)), 0.0, ()
    for token in toks:
        kids = list(runtime.tree.children[prefix])
        if len(kids) > 1:
            total += float(log_softmax(logits[kids])[kids.index(token)])
        logits, prefix = runtime.llm.append([token]), (*prefix, token)
    return total


def test_tree_scores_are_exact_for_the_best_label(classify_rt: GgufRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree search against the label tree walked token by token, label by label: the best label
    always exact, every label exact with no pruning, and a distribution that sums to one either way."""
    assert classify_rt.manifest.label_scoring == "tree"  # what the trainer publishes and calibrates
    assert any(len(kids) == 1 for kids in classify_rt.tree.children.values())  # forced tokens to skip
    for text in EXAMPLES:
        exact = np.array([_tree_logprob(classify_rt, text, toks) for toks in classify_rt.label_ids])
        assert abs(np.logaddexp.reduce(exact)) < 1e-4  # the tree's distribution sums to one
        monkeypatch.setattr(gguf, "RIVALS", 0.0)  # only what could beat the best label is expanded
        monkeypatch.setattr(gguf, "CLOSE", 0)
        pruned = classify_rt.tree_scores(text)
        monkeypatch.setattr(gguf, "RIVALS", 1e9)
        monkeypatch.setattr(gguf, "CLOSE", 99)
        unpruned = classify_rt.tree_scores(text)
        best = int(np.argmax(exact))
        assert int(np.argmax(pruned)) == best and abs(pruned[best] - exact[best]) < 1e-4
        assert abs(np.logaddexp.reduce(pruned)) < 1e-4
        assert np.allclose(unpruned, exact, atol=1e-4)


def test_full_scores_are_exact_or_upper_bounds(classify_rt: GgufRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against scoring token by token: exact for the labels kept, an upper bound for those pruned."""
    text = "switch the hall lights off"
    pruned, margin = classify_rt.full_scores(text), gguf.PRUNE
    monkeypatch.setattr(gguf, "PRUNE", 0.0)  # everything but the greedy label keeps its bound
    bounded = classify_rt.full_scores(text)
    monkeypatch.setattr(gguf, "PRUNE", 1e9)  # no pruning: every label scored exactly
    full = classify_rt.full_scores(text)
    exact = []
    for j, toks in enumerate(classify_rt.label_ids):
        logits, total = classify_rt.llm.prefill(classify_rt.prompt_ids(text)), 0.0
        for token in toks:
            total += float(log_softmax(logits)[token])
            logits = classify_rt.llm.append([token])
        exact.append(total)
        assert abs(total - full[j]) < 1e-3
        assert pruned[j] >= total - 1e-3 and (pruned[j] < pruned.max() - margin or abs(pruned[j] - total) < 1e-3)
        assert bounded[j] >= total - 1e-3
    best = int(np.argmax(exact))
    assert abs(bounded[best] - exact[best]) < 1e-3  # the greedy label is the best one here, scored exactly


def test_scoring_agrees_with_generation(classify_rt: GgufRuntime) -> None:
    for text, label in EXAMPLES.items():
        assert classify_rt.complete(text, constrained=False).text == label


def test_too_many_tokens_is_too_large(classify_rt: GgufRuntime) -> None:
    with pytest.raises(TooLarge, match="tokens"):
        classify_rt.predict(["lights " * 40])


def test_extract_returns_valid_fields(extract_rt: GgufRuntime) -> None:
    pred = extract_rt.predict(["turn on the lights in the kitchen"])[0]
    assert pred.fields == {"intent": "lights_on", "house_place": "kitchen"}
    assert pred.label == "lights_on" and 0 < pred.confidence <= 1
    assert extract_rt.predict(["will it rain today"])[0].fields == {"intent": "weather"}


def test_work_past_the_deadline_stops_and_the_next_request_is_unharmed(
    classify_rt: GgufRuntime, extract_rt: GgufRuntime
) -> None:
    text = "turn on the lights in the kitchen"
    for runtime in (classify_rt, extract_rt):
        with pytest.raises(Timeout, match="deadline"):
            runtime.predict([text], deadlines=[time.monotonic() - 1])
    assert extract_rt.predict([text], deadlines=[time.monotonic() + 60])[0].fields == {
        "intent": "lights_on",
        "house_place": "kitchen",
    }
    assert classify_rt.predict([text], deadlines=[time.monotonic() + 60])[0].label == "lights_on"


def test_in_a_batch_only_the_text_past_its_deadline_times_out(classifier: Path, classify_rt: GgufRuntime) -> None:
    served = Served(ModelEntry(name="c", path=classifier), load(classifier), classify_rt, batch_max=2)
    try:
        late, ok = served._run(
            classify_rt, ["switch the hall lights off", "will it rain today"], [0.0, time.monotonic() + 60]
        )
    finally:
        served.executor.shutdown()
    assert isinstance(late, Timeout) and isinstance(ok, Prediction) and ok.label == "weather"


def test_answers_are_bounded_by_the_answers_seen_in_training(extractor: Path, extract_rt: GgufRuntime) -> None:
    """Not by the schema's worst case: that sizes the context (KV memory) for thousands of tokens."""
    manifest = load(extractor)
    assert manifest.max_answer_tokens is not None
    assert extract_rt.max_new == manifest.max_answer_tokens < max_bytes(manifest.fields_schema or {})
    tight = Manifest.model_validate({**manifest.model_dump(), "max_answer_tokens": 4})
    runtime = GgufRuntime(extractor, tight, threads=1)
    try:
        with pytest.raises(InvalidOutput, match="not JSON"):
            runtime.predict(["turn on the lights in the kitchen"])  # cut after 4 tokens
    finally:
        runtime.close()


def test_output_that_fails_the_schema_raises_invalid_output(extractor: Path) -> None:
    manifest = load(extractor)
    schema = json.loads(json.dumps(manifest.fields_schema))
    schema["properties"]["house_place"]["minLength"] = 50  # the grammar ignores it, validation does not
    stricter = Manifest.model_validate({**manifest.model_dump(), "fields_schema": schema})
    runtime = GgufRuntime(extractor, stricter, threads=1)
    try:
        with pytest.raises(InvalidOutput, match="fields schema"):
            runtime.predict(["turn on the lights in the kitchen"])
    finally:
        runtime.close()


def test_export_check_catches_a_tokenizer_that_differs(extractor: Path, tmp_path: Path) -> None:
    """Training's tokenizer against the GGUF's, token for token: another vocabulary is caught."""
    manifest = load(extractor)
    spec = data.TaskSpec(
        "extract",
        manifest.labels,
        manifest.prompt.model_dump(),
        manifest.fields_schema,
        manifest.max_input_tokens,  # type: ignore[union-attr]
    )
    samples = (list(EXAMPLES), ['{"intent":"weather"}'])
    same = data.load_tokenizer(make_base(tmp_path / "same", ["unused"], "qwen2", vocab_size=300))
    with pytest.raises(TrainerError, match="disagrees with the HF tokenizer"):
        export.verify(extractor, "model.gguf", spec, same, samples)


def test_agent_serves_both_over_mqtt(
    classifier: Path, extractor: Path, broker: Broker, tmp_path: Path, agent_factory: Callable[..., Agent]
) -> None:
    models = [
        {"name": "intent", "path": str(classifier), "threads": 1},
        {"name": "fields", "path": str(extractor), "threads": 1},
    ]
    agent = agent_factory(write_models(tmp_path, models))
    with client(broker.port) as c:
        c.subscribe("me/+")
        c.publish(f"{agent.prefix}/req/intent", json.dumps({"text": "will it rain today", "id": 1}), "me/a")
        c.publish(f"{agent.prefix}/req/fields", json.dumps({"text": "switch the hall lights off", "id": 2}), "me/b")
        replies = {msg.topic: msg.json() for msg in (c.get(), c.get())}  # two models, two workers: any order
        first, second = replies["me/a"], replies["me/b"]
    assert first["id"] == 1 and first["label"] == "weather" and first["source"] == "local"
    assert first["top"][0]["label"] == "weather" and "fields" not in first
    assert second["id"] == 2 and second["task"] == "extract" and second["label"] == "lights_off"
    assert second["fields"] == {"intent": "lights_off", "house_place": "hall"}
    assert agent.stop() == 0
