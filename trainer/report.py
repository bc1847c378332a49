"""What both evaluate stages report, from logits the agent's runtime produced: scores, calibration,
the escalation threshold, latency, warm-up samples, and the `report.json` / `report.png` pair.

Light at import (numpy; matplotlib only once a plot is drawn), so each path's evaluation pulls in
its own runtime and nothing of the other path's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.contract import manifest as mf
from trainer import calibration, metrics

DEFAULT_TARGET = 0.98
SAMPLES = 8  # warm-up inputs a device must answer as this model did
REPORT, PLOT = "report.json", "report.png"


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
    distances: np.ndarray | None = None  # the distance score per row (NaN: rejected), where the model has one


def samples(out: Outputs, labels: list[str], temperature: float, count: int = SAMPLES) -> list[dict[str, str]]:
    """Dev rows answered right and most confidently, one label at a time: the manifest's warm-up set.

    The most confident answers are the ones another CPU's int8 arithmetic cannot flip, so a device
    that answers one of them differently has a broken artifact or runtime, not a rounding difference.
    """
    confidence, correct = confidences(out, labels, temperature)
    by_label: dict[str, list[tuple[float, int]]] = {}
    for i in np.flatnonzero(correct):
        by_label.setdefault(out.gold[i], []).append((-float(confidence[i]), int(i)))
    queues = [sorted(rows) for _, rows in sorted(by_label.items())]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        chosen += [q.pop(0)[1] for q in queues if q][: count - len(chosen)]
    return [{"text": out.texts[i], "label": out.gold[i]} for i in chosen]


def calibrate(out: Outputs, labels: list[str], target: float) -> tuple[float, float]:
    """Temperature by dev NLL; then the lowest threshold that keeps `target` accuracy on dev."""
    served = ~np.isnan(out.logits).any(axis=1)
    gold = np.array([labels.index(g) if g in labels else -1 for g in out.gold])
    known = served & (gold >= 0)
    temperature = calibration.fit_temperature(out.logits[known], gold[known]) if known.any() else 1.0
    confidence, correct = confidences(out, labels, temperature)
    return temperature, calibration.pick_threshold(confidence, correct, target)


def confidences(out: Outputs, labels: list[str], temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and correctness per row; rejected rows count as wrong with confidence 0."""
    served = ~np.isnan(out.logits).any(axis=1)
    probs = calibration.softmax(np.nan_to_num(out.logits), temperature)
    confidence = np.where(served, probs.max(axis=1), 0.0)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    correct = np.array([s and p == g for s, p, g in zip(served, predicted, out.gold, strict=True)], dtype=float)
    return confidence, correct


def section(
    out: Outputs, labels: list[str], temperature: float, threshold: float, max_distance: float | None = None
) -> dict[str, Any]:
    """The report for one file: scores, calibration, risk-coverage, the escalation rule's effect (the
    threshold, and the distance limit when the rule has one), latency."""
    served = ~np.isnan(out.logits).any(axis=1)
    probs = calibration.softmax(np.nan_to_num(out.logits), temperature)
    predicted = [labels[i] if s else "<rejected>" for i, s in zip(probs.argmax(axis=1), served, strict=True)]
    confidence, correct = confidences(out, labels, temperature)
    raw_confidence, _ = confidences(out, labels, 1.0)
    intent = metrics.intents(out.gold, predicted)
    entity = metrics.entities(out.gold_mentions, out.mentions)
    far = _far(out, max_distance)
    chosen = calibration.selective(np.where(far, -1.0, confidence), correct, threshold)
    chosen["unfamiliar"] = round(float(far.mean()), 4)
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
        **latency_headline(out.latency_ms),
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


def _far(out: Outputs, max_distance: float | None) -> np.ndarray:
    """Rows the distance limit escalates (a rejected row's NaN distance counts as far: it escalates anyway)."""
    if max_distance is None or out.distances is None:
        return np.zeros(len(out.gold), dtype=bool)
    far: np.ndarray = ~(out.distances <= max_distance)
    return far


def latency_headline(timings: list[float]) -> dict[str, float]:
    """p50 and p99 of single-request milliseconds (zeros when nothing was served)."""
    lat = np.array(timings) if timings else np.zeros(1)
    return {
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 3),
    }


def confusions(gold: list[str], predicted: list[str], top: int = 15) -> list[dict[str, Any]]:
    """The most frequent (gold -> predicted) mistakes: where to look first."""
    pairs: dict[tuple[str, str], int] = {}
    for g, p in zip(gold, predicted, strict=True):
        if g != p:
            pairs[(g, p)] = pairs.get((g, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return [{"gold": g, "predicted": p, "count": n} for (g, p), n in ranked]


def write_report(report: dict[str, Any], path: Path, png: Path, shown: dict[str, Any] | None = None) -> None:
    """The report as JSON, and its plot (of `shown` where only part of the report has sections)."""
    from trainer import plot  # matplotlib: only when a report is written

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot.draw(report if shown is None else shown, png)
