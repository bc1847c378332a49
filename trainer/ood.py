"""The escalation rule, chosen on dev: softmax confidence, the distance score, or either of them.

Softmax confidence ranks the known intents' mistakes well but is often sure of a text whose intent the
model never saw (it must pick one of the labels it has). The distance of the pooled embedding to the
training data (`edge_agent.runtimes.distance`) sees those. Which rule to ship is measured, not assumed:
each candidate is set to keep `target` accuracy on the dev requests the device answers itself, and
scored by how many known dev requests it escalates and, when an `unseen` file is given (intents held
out of training, never the test split), how many of those it escalates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer import calibration

# shares of known dev texts a distance limit keeps (on HWU64 the limit that catches 90 % of unseen intents
# keeps only ~75 % of known ones: the grid reaches down to a half)
QUANTILES = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0)
UNSEEN_TARGET = 0.90  # share of unseen-intent requests a rule should escalate


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties half: 1.0 separates perfectly, 0.5 is chance."""
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    u = ranks[len(known) :].sum() - len(unknown) * (len(unknown) + 1) / 2
    return round(float(u / max(1, len(known) * len(unknown))), 4)


def escalates(confidence: np.ndarray, distance: np.ndarray, threshold: float, max_distance: float | None) -> np.ndarray:
    """Which requests a rule sends to the cloud, as the agent's router decides it."""
    far = distance > max_distance if max_distance is not None else np.zeros(len(confidence), dtype=bool)
    escalated: np.ndarray = (confidence < threshold) | far
    return escalated


def candidates(
    confidence: np.ndarray,
    correct: np.ndarray,
    distance: np.ndarray,
    target: float,
    quantiles: tuple[float, ...] = QUANTILES,
) -> list[dict[str, Any]]:
    """Every rule at its dev operating point: the lowest thresholds that keep `target` accuracy; for
    `either`, one per distance limit (the share `quantiles` of dev texts it keeps)."""
    rows = [_row("softmax", None, calibration.pick_threshold(confidence, correct, target), None)]
    finite = distance[np.isfinite(distance)]  # a refused text is infinitely far (it escalates anyway)
    if len(finite):
        rows.append(_row("distance", None, 0.0, _distance_limit(distance, correct, target)))
    for q in sorted(set(quantiles)) if len(finite) else []:
        limit = float(np.quantile(finite, q))
        near = np.where(distance <= limit, confidence, -1.0)
        rows.append(_row("either", q, max(0.0, calibration.pick_threshold(near, correct, target)), limit))
    for row in rows:
        mask = escalates(confidence, distance, row["threshold"], row["max_distance"])
        kept = ~mask
        row["escalated"] = round(float(mask.mean()), 4)
        row["kept_accuracy"] = round(float(correct[kept].mean()), 4) if kept.any() else 1.0
    return rows


def _row(rule: str, quantile: float | None, threshold: float, max_distance: float | None) -> dict[str, Any]:
    return {"rule": rule, "quantile": quantile, "threshold": threshold, "max_distance": max_distance}


def _distance_limit(distance: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The largest distance limit whose kept requests (distance <= it) reach `target` accuracy."""
    order = np.argsort(distance, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero((running >= target) & np.isfinite(distance[order]))
    return float(distance[order][ok[-1]]) if len(ok) else 0.0


def choose(
    rows: list[dict[str, Any]],
    unseen: tuple[np.ndarray, np.ndarray] | None,
    fixed: tuple[str, float | None] | None = None,
    target_unseen: float = UNSEEN_TARGET,
) -> dict[str, Any]:
    """The rule to ship. `fixed` (rule, quantile) when the operator (or a probe build) already chose it.
    With unseen data: the fewest known escalations among the rules that escalate `target_unseen` of it,
    else the best margin (unseen escalated - known escalated). Without either: the softmax alone, as
    before there was a distance score (no evidence the distance helps here, so no change; it is still
    computed and reported)."""
    if unseen is not None:
        confidence, distance = unseen
        for row in rows:
            far = escalates(confidence, distance, row["threshold"], row["max_distance"])
            row["unseen_escalated"] = round(float(far.mean()), 4)
    if fixed is not None or unseen is None:
        rule, quantile = fixed or ("softmax", None)
        same = [r for r in rows if r["rule"] == rule and (rule != "either" or r["quantile"] == quantile)]
        return same[0] if same else rows[0]  # a rule this dev cannot set (no distances): the softmax
    meeting = [r for r in rows if r["unseen_escalated"] >= target_unseen]
    if meeting:
        return min(meeting, key=lambda r: (r["escalated"], -r["unseen_escalated"]))
    return max(rows, key=lambda r: (r["unseen_escalated"] - r["escalated"], -r["escalated"]))
