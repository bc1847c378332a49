"""Stage `causal-evaluate`: every GGUF variant scored through the agent's own GGUF runtime.

classify: accuracy, macro-F1, calibration, risk-coverage and the escalation threshold, from the
label scores the device computes (`trainer.report.section`, as the encoder path's).
extract: JSON validity, field-level and whole-answer exact match, entity P/R/F1 over the fields,
intent accuracy when the intent is a field, calibration of the answer's probability.
Both: latency of single requests. The reference (f16/f32) comes first; each quantization's loss
against it is a measured number (`summary`), which publish copies into the manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_agent.errors import AgentError
from edge_agent.runtimes.gguf import GgufRuntime
from trainer import calibration, metrics, stage
from trainer.causal import data, fields
from trainer.causal.export import build_manifest
from trainer.report import (
    DEFAULT_TARGET,
    PLOT,
    REPORT,
    Outputs,
    calibrate,
    latency_headline,
    samples,
    section,
    write_report,
)

LATENCY_REQUESTS = 100
HEADLINE = ("intent_accuracy", "intent_macro_f1", "json_valid", "field_exact", "answer_exact", "entity_f1")


def run(
    export_dir: Path,
    dev: Path,
    out: Path,
    test: Path | None = None,
    target: float = DEFAULT_TARGET,
    threads: int = 1,
    serve: str | None = None,
) -> Path:
    """Each variant: fit temperature and threshold on dev, report dev (and test); the plot shows `serve`."""
    exported = stage.read(export_dir, "causal-export")["results"]
    spec = data.TaskSpec.load(export_dir)
    variants: dict[str, Any] = {}
    report: dict[str, Any] = {"target_accuracy": target, "variants": {}}
    if spec.base_source:  # a GGUF base was quantized before training: the figures are of a re-quantized model
        report["base"] = {**spec.base_source, "note": "the base was a quantized GGUF file, dequantized for training"}
    for name, rel in exported["files"].items():
        runtime = GgufRuntime(export_dir, build_manifest(export_dir, [(rel, "model")], spec), threads)
        try:
            variants[name], report["variants"][name] = _variant(runtime, spec, dev, test, target)
        finally:
            runtime.close()
        variants[name]["metrics"]["size_bytes"] = exported["sizes"][name]
        variants[name]["metrics"]["tensor_types"] = exported["tensor_types"][name]
    summary = _summary(variants, exported["reference"], spec.task)
    out.mkdir(parents=True, exist_ok=True)
    shown = report["variants"].get(serve or "") or next(iter(report["variants"].values()))
    plotted = {**{k: v for k, v in shown.items() if k in ("dev", "test")}, "target_accuracy": target}
    write_report({**report, "summary": summary}, out / REPORT, out / PLOT, plotted)
    results = {"variants": variants, "summary": summary, "reference": exported["reference"]}
    inputs = {"dev": dev, **({"test": test} if test else {})}
    stage.write(out, "causal-evaluate", {"target_accuracy": target, "threads": threads}, inputs, results)
    return out


def _variant(
    runtime: GgufRuntime, spec: data.TaskSpec, dev: Path, test: Path | None, target: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    score = classify_section if spec.task == "classify" else extract_section
    dev_sec, temperature, threshold = score(runtime, spec, dev, target, None)
    sections = {"dev": dev_sec}
    if test:
        sections["test"] = score(runtime, spec, test, target, (temperature, threshold))[0]
    results = {
        "temperature": temperature,
        "thresholds": {"escalate": threshold, "target_accuracy": target},
        "metrics": {split: sec["headline"] for split, sec in sections.items()},
        "samples": dev_sec.pop("samples", []),  # extraction has none yet: its warm-up is one smoke inference
    }
    for sec in sections.values():
        sec.pop("samples", None)
    return results, {"temperature": temperature, "threshold": threshold, **sections}


def classify_section(
    runtime: GgufRuntime, spec: data.TaskSpec, path: Path, target: float, fitted: tuple[float, float] | None
) -> tuple[dict[str, Any], float, float]:
    rows = data.read(path, spec.task, spec.fields_schema)
    logits = np.full((len(rows), len(spec.labels)), np.nan)
    for i, row in enumerate(tqdm(rows, desc=f"evaluate {path.name}", leave=False, unit="text")):
        try:
            logits[i] = runtime.scores(row.text)
        except AgentError:
            continue  # too long: counted as rejected
    gold = [r.intent or "" for r in rows]
    nothing: list[list[Any]] = [[] for _ in rows]
    texts = [r.text for r in rows]
    out = Outputs(path, texts, gold, nothing, logits, [[] for _ in rows], latency(runtime, rows))
    temperature, threshold = fitted or calibrate(out, spec.labels, target)
    scores = section(out, spec.labels, temperature, threshold)
    scores["samples"] = samples(out, spec.labels, temperature)  # the warm-up set, as the encoder's
    return scores, temperature, threshold


def extract_section(
    runtime: GgufRuntime, spec: data.TaskSpec, path: Path, target: float, fitted: tuple[float, float] | None
) -> tuple[dict[str, Any], float, float]:
    rows = data.read(path, spec.task, spec.fields_schema)
    predicted: list[dict[str, Any] | None] = []
    confidence = np.zeros(len(rows))
    for i, row in enumerate(tqdm(rows, desc=f"evaluate {path.name}", leave=False, unit="text")):
        try:
            prediction = runtime.predict([row.text])[0]
        except AgentError:
            predicted.append(None)
            continue
        predicted.append(prediction.fields)
        confidence[i] = prediction.confidence
    gold = [r.fields or {} for r in rows]
    correct = np.array([p == g for p, g in zip(predicted, gold, strict=True)], dtype=float)
    threshold = fitted[1] if fitted else calibration.pick_threshold(confidence, correct, target)
    scores = _extract_scores(path, gold, predicted, confidence, correct, threshold, spec.labels)
    scores["headline"].update(latency_headline(latency(runtime, rows)))
    return scores, 1.0, threshold


def _extract_scores(
    path: Path,
    gold: list[dict[str, Any]],
    predicted: list[dict[str, Any] | None],
    confidence: np.ndarray,
    correct: np.ndarray,
    threshold: float,
    labels: list[str],
) -> dict[str, Any]:
    keys = [(g, p or {}, k) for g, p in zip(gold, predicted, strict=True) for k in set(g) | set(p or {})]
    entity = metrics.entities([fields.mentions(g) for g in gold], [fields.mentions(p) for p in predicted])
    chosen = calibration.selective(confidence, correct, threshold)
    headline: dict[str, Any] = {
        "examples": len(gold),
        "json_valid": round(sum(p is not None for p in predicted) / max(1, len(gold)), 4),
        "field_exact": round(sum(g.get(k) == p.get(k) for g, p, k in keys) / max(1, len(keys)), 4),
        "answer_exact": round(float(correct.mean()), 4) if len(correct) else 0.0,
        "entity_precision": entity["precision"],
        "entity_recall": entity["recall"],
        "entity_f1": entity["f1"],
        "ece": calibration.ece(confidence, correct),
        "escalated": chosen["escalated"],
        "kept_accuracy": chosen["kept_accuracy"],
    }
    scores: dict[str, Any] = {"file": str(path), "headline": headline, "entities": entity, "selective": chosen}
    if labels:
        said = [str((p or {}).get(fields.INTENT, "<invalid>")) for p in predicted]
        intent = metrics.intents([str(g.get(fields.INTENT)) for g in gold], said)
        headline.update(intent_accuracy=intent["accuracy"], intent_macro_f1=intent["macro_f1"])
        scores["intent"] = intent
    scores["calibration"] = calibration.summary(confidence, correct)
    return scores


def latency(runtime: GgufRuntime, rows: list[data.Example]) -> list[float]:
    """Milliseconds per single request through the runtime, after three warm-up requests."""
    timings = []
    texts = [r.text for r in rows[:LATENCY_REQUESTS]]
    for i, text in enumerate([*texts[:3], *texts]):
        started = time.perf_counter()
        try:
            runtime.predict([text])
        except AgentError:
            continue
        if i >= 3:
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def _summary(variants: dict[str, Any], reference: str, task: str) -> dict[str, Any]:
    """Per variant: size, headline numbers, and their change against the reference (points, signed)."""
    base = variants[reference]["metrics"]
    keys = HEADLINE if task == "extract" else HEADLINE[:2]
    out: dict[str, Any] = {}
    for name, results in variants.items():
        row: dict[str, Any] = {k: results["metrics"][k] for k in ("size_bytes", "tensor_types")}
        for split in ("dev", "test"):
            if split not in results["metrics"]:
                continue
            now, ref = results["metrics"][split], base[split]
            row[split] = {k: now[k] for k in (*keys, "latency_ms_p50") if k in now}
            row[split]["delta_vs_" + reference] = {
                k: round((now[k] - ref[k]) * 100, 2) for k in keys if k in now and k in ref
            }
        out[name] = row
    return out
