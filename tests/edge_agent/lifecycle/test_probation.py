"""Probation's verdict on a hand-driven clock: each limit it watches, crossed and not."""

from __future__ import annotations

from edge_agent.config.sections import ProbationSettings
from edge_agent.lifecycle.probation import PASSED, Probation


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watched(**limits: float) -> tuple[Probation, Clock]:
    clock = Clock()
    settings = ProbationSettings(**{"requests": 1000, "minutes": 10.0, "min_requests": 10, **limits})
    return Probation(settings, clock), clock


def test_a_window_without_trouble_passes_by_count_or_by_time() -> None:
    probation, clock = watched(requests=20)
    for _ in range(19):
        probation.answered(True, 5.0)
    assert probation.verdict() is None
    probation.answered(True, 5.0)
    assert probation.verdict() == PASSED
    quiet, clock = watched()
    clock.now = 599.0
    assert quiet.verdict() is None
    clock.now = 600.0
    assert quiet.verdict() == PASSED


def test_errors_over_the_rate_fail_only_once_enough_answers_were_seen() -> None:
    probation, _ = watched(max_error_rate=0.1)
    for _ in range(5):
        probation.answered(False, 0.0)
    assert probation.verdict() is None  # 5 answers: below min_requests
    for _ in range(5):
        probation.answered(True, 1.0)
    assert (probation.verdict() or "").startswith("error rate 50%")


def test_a_p99_over_the_limit_rolls_back_and_one_slow_answer_in_two_hundred_does_not() -> None:
    probation, _ = watched(max_p99_ms=50.0)
    for _ in range(199):
        probation.answered(True, 10.0)
    probation.answered(True, 900.0)  # the slowest of 200: beyond the 99th percentile
    assert probation.p99() == 10.0 and probation.verdict() is None
    for _ in range(5):
        probation.answered(True, 900.0)
    verdict = probation.verdict() or ""
    assert verdict == "latency p99 900 ms over 205 answers (limit 50 ms)", verdict
    unwatched, _ = watched()  # no max_p99_ms: latency is not a limit
    for _ in range(20):
        unwatched.answered(True, 10_000.0)
    assert unwatched.verdict() is None


def test_agreement_with_the_cloud_below_the_limit_rolls_back() -> None:
    probation, _ = watched(min_agreement=0.6)
    for _ in range(10):
        probation.answered(True, 1.0)
    for agreed in [True] * 5 + [False] * 4:
        probation.compared_with_cloud(agreed)
    assert probation.verdict() is None  # 9 compared: below min_requests
    probation.compared_with_cloud(False)
    assert probation.verdict() == "agrees with the cloud on 50% of 10 escalations (limit 60%)"
    agreeing, _ = watched(min_agreement=0.5)
    for _ in range(10):
        agreeing.answered(True, 1.0)
        agreeing.compared_with_cloud(True)
    assert agreeing.verdict() is None
    assert agreeing.snapshot() == {"answers": 10, "errors": 0, "p99_ms": 1.0, "cloud_agreement": 1.0}
