"""Allowances, breaker and trend with a hand-driven clock."""

from __future__ import annotations

from edge_agent.config.sections import Budget
from edge_agent.routing.guards import DAY, HOUR, Allowance, Allowances, Breaker, Trend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allowance_counts_a_sliding_hour_and_day() -> None:
    clock = Clock()
    allowance = Allowance(Budget(per_hour=2, per_day=3), clock)
    allowance.spend()
    allowance.spend()
    assert not allowance.allows()
    clock.now += HOUR
    assert allowance.allows()  # the hour slid past both calls
    allowance.spend()
    assert not allowance.allows()  # but the day holds three
    assert allowance.snapshot() == {"hour": {"used": 1, "limit": 2}, "day": {"used": 3, "limit": 3}}
    clock.now += DAY - HOUR + 0.001
    assert allowance.allows() and allowance.snapshot()["day"]["used"] == 1


def test_unlimited_budget_always_allows() -> None:
    allowance = Allowance(Budget(), Clock())
    for _ in range(1000):
        allowance.spend()
    assert allowance.allows()


def test_budgets_need_room_globally_and_per_model() -> None:
    clock = Clock()
    budgets = Allowances(Budget(per_hour=3), {"a": Budget(per_hour=1), "b": Budget()}, clock)
    budgets.spend("a")
    assert not budgets.allows("a") and budgets.allows("b")
    budgets.spend("b")
    budgets.spend("b")
    assert not budgets.allows("b")  # global hour is spent
    assert budgets.snapshot()["global"]["hour"]["used"] == 3
    assert budgets.snapshot()["a"]["hour"] == {"used": 1, "limit": 1}


def test_breaker_opens_after_n_failures_and_probes_once_after_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(failures=3, cooldown_s=30, clock=clock)
    for _ in range(2):
        assert breaker.allows()
        breaker.failure()
    breaker.success()  # a success resets the streak
    for _ in range(3):
        assert breaker.allows()
        breaker.failure()
    assert breaker.state == "open" and not breaker.allows()
    assert breaker.retry_in() == 30
    clock.now += 30
    assert breaker.state == "half_open"
    assert breaker.allows()  # the probe
    assert not breaker.allows()  # only one at a time
    breaker.failure()  # a failed probe opens it again at once
    assert breaker.state == "open" and breaker.retry_in() == 30
    clock.now += 30
    assert breaker.allows()
    breaker.success()
    assert breaker.state == "closed" and breaker.allows() and breaker.allows()
    assert breaker.snapshot() == {"state": "closed", "failures": 0, "retry_in_s": 0.0}


def test_breaker_release_frees_the_probe_without_a_verdict() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.now += 5
    assert breaker.allows()
    breaker.release()
    assert breaker.state == "half_open" and breaker.allows()


def test_trend_follows_recent_confidences() -> None:
    trend = Trend(alpha=0.5)
    assert trend.value == 1.0
    trend.add(0.2)
    trend.add(0.2)
    assert abs(trend.value - 0.4) < 1e-9
