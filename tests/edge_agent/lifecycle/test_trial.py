"""The promotion rule: undecided until enough escalations are compared, then promote or reject."""

from __future__ import annotations

from edge_agent.config.models_file import PromotionRule
from edge_agent.lifecycle.trial import Counts, Trial, decide

RULE = PromotionRule(min_escalated=10, min_gain_pt=1.0, max_p99_ratio=1.2, max_error_increase=0.0)


def trial(serving_right: int, candidate_right: int, n: int = 10, candidate_ms: float = 10.0) -> Trial:
    t = Trial("m", "2", RULE)
    for i in range(n):
        cloud = "b"
        t.shadowed("b" if i < serving_right else "a", "b" if i < candidate_right else "a", cloud, False, f"t{i}")
    t.timed = (10.0, candidate_ms)  # the latency duel's p99s
    return t


def test_undecided_below_the_minimum_of_escalated_requests() -> None:
    verdict = trial(0, 9, n=9).judge()
    assert verdict.decision is None and "9 of 10" in verdict.why


def test_promoted_when_it_agrees_more_with_the_cloud() -> None:
    verdict = trial(5, 9).judge()
    assert verdict.decision == "promote"
    assert verdict.figures["cloud_gain_pt"] == 40.0 and verdict.figures["candidate_cloud_agreement"] == 0.9


def test_rejected_for_no_gain_for_latency_and_for_errors() -> None:
    assert trial(5, 5).judge().decision == "reject"
    slow = trial(5, 9, candidate_ms=13.0).judge()
    assert slow.decision == "reject" and "p99" in slow.why
    failing = trial(5, 9)
    failing.shadowed("b", None, None, False)
    verdict = failing.judge()
    assert verdict.decision == "reject" and "error rate" in verdict.why


def test_counts_add_up_across_devices() -> None:
    one, two = trial(5, 9, n=6).counts, trial(1, 5, n=6).counts
    total = one.add(two)
    assert total.escalated == 12 and total.candidate_agreed_with_cloud == 11
    assert decide(total, (10.0, 10.0), RULE).decision == "promote"
    assert decide(Counts(), (None, None), RULE).decision is None


def test_a_request_not_escalated_counts_agreement_with_serving_only() -> None:
    t = Trial("m", "2", RULE)
    t.shadowed("a", "a", None, True)
    t.shadowed("a", "b", None, False)
    assert t.counts.escalated == 0 and t.counts.agreed_with_serving == 1 and t.counts.candidate_would_escalate == 1


def test_a_gain_on_escalations_may_not_cost_the_confident_majority() -> None:
    t = trial(5, 9)
    for i in range(20):  # the serving model was sure of these; the candidate changes 2 of 20
        t.shadowed("a", "b" if i < 2 else "a", None, False)
    assert t.judge().decision == "reject" and "90.0% of what it was sure of" in t.judge().why
    t.shadowed("a", "a", None, False)  # 19 of 21 still < 95 %
    assert t.judge().decision == "reject"
    ok = trial(5, 9)
    for _ in range(20):
        ok.shadowed("a", "a", None, False)
    assert ok.judge().decision == "promote" and ok.judge().figures["kept_agreement"] == 1.0


def test_canary_errors_count_against_the_candidate() -> None:
    t = trial(5, 9)
    t.canary(False)
    verdict = t.judge()
    assert verdict.decision == "reject" and "error rate" in verdict.why


def test_the_duel_texts_are_the_newest_shadowed_ones() -> None:
    t = Trial("m", "2", RULE)
    for i in range(250):
        t.shadowed("a", "a", None, False, f"text {i}")
    assert len(t.texts) == 200 and t.texts[0] == "text 50" and t.p99s() == (None, None)
