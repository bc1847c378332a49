"""Stage `evaluate`: how good the served model is, and how sure it may be before it asks the cloud.

Runs labelled JSONL through the agent's runtime, scores intents and entities, measures latency,
fits the temperature on dev and picks the escalation threshold that keeps `target` accuracy on the
requests the device answers itself. Writes `report.json` and `report.png`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from edge_agent import manifest as mf
from edge_agent.errors import TooLarge
from edge_agent.runtimes.onnx import OnnxRuntime
from trainer import calibration, metrics, plot, records, serving, stage
from trainer.publish import PLOT, REPORT

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_TARGET = 0.98
WARMUP = 5
SAMPLES = 8  # warm-up inputs a device must answer as this model did


@dataclass
class Outputs:
    """What the runtime said about one file, row by row; rejected rows (too long) have NaN logits."""

    file: Path
    texts: list[str]
    gold: list[str]
    gold_mentions: list[list[metrics.Mention]]
    logits: np.ndarray
    mentions: list[list[metrics.Mention]]
    latency_ms: list[float]


def run(model_dir: Path, dev: Path, out: Path, test: Path | None = None, target: float = DEFAULT_TARGET) -> Path:
    """Calibrate on dev, then report dev (and test, with dev's temperature and threshold)."""
    manifest = serving.describe(model_dir)
    runtime = serving.open_runtime(model_dir, manifest)
    dev_out = infer(runtime, manifest, dev)
    temperature, threshold = calibrate(dev_out, manifest.labels, target)
    report: dict[str, Any] = {
        "target_accuracy": target,
        "temperature": temperature,
        "threshold": threshold,
        "dev": section(dev_out, manifest.labels, temperature, threshold),
    }
    if test:
        report["test"] = section(infer(runtime, manifest, test), manifest.labels, temperature, threshold)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out / REPORT, out / PLOT)
    results = {
        "temperature": temperature,
        "thresholds": {"escalate": threshold, "target_accuracy": target},
        "metrics": {split: report[split]["headline"] for split in ("dev", "test") if split in report},
        "samples": samples(dev_out, manifest.labels, temperature),
    }
    inputs = {"model": model_dir / manifest.file("model").path, "dev": dev, **({"test": test} if test else {})}
    stage.write(out, "evaluate", {"target_accuracy": target}, inputs, results)
    return out


def standalone(
    folder: Path,
    data: Path,
    report_path: Path,
    calibrate_here: bool = False,
    target: float = DEFAULT_TARGET,
    write_manifest: bool = False,
    key: Ed25519PrivateKey | None = None,
) -> dict[str, Any]:
    """`edge-trainer evaluate ARTIFACT --data FILE`: the artifact's own temperature and threshold, or
    (with `calibrate_here`) ones fitted on FILE, optionally written back into the manifest."""
    manifest = serving.describe(folder)
    out = infer(serving.open_runtime(folder, manifest), manifest, data)
    temperature, threshold = manifest.temperature, manifest.thresholds.escalate
    if calibrate_here:
        temperature, threshold = calibrate(out, manifest.labels, target)
    report: dict[str, Any] = {
        "artifact": f"{manifest.name} {manifest.version}",
        "temperature": temperature,
        "threshold": threshold,
        "data": section(out, manifest.labels, temperature, threshold),
    }
    write_report(report, report_path, report_path.with_suffix(".png"))
    if write_manifest and (folder / mf.MANIFEST).is_file():
        updated = manifest.model_copy(
            update={
                "temperature": temperature,
                "thresholds": mf.Thresholds(escalate=threshold, target_accuracy=target if calibrate_here else None),
                "metrics": {**manifest.metrics, "dev": report["data"]["headline"]},
            }
        )
        mf.write(folder, updated, key)
    return report


def samples(out: Outputs, labels: list[str], temperature: float, count: int = SAMPLES) -> list[dict[str, str]]:
    """Dev rows answered right and most confidently, one label at a time: the manifest's warm-up set.

    The most confident answers are the ones another CPU's int8 arithmetic cannot flip, so a device
    that answers one of them differently has a broken artifact or runtime, not a rounding difference.
    """
    confidence, correct = _confidence(out, labels, temperature)
    by_label: dict[str, list[tuple[float, int]]] = {}
    for i in np.flatnonzero(correct):
        by_label.setdefault(out.gold[i], []).append((-float(confidence[i]), int(i)))
    queues = [sorted(rows) for _, rows in sorted(by_label.items())]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        chosen += [q.pop(0)[1] for q in queues if q][: count - len(chosen)]
    return [{"text": out.texts[i], "label": out.gold[i]} for i in chosen]


