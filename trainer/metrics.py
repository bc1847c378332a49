"""Scores from gold and predicted labels: intent accuracy / macro-F1 / per-label, entity exact match."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

Mention = tuple[str, str]  # (type, value): exact match on both is a hit


def prf(hits: int, predicted: int, gold: int) -> dict[str, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def intents(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the gold labels, and a per-label table (precision, recall, F1, support)."""
    support = Counter(gold)
    said = Counter(predicted)
    hits = Counter(g for g, p in zip(gold, predicted, strict=True) if g == p)
    table = {
        label: {**prf(hits[label], said[label], support[label]), "support": support[label]} for label in sorted(support)
    }
    correct = sum(hits.values())
    return {
        "accuracy": round(correct / len(gold), 4) if gold else 0.0,
        "macro_f1": round(sum(row["f1"] for row in table.values()) / max(1, len(table)), 4),
        "per_label": table,
    }


def entities(gold: Sequence[Sequence[Mention]], predicted: Sequence[Sequence[Mention]]) -> dict[str, Any]:
    """Micro P/R/F1 over mentions, exact (type, value), counted as multisets per utterance; per type too."""
    hits: Counter[str] = Counter()
    said: Counter[str] = Counter()
    wanted: Counter[str] = Counter()
    for gold_row, pred_row in zip(gold, predicted, strict=True):
        matched = Counter(gold_row) & Counter(pred_row)
        for (kind, _), n in matched.items():
            hits[kind] += n
        said.update(kind for kind, _ in pred_row)
        wanted.update(kind for kind, _ in gold_row)
    table = {
        kind: {**prf(hits[kind], said[kind], wanted[kind]), "support": wanted[kind]} for kind in sorted(wanted | said)
    }
    return {
        **prf(sum(hits.values()), sum(said.values()), sum(wanted.values())),
        "mentions": sum(wanted.values()),
        "per_type": table,
    }
