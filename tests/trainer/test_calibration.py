"""Temperature, calibration error, risk-coverage and the threshold, on numbers we can check by hand."""

from __future__ import annotations

import numpy as np

from trainer import calibration, metrics


def test_fit_temperature_recovers_the_scale_that_generated_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 4
    probs = calibration.softmax(logits, 2.0)
    gold = np.array([rng.choice(5, p=p) for p in probs])
    assert abs(calibration.fit_temperature(logits, gold) - 2.0) < 0.2


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    confidence = np.full(10, 0.8)
    correct = np.array([1.0] * 8 + [0.0] * 2)
    assert calibration.ece(confidence, correct) == 0.0
    assert calibration.ece(confidence, np.ones(10)) == 0.2


def test_threshold_is_the_lowest_that_keeps_the_target_accuracy() -> None:
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0], dtype=float)
    assert calibration.pick_threshold(confidence, correct, 0.98) == 0.9
    assert calibration.pick_threshold(confidence, correct, 0.75) == 0.7
    chosen = calibration.selective(confidence, correct, 0.9)
    assert chosen["escalated"] == 0.5 and chosen["kept_accuracy"] == 1.0
    assert calibration.pick_threshold(confidence, 1 - correct, 0.98) == 1.0  # never good enough: escalate


def test_risk_coverage_ends_at_full_coverage_with_plain_accuracy() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 1], dtype=float)
    curve = calibration.risk_coverage(confidence, correct, points=4)
    assert [p["accuracy"] for p in curve] == [1.0, 1.0, 0.6667, 0.75]
    assert curve[-1]["coverage"] == 1.0


def test_intent_and_entity_scores() -> None:
    report = metrics.intents(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert report["accuracy"] == 0.75
    assert report["per_label"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    ents = metrics.entities([[("room", "hall"), ("time", "noon")], []], [[("room", "hall")], [("time", "now")]])
    assert (ents["precision"], ents["recall"], ents["f1"]) == (0.5, 0.5, 0.5)