def infer(runtime: OnnxRuntime, manifest: mf.Manifest, path: Path) -> Outputs:
    """Every record as its own request, as the device answers them: dynamic int8 quantizes activations
    per call, so padding in a batch would change the answers. Each `predict` is also a latency sample."""
    recs = records.read(path)
    logits = np.full((len(recs), len(manifest.labels)), np.nan, dtype=np.float64)
    mentions: list[list[metrics.Mention]] = [[] for _ in recs]
    timings: list[float] = []
    for rec in recs[:WARMUP]:
        _request(runtime, rec.text)
    for i, rec in enumerate(tqdm(recs, desc=f"evaluate {path.name}", leave=False, unit="request")):
        started = time.perf_counter()
        answer = _request(runtime, rec.text)
        if answer is not None:
            timings.append((time.perf_counter() - started) * 1000)
            logits[i], mentions[i] = runtime.logits([rec.text])[0], answer
    return Outputs(
        file=path,
        texts=[r.text for r in recs],
        gold=[r.intent for r in recs],
        gold_mentions=[[(e.type, e.value) for e in r.entities] for r in recs],
        logits=logits,
        mentions=mentions,
        latency_ms=timings,
    )


def _request(runtime: OnnxRuntime, text: str) -> list[metrics.Mention] | None:
    """The entities of one request, or None when the model refuses it (too long)."""
    try:
        prediction = runtime.predict([text])[0]
    except TooLarge:
        return None
    return [(e.type, e.value) for e in prediction.entities]


def calibrate(out: Outputs, labels: list[str], target: float) -> tuple[float, float]:
    """Temperature by dev NLL; then the lowest threshold that keeps `target` accuracy on dev."""
    served = ~np.isnan(out.logits).any(axis=1)
    gold = np.array([labels.index(g) if g in labels else -1 for g in out.gold])
    known = served & (gold >= 0)
    temperature = calibration.fit_temperature(out.logits[known], gold[known]) if known.any() else 1.0
    confidence, correct = _confidence(out, labels, temperature)
    return temperature, calibration.pick_threshold(confidence, correct, target)


def _confidence(out: Outputs, labels: list[str], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and correctness per row; rejected rows count as wrong with confidence 0."""
    served = ~np.isnan(out.logits).any(axis=1)
    probs = calibration.softmax(np.nan_to_num(out.logits), temperature)
    confidence = np.where(served, probs.max(axis=1), 0.0)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    correct = np.array([s and p == g for s, p, g in zip(served, predicted, out.gold, strict=True)], dtype=float)
    return confidence, correct


def section(out: Outputs, labels: list[str], temperature: float, threshold: float) -> dict[str, Any]:
    """The report for one file: scores, calibration, risk-coverage, the threshold's effect, latency."""
    served = ~np.isnan(out.logits).any(axis=1)
    probs = calibration.softmax(np.nan_to_num(out.logits), temperature)
    predicted = [labels[i] if s else "<rejected>" for i, s in zip(probs.argmax(axis=1), served, strict=True)]
    confidence, correct = _confidence(out, labels, temperature)
    raw_confidence, _ = _confidence(out, labels, 1.0)
    intent = metrics.intents(out.gold, predicted)
    entity = metrics.entities(out.gold_mentions, out.mentions)
    chosen = calibration.selective(confidence, correct, threshold)
    lat = np.array(out.latency_ms) if out.latency_ms else np.zeros(1)
    headline = {
        "examples": len(out.gold),
        "rejected": int((~served).sum()),
        "intent_accuracy": intent["accuracy"],
        "intent_macro_f1": intent["macro_f1"],
        "entity_precision": entity["precision"],
        "entity_recall": entity["recall"],
        "entity_f1": entity["f1"],
        "ece_uncalibrated": calibration.ece(raw_confidence, correct),
        "ece": calibration.ece(confidence, correct),
        "escalated": chosen["escalated"],
        "kept_accuracy": chosen["kept_accuracy"],
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
    }
    return {
        "file": str(out.file),
        "sha256": mf.sha256_file(out.file),
        "headline": headline,
        "intent": intent,
        "entities": entity,
        "selective": chosen,
        "calibration": calibration.summary(confidence, correct),
        "confusions": confusions(out.gold, predicted),
    }


def confusions(gold: list[str], predicted: list[str], top: int = 15) -> list[dict[str, Any]]:
    """The most frequent (gold -> predicted) mistakes: where to look first."""
    pairs: dict[tuple[str, str], int] = {}
    for g, p in zip(gold, predicted, strict=True):
        if g != p:
            pairs[(g, p)] = pairs.get((g, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return [{"gold": g, "predicted": p, "count": n} for (g, p), n in ranked]


def write_report(report: dict[str, Any], path: Path, png: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot.draw(report, png)
