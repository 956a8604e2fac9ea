"""Counters a Runtime keeps about itself: wakes, runs and commit latency.

Plain in-memory numbers, cheap to update on the hot path; the HTTP server renders
them in the Prometheus text format (`GET /metrics`).
"""

from __future__ import annotations

import bisect
from collections import Counter

COMMIT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds (seconds) of the commit latency histogram; +Inf is implied."""


class Histogram:
    """A cumulative-on-read histogram with fixed bucket bounds."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, +Inf last."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Metrics:
    """What one Runtime has done since it opened."""

    def __init__(self) -> None:
        self.wakes: Counter[str] = Counter()
        """Inbox messages routed to a handler, by wake kind."""
        self.runs_started: Counter[str] = Counter()
        """Runs started, by mode."""
        self.runs_ended: Counter[tuple[str, str]] = Counter()
        """Runs ended, by (mode, outcome): completed, failed or cancelled."""
        self.commits = Histogram(COMMIT_BUCKETS)
        """Seconds each store commit took."""
        self.commit_errors = 0
