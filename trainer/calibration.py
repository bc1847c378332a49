"""Confidence that means something: temperature scaling, calibration error, risk-coverage, threshold.

The agent escalates a request when softmax(logits / T).max() < thresholds.escalate; everything here
computes those two numbers on dev and shows what they buy.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    probs = softmax(logits, temperature)[np.arange(len(gold)), gold]
    return float(-np.log(np.clip(probs, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """T minimising dev negative log-likelihood: a log-spaced grid, then a finer one around the best."""
    grid = np.logspace(-1.5, 1.5, 61)
    best = min(grid, key=lambda t: nll(logits, gold, t))
    fine = np.linspace(best / 1.15, best * 1.15, 41)
    return round(float(min(fine, key=lambda t: nll(logits, gold, t))), 4)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Equal-width confidence bins with their mean confidence and accuracy (the reliability diagram)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            rows.append(
                {
                    "lo": round(float(lo), 4),
                    "hi": round(float(hi), 4),
                    "count": int(inside.sum()),
                    "confidence": round(float(confidence[inside].mean()), 4),
                    "accuracy": round(float(correct[inside].mean()), 4),
                }
            )
    return rows


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: |accuracy - confidence| per bin, weighted by the bin's share."""
    total = len(confidence)
    gaps = (
        row["count"] / total * abs(row["accuracy"] - row["confidence"])
        for row in reliability(confidence, correct, bins)
    )
    return round(float(sum(gaps)), 4)


def risk_coverage(confidence: np.ndarray, correct: np.ndarray, points: int = 100) -> list[dict[str, float]]:
    """Accuracy of the kept requests when the most confident `coverage` share is kept, per 1/points."""
    order = np.argsort(-confidence, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    curve = []
    for step in range(1, points + 1):
        k = max(1, round(len(order) * step / points))
        curve.append(
            {
                "coverage": round(k / len(order), 4),
                "accuracy": round(float(running[k - 1]), 4),
                "threshold": round(float(confidence[order][k - 1]), 6),
            }
        )
    return curve


def pick_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest threshold whose kept requests (confidence >= it) reach `target` accuracy.

    Lowest means most coverage. If no threshold reaches it, 1.0: escalate all but certain answers.
    """
    values = np.unique(confidence)[::-1]  # candidate thresholds, high to low
    best = 1.0
    for value in values:
        kept = confidence >= value
        if correct[kept].mean() >= target:
            best = float(value)
    return best


def selective(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """What a threshold does: share escalated, accuracy of what is kept."""
    kept = confidence >= threshold
    return {
        "threshold": round(threshold, 6),
        "escalated": round(float(1 - kept.mean()), 4),
        "coverage": round(float(kept.mean()), 4),
        "kept_accuracy": round(float(correct[kept].mean()), 4) if kept.any() else 1.0,
    }


def summary(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    return {
        "ece": ece(confidence, correct),
        "reliability": reliability(confidence, correct),
        "risk_coverage": risk_coverage(confidence, correct),
    }
