"""Static int8 (QDQ) on a tiny encoder: an answer is the same alone and inside a padded batch, which
dynamic int8 cannot promise; the export stage records every variant and serves by its rule."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edge_agent.contract import manifest as mf
from edge_agent.contract.prediction import Prediction
from edge_agent.runtimes.onnx import OnnxRuntime
from tests.trainer.encoder.test_build import FAST
from trainer import records, stage
from trainer.cli import main
from trainer.encoder import base as encoder_base
from trainer.encoder import export
from trainer.encoder.data import Labels
from trainer.records import write_builtin

STATIC = ["int8-static", "int8-static-per-channel"]
DYNAMIC = ["int8-dynamic", "int8-per-channel"]
# 32 texts from 1 to 30 words (all within the tiny model's 32 tokens), so a batch pads most of them
TEXTS = [
    "lights",
    "rain",
    "lights on",
    "hall lights off",
    "will it rain today",
    "how warm is it outside",
    "what is the weather like",
    "lights on in the bedroom",
    "lights off in the bedroom",
    "switch the hall lights on",
    "switch the hall lights off",
    "switch the kitchen lights on",
    "switch the bedroom lights off",
    "lights on in the living room",
    "lights off in the living room",
    "turn on the lights in the hall",
    "turn off the lights in the hall",
    "turn on the lights in the kitchen",
    "turn off the lights in the kitchen",
    "turn on the lights in the living room",
    "turn off the lights in the living room",
    "is it going to rain in the afternoon or will it stay dry",
    "please switch every light in the kitchen on right now",
    "could you turn off the lights in the hall before i go to bed",
    "what will the weather be like tomorrow morning when i leave",
    "turn on the lights in the kitchen and in the living room please",
    "i am cold how warm is it outside and will it rain later today",
    "switch the bedroom lights off and then the hall lights off as well",
    "it is dark in here so please turn on the lights in the living room now",
    "tell me what the weather is like outside and whether i need an umbrella today",
    "turn off the lights in the bedroom the hall the kitchen and the living room at once",
    "good evening could you please turn on all the lights in the kitchen and the hall for me",
]
PROBES = [
    "lights",
    "will it rain today",
    "turn on the lights in the kitchen",
    "switch the bedroom lights off",
    "it is dark in here so please turn on the lights in the living room now",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edge-trainer build` on the tiny encoder; returns the artifacts folder."""
    root = tmp_path_factory.mktemp("static")
    data = write_builtin(root / "train.jsonl")
    base = encoder_base.make_tiny(root / "base")
    out = root / "artifacts" / "tiny-static"
    args = ["build", "--train", str(data), "--dev", str(data), "--name", "tiny-static", "--out", str(out)]
    assert main([*args, "--base", str(base), "--max-tokens", "32", *FAST]) == 0
    return root / "artifacts"


@pytest.fixture(scope="module")
def export_dir(built: Path) -> Path:
    return built / ".work-tiny-static" / "export"


