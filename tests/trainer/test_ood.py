"""Choosing the escalation rule on dev: each candidate keeps the target accuracy; the choice follows
the unseen-intent figures when there are some."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import ood


def test_auroc_reads_as_the_probability_an_unknown_scores_higher() -> None:
    assert ood.auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert ood.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert ood.auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert ood.auroc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5


def dev(rng: np.random.Generator, n: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Known dev: confidence predicts correctness; distance mostly small."""
    confidence = rng.uniform(0.3, 1.0, n)
    correct = (rng.uniform(0, 1, n) < confidence**0.3).astype(float)
    distance = rng.gamma(4.0, 1.0, n)
    return confidence, correct, distance


def test_every_candidate_keeps_the_target_accuracy_on_dev() -> None:
    confidence, correct, distance = dev(np.random.default_rng(0))
    rows = ood.candidates(confidence, correct, distance, 0.97)
    assert {r["rule"] for r in rows} == {"softmax", "distance", "either"}
    for row in rows:
        assert row["kept_accuracy"] >= 0.97, row
        mask = ood.escalates(confidence, distance, row["threshold"], row["max_distance"])
        assert row["escalated"] == pytest.approx(mask.mean(), abs=1e-4)


def test_with_unseen_intents_the_rule_that_catches_them_is_chosen() -> None:
    rng = np.random.default_rng(1)
    confidence, correct, distance = dev(rng)
    rows = ood.candidates(confidence, correct, distance, 0.95)
    # unseen requests: the softmax is sure of them, the distance sees them
    unseen = (rng.uniform(0.9, 1.0, 300), rng.gamma(4.0, 1.0, 300) + 20)
    chosen = ood.choose(rows, unseen)
    assert chosen["rule"] in ("either", "distance") and chosen["unseen_escalated"] >= 0.9
    softmax = next(r for r in rows if r["rule"] == "softmax")
    assert softmax["unseen_escalated"] < 0.5


def test_without_unseen_data_the_softmax_alone_or_the_fixed_rule() -> None:
    confidence, correct, distance = dev(np.random.default_rng(2))
    rows = ood.candidates(confidence, correct, distance, 0.95, (*ood.QUANTILES, 0.93))
    default = ood.choose(rows, None)
    assert (default["rule"], default["max_distance"]) == ("softmax", None)
    fixed = ood.choose(rows, None, ("either", 0.93))
    assert fixed["quantile"] == 0.93 and fixed["max_distance"] == pytest.approx(np.quantile(distance, 0.93))
    assert ood.choose(rows, None, ("distance", None))["threshold"] == 0.0


def test_a_refused_text_infinitely_far_leaves_every_limit_finite() -> None:
    confidence, correct, distance = dev(np.random.default_rng(3))
    distance[:5] = np.inf  # refused (too long): escalated whatever the rule
    rows = ood.candidates(confidence, correct, distance, 0.95)
    assert all(r["max_distance"] is None or np.isfinite(r["max_distance"]) for r in rows)
    assert all(r["kept_accuracy"] >= 0.95 for r in rows)
    no_distances = ood.candidates(confidence, correct, np.full(len(distance), np.inf), 0.95)
    assert [r["rule"] for r in no_distances] == ["softmax"]
    assert ood.choose(no_distances, None, ("either", 0.9))["rule"] == "softmax"
