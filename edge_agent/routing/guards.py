"""State that limits escalation: call budgets, a circuit breaker, a confidence trend.

The clock is injected, so tests drive time by hand; nothing here does I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from edge_agent.config.sections import Budget, CloudSettings

Clock = Callable[[], float]
HOUR, DAY = 3600.0, 86400.0
BreakerState = Literal["closed", "open", "half_open"]


class Allowance:
    """Calls spent in the last hour and day against one Budget (a sliding window)."""

    def __init__(self, budget: Budget, clock: Clock = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self._spent: deque[float] = deque()

    def _count(self, window: float) -> int:
        now = self.clock()
        while self._spent and self._spent[0] <= now - DAY:
            self._spent.popleft()
        return sum(1 for t in self._spent if t > now - window)

    def allows(self) -> bool:
        limits = ((self.budget.per_hour, HOUR), (self.budget.per_day, DAY))
        return all(limit is None or self._count(window) < limit for limit, window in limits)

    def spend(self) -> None:
        self._spent.append(self.clock())

    def snapshot(self) -> dict[str, Any]:
        return {
            "hour": {"used": self._count(HOUR), "limit": self.budget.per_hour},
            "day": {"used": self._count(DAY), "limit": self.budget.per_day},
        }


class Allowances:
    """A global allowance and one per model; a call needs room in both."""

    def __init__(self, overall: Budget, per_model: dict[str, Budget], clock: Clock = time.monotonic) -> None:
        self.overall = Allowance(overall, clock)
        self.models = {name: Allowance(b, clock) for name, b in per_model.items()}

    def allows(self, model: str) -> bool:
        own = self.models.get(model)
        return self.overall.allows() and (own is None or own.allows())

    def spend(self, model: str) -> None:
        self.overall.spend()
        if model in self.models:
            self.models[model].spend()

    def snapshot(self) -> dict[str, Any]:
        return {"global": self.overall.snapshot(), **{n: a.snapshot() for n, a in self.models.items()}}


class Breaker:
    """Closed until `failures` in a row; open for `cooldown_s`; then one probe decides (half-open)."""

    def __init__(self, failures: int, cooldown_s: float, clock: Clock = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.streak = 0
        self.opened_at: float | None = None
        self.probing = False

    @classmethod
    def of(cls, cloud: CloudSettings | None, clock: Clock = time.monotonic) -> Breaker:
        """The breaker for the configured cloud; with none, one that nothing trips and stays closed."""
        if cloud is None:
            return cls(failures=1, cooldown_s=0.0, clock=clock)
        return cls(cloud.breaker_failures, cloud.breaker_cooldown_s, clock)

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allows(self) -> bool:
        """May a call start now? In half-open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self.probing:
            return False
        self.probing = True
        return True

    def retry_in(self) -> float:
        """Seconds until a probe may start (0 when one may start now)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def success(self) -> None:
        self.streak, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        self.streak += 1
        if self.probing or self.streak >= self.failures:
            self.opened_at = self.clock()
        self.probing = False

    def release(self) -> None:
        """A call that ended without a verdict (cancelled by its deadline) frees the probe slot."""
        self.probing = False

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.streak, "retry_in_s": round(self.retry_in(), 3)}


class Trend:
    """Exponentially weighted mean of a model's recent local confidences (1.0 before any)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.value = 1.0

    def add(self, confidence: float) -> None:
        self.value += self.alpha * (confidence - self.value)
