"""The latency figure a new version is judged by, on probation and on trial: one definition of the p99."""

from __future__ import annotations

from collections.abc import Sequence


def p99(samples: Sequence[float]) -> float | None:
    """The 99th percentile (nearest rank, rounding down); None with no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