@pytest.fixture(scope="module")
def results(export_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads((export_dir / stage.META).read_text())["results"]
    return results


def variant_runtime(export_dir: Path, name: str) -> OnnxRuntime:
    """The agent's runtime on one int8 variant of the export folder, whichever was chosen."""
    meta = stage.read(export_dir, "export")
    files = [(f"model.{name}.onnx", "model"), (encoder_base.TOKENIZER, "tokenizer")]
    manifest = export.build_manifest(export_dir, name, "0", files, Labels.load(export_dir), meta, {})
    return OnnxRuntime(export_dir, manifest, 1)


def alone_and_inside(runtime: OnnxRuntime) -> list[tuple[Prediction, Prediction]]:
    """Each probe's prediction alone and inside a shuffled batch of 32 texts (at a different position
    each time), where it is padded to the batch's longest text."""
    order = random.Random(0).sample(TEXTS, len(TEXTS))
    pairs = []
    for i, probe in enumerate(PROBES):
        batch = [t for t in order if t != probe]
        at = (i * 7) % len(batch)
        batch.insert(at, probe)
        assert len(batch) == 32 and max(map(len, batch)) > len(probe)
        pairs.append((runtime.predict([probe])[0], runtime.predict(batch)[at]))
    return pairs


def test_manifest_records_the_chosen_quantization(built: Path, export_dir: Path, results: dict[str, Any]) -> None:
    manifest = mf.load(built / "tiny-static")
    assert manifest.onnx is not None
    scores, kinds = results["dev_intent_acc"], results["kinds"]
    best_static, best_dynamic = max(scores[n] for n in STATIC), max(scores[n] for n in DYNAMIC)
    expected = "static" if best_static >= best_dynamic - export.STATIC_TOLERANCE - 1e-9 else "dynamic"
    assert manifest.onnx.quantization == results["quantization"] == kinds[results["chosen"]] == expected
    assert manifest.onnx.batch_independent == (expected == "static")
    served = (built / "tiny-static" / export.MODEL).read_bytes()
    assert served == (export_dir / f"model.{results['chosen']}.onnx").read_bytes()
    # on this model every variant ties (checked below), so the rule serves static
    assert expected == "static", f"tiny model: static {best_static} vs dynamic {best_dynamic}"


def test_stage_json_lists_every_variant(results: dict[str, Any]) -> None:
    names = {"fp32", *STATIC, *DYNAMIC}
    assert set(results["dev_intent_acc"]) == set(results["kinds"]) == set(results["batch_max_abs_logit_diff"]) == names
    assert all(0.0 <= acc <= 1.0 for acc in results["dev_intent_acc"].values())
    assert {results["kinds"][n] for n in STATIC} == {"static"} and {results["kinds"][n] for n in DYNAMIC} == {"dynamic"}
    assert results["kinds"]["fp32"] == "none"
    assert results["chosen"] in (*STATIC, *DYNAMIC)
    # export's own check, on length-sorted batches of dev: static exact, dynamic moved by its batch
    diffs = results["batch_max_abs_logit_diff"]
    assert max(diffs[n] for n in STATIC) <= export.BATCH_TOLERANCE < min(diffs[n] for n in DYNAMIC)


@pytest.mark.parametrize("name", STATIC)
def test_static_answers_the_same_alone_and_in_a_batch(export_dir: Path, name: str) -> None:
    runtime = variant_runtime(export_dir, name)
    assert runtime.io.quantization == "static" and runtime.io.batch_independent
    for alone, inside in alone_and_inside(runtime):
        assert inside.label == alone.label and inside.entities == alone.entities
        assert inside.confidence == pytest.approx(alone.confidence, abs=1e-4)
    one_by_one = np.concatenate([runtime.logits([t]) for t in TEXTS])
    np.testing.assert_allclose(runtime.logits(TEXTS), one_by_one, rtol=0, atol=1e-4)  # all 32 at once


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_answers_move_with_the_batch(export_dir: Path, name: str) -> None:
    """The contrast that makes the check above mean something: the same probes, the same batch."""
    drift = max(abs(a.confidence - b.confidence) for a, b in alone_and_inside(variant_runtime(export_dir, name)))
    assert drift > 1e-4, f"{name}: dynamic int8 stayed within {drift:.1e}; the static test would not tell them apart"


def test_static_graph_quantizes_weights_and_leaves_logits_and_attention_float(export_dir: Path) -> None:
    graph = onnx.load(str(export_dir / "model.int8-static.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    producer = {out: node for node in graph.node for out in node.output}
    assert all(producer[out.name].op_type != "DequantizeLinear" for out in graph.output)
    weights = {init.name for init in graph.initializer}
    dq_of_weight = {
        node.output[0] for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in weights
    }
    for node in graph.node:
        if node.op_type == "MatMul":
            quantized = [i in producer and producer[i].op_type == "DequantizeLinear" for i in node.input]
            # either a quantized weight MatMul or a float activation x activation one (attention)
            assert (all(quantized) and any(i in dq_of_weight for i in node.input)) or not any(quantized), node.name
    assert any(node.op_type == "Softmax" for node in graph.node)
    softmax_inputs = [producer.get(node.input[0]) for node in graph.node if node.op_type == "Softmax"]
    assert all(p is None or p.op_type != "DequantizeLinear" for p in softmax_inputs)


def test_calibration_batches_carry_no_padding(built: Path) -> None:
    dev = records.load_split(built / ".work-tiny-static" / "data", "dev")
    reader = export.DevReader(dev, batch=4)
    feeds = list(iter(reader.get_next, None))
    assert len(feeds) == len(reader) and sum(f["input_ids"].shape[0] for f in feeds) == len(dev)
    assert all(f["input_ids"].dtype == np.int64 and f["attention_mask"].dtype == np.int64 for f in feeds)
    assert all(f["attention_mask"].all() and f["input_ids"].shape[0] <= 4 for f in feeds)
    reader.rewind()
    assert reader.get_next() is not None
    sample = export.calibration_sample([{"i": i} for i in range(1000)], limit=10)
    assert [ex["i"] for ex in sample] == list(range(0, 1000, 100))


def test_choice_rule(tmp_path: Path) -> None:
    variants = {}
    for name in (*STATIC, *DYNAMIC):
        variants[name] = tmp_path / name
        variants[name].write_bytes(b"x" * (len(name)))
    kinds = {name: "static" if name in STATIC else "dynamic" for name in variants}
    exact = dict.fromkeys(variants, 0.0)

    def scores(static: float, dynamic: float) -> dict[str, float]:
        return {name: static if name in STATIC else dynamic for name in variants}

    assert export.choose(variants, kinds, scores(0.9000, 0.9000), exact) == "int8-static"  # tie: the smaller
    assert export.choose(variants, kinds, scores(0.9000, 0.9050), exact) == "int8-static"  # within tolerance
    assert export.choose(variants, kinds, scores(0.9000, 0.9051), exact) == "int8-dynamic"  # beyond it
    assert export.choose(variants, kinds, {**scores(0.9, 0.9), "int8-static-per-channel": 0.91}, exact) == (
        "int8-static-per-channel"
    )
    leaky = {**exact, "int8-static": 0.01, "int8-static-per-channel": 0.01}
    assert export.choose(variants, kinds, scores(0.95, 0.9), leaky) == "int8-dynamic"


def test_export_folders_from_before_static_int8_read_as_dynamic(export_dir: Path) -> None:
    meta = stage.read(export_dir, "export")
    del meta["results"]["quantization"]
    files = [(export.MODEL, "model"), (encoder_base.TOKENIZER, "tokenizer")]
    manifest = export.build_manifest(export_dir, "old", "0", files, Labels.load(export_dir), meta, {})
    assert manifest.onnx is not None and manifest.onnx.quantization == "dynamic"
    assert not manifest.onnx.batch_independent
