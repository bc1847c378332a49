"""Probation: the window after a swap in which a new version proves itself on real traffic.

Pure bookkeeping, no I/O: the pool reports each local answer (ok or failed, and its latency), the
router each escalation where the cloud answered too (agreed or not). The verdict is `None` while
the window runs, `PASSED` when it ends with no limit crossed, else the reason for rolling back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_agent.config.sections import ProbationSettings
from edge_agent.lifecycle.latency import p99

PASSED = "passed"


class Probation:
    def __init__(self, limits: ProbationSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.started = clock()
        self.latencies: list[float] = []
        self.errors = 0
        self.agreed = 0
        self.compared = 0

    @property
    def answers(self) -> int:
        return len(self.latencies) + self.errors

    def answered(self, ok: bool, latency_ms: float) -> None:
        if ok:
            self.latencies.append(latency_ms)
        else:
            self.errors += 1

    def compared_with_cloud(self, agreed: bool) -> None:
        self.compared += 1
        self.agreed += agreed

    def verdict(self) -> str | None:
        """None: still watching; PASSED; or why the version must be rolled back."""
        failure = self._failure()
        if failure is not None:
            return failure
        elapsed_min = (self.clock() - self.started) / 60
        if self.answers >= self.limits.requests or elapsed_min >= self.limits.minutes:
            return PASSED
        return None

    def _failure(self) -> str | None:
        limits = self.limits
        if self.answers < limits.min_requests:
            return None
        rate = self.errors / self.answers
        if rate > limits.max_error_rate:
            return f"error rate {rate:.0%} over {self.answers} answers (limit {limits.max_error_rate:.0%})"
        p99 = self.p99()
        if limits.max_p99_ms is not None and p99 is not None and p99 > limits.max_p99_ms:
            return f"latency p99 {p99:.0f} ms over {len(self.latencies)} answers (limit {limits.max_p99_ms:g} ms)"
        if self.compared >= limits.min_requests and self.agreed / self.compared < limits.min_agreement:
            share, limit = self.agreed / self.compared, limits.min_agreement
            return f"agrees with the cloud on {share:.0%} of {self.compared} escalations (limit {limit:.0%})"
        return None

    def p99(self) -> float | None:
        return p99(self.latencies)

    def snapshot(self) -> dict[str, object]:
        p99 = self.p99()
        return {
            "answers": self.answers,
            "errors": self.errors,
            "p99_ms": None if p99 is None else round(p99, 1),
            "cloud_agreement": None if not self.compared else round(self.agreed / self.compared, 3),
        }
