"""`edge-trainer build` end to end on a tiny encoder: real training, ONNX export, int8, evaluate, publish."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from edge_agent.contract import manifest as mf
from edge_agent.contract import signing
from edge_agent.errors import ArtifactError
from edge_agent.runtimes.onnx import OnnxRuntime
from trainer import ood
from trainer.cli import main
from trainer.encoder import base as encoder_base
from trainer.encoder import tiny
from trainer.records import builtin_records, write_builtin

FAST = [
    "--max-steps",
    "30",
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--head-lr",
    "3e-3",
    "--warmup",
    "0",
    "--label-smoothing",
    "0",
    "--dropout",
    "0",
    "--layer-decay",
    "1",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("build")
    data = write_builtin(root / "train.jsonl")
    base = encoder_base.make_tiny(root / "base")
    assert main(["keygen", "--out", str(root / "keys")]) == 0
    args = [
        "build",
        "--train",
        str(data),
        "--dev",
        str(data),
        "--test",
        str(data),
        "--name",
        "tiny-test",
        "--out",
        str(root / "artifacts" / "tiny-test"),
        "--base",
        str(base),
        "--max-tokens",
        "32",
        "--version",
        "1.0.0",
        "--signing-key-file",
        str(root / "keys" / "signing.key"),
        "--registry",
        str(root / "registry"),
        *FAST,
    ]
    assert main(args) == 0
    return root


def test_artifact_holds_only_served_files_and_verifies(built: Path) -> None:
    folder = built / "artifacts" / "tiny-test"
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "model.onnx",
        "ood.npy",
        "report.json",
        "report.png",
        "tokenizer.json",
    ]
    manifest = mf.load(folder, [signing.load_public(built / "keys" / "signing.pub")])
    assert (manifest.name, manifest.version, manifest.task, manifest.runtime) == (
        "tiny-test",
        "1.0.0",
        "classify+extract",
        "onnx",
    )
    assert manifest.labels == ["lights_off", "lights_on", "weather"]
    assert manifest.tags == ["O", "B-house_place", "I-house_place"]
    assert manifest.max_input_tokens == 32 and manifest.temperature > 0
    assert manifest.thresholds.target_accuracy == 0.98
    assert {"dev", "test"} <= set(manifest.metrics) and "intent_accuracy" in manifest.metrics["dev"]
    assert manifest.data["train"]["examples"] == 24 and len(manifest.data["train"]["sha256"]) == 64
    # no unseen intents given: the softmax alone; the distance table ships (reported, not used)
    assert manifest.ood is not None and manifest.ood.file == "ood.npy" and manifest.ood.rule == "softmax"
    assert manifest.ood.max_distance is None and len(manifest.ood.dev["candidates"]) == 2 + len(ood.QUANTILES)
    assert manifest.file("ood").path == "ood.npy"


def test_onnx_graph_is_int8_with_the_declared_io(built: Path) -> None:
    folder = built / "artifacts" / "tiny-test"
    manifest = mf.load(folder)
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [i.name for i in graph.input] == manifest.onnx.inputs == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["intent_logits", "tag_logits", "pooled"]
    assert manifest.onnx.embedding == "pooled"
    int8_ops = {"static": {"QuantizeLinear", "DequantizeLinear"}, "dynamic": {"MatMulInteger", "DynamicQuantizeLinear"}}
    assert manifest.onnx.quantization in int8_ops
    assert int8_ops[manifest.onnx.quantization] <= {node.op_type for node in graph.node}
    runtime = OnnxRuntime(folder, manifest)
    logits = runtime.logits(["turn on the lights in the kitchen", "will it rain"])
    assert logits.shape == (2, 3)
    answer = runtime.predict(["turn on the lights in the kitchen"])[0]
    assert answer.label in manifest.labels and answer.distance is not None and answer.distance >= 0


def test_every_stage_leaves_its_metadata_and_checks(built: Path) -> None:
    work = built / "artifacts" / ".work-tiny-test"
    stages = {d.name: json.loads((d / "stage.json").read_text()) for d in work.iterdir()}
    assert set(stages) == {"data", "finetune", "export", "evaluate"}
    assert stages["finetune"]["params"]["recipe"]["max_steps"] == 30
    checks = stages["export"]["results"]
    assert checks["parity_fp32_vs_torch"]["max_abs_diff_intent"] < 1e-3
    assert checks["chosen"] in ("int8-static", "int8-static-per-channel", "int8-dynamic", "int8-per-channel")
    assert checks["quantization"] == checks["kinds"][checks["chosen"]]
    assert (work / "export" / "model.fp32.onnx").is_file()


def test_evaluate_verb_reports_on_any_jsonl(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = built / "eval" / "report.json"
    assert (
        main(
            [
                "evaluate",
                str(built / "artifacts" / "tiny-test"),
                "--data",
                str(built / "train.jsonl"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    body = json.loads(report.read_text())
    assert body["data"]["headline"]["examples"] == 24
    assert {"risk_coverage", "reliability"} <= set(body["data"]["calibration"])
    assert report.with_suffix(".png").stat().st_size > 1000
    assert '"intent_accuracy"' in capsys.readouterr().out


def test_corrupted_artifact_is_refused(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = shutil.copytree(built / "artifacts" / "tiny-test", tmp_path / "broken")
    raw = bytearray((folder / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        mf.load(folder)
    code = main(["evaluate", str(folder), "--data", str(built / "train.jsonl"), "--report", str(tmp_path / "r.json")])
    assert code == 65 and capsys.readouterr().err.count("\n") == 1


def test_bad_name_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_builtin(tmp_path / "train.jsonl")
    assert (
        main(["build", "--train", str(data), "--dev", str(data), "--name", "no spaces", "--out", str(tmp_path / "a")])
        == 2
    )
    assert "--name 'no spaces'" in capsys.readouterr().err


def test_tiny_artifact_helper_is_a_valid_artifact(tiny_artifact: Path) -> None:
    manifest = mf.load(tiny_artifact)
    assert manifest.task == "classify+extract" and manifest.file("model").path == "model.onnx"


def test_module_entry_point_prints_help() -> None:
    done = subprocess.run([sys.executable, "-m", "trainer", "--help"], capture_output=True, text=True, check=True)
    assert "build" in done.stdout and "evaluate" in done.stdout


def test_data_without_entities_makes_a_classify_artifact(tmp_path: Path) -> None:
    records = [{"text": r["text"], "intent": r["intent"]} for r in builtin_records()]
    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    folder = tiny.build_tiny_artifact(tmp_path / "plain", train=data, name="plain", steps=5)
    manifest = mf.load(folder)
    assert manifest.task == "classify" and manifest.tags == ["O"] and manifest.entity_types == []
    assert OnnxRuntime(folder, manifest).predict(["will it rain"])[0].entities == []


def test_publish_fills_the_registry_and_warm_up_samples(built: Path) -> None:
    """The registry holds the signed artifact as published, latest.json points at it, and its
    warm-up samples are dev rows this model answers right, one label after another."""
    folder = built / "registry" / "tiny-test" / "1.0.0"
    trusted = [signing.load_public(built / "keys" / "signing.pub")]
    manifest = mf.load(folder, trusted)
    assert json.loads((built / "registry" / "tiny-test" / "latest.json").read_text())["version"] == "1.0.0"
    assert (folder / "manifest.json").read_bytes() == (built / "artifacts" / "tiny-test" / "manifest.json").read_bytes()
    assert manifest.samples and {s.label for s in manifest.samples} <= set(manifest.labels)
    runtime = OnnxRuntime(folder, manifest, 1)
    assert [runtime.predict([s.text])[0].label for s in manifest.samples] == [s.label for s in manifest.samples]


def test_keygen_never_overwrites_a_key(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (built / "keys" / "signing.key").read_bytes()
    assert main(["keygen", "--out", str(built / "keys")]) == 2
    assert "exists" in capsys.readouterr().err and (built / "keys" / "signing.key").read_bytes() == before
