"""In-memory view of the latest results, read by /metrics and the API at scrape time.

The scheduler feeds results in (`record`); readers only look. Everything here is
plain data on the event loop's thread, so no locks are needed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from monitor.config import CheckConfig
from monitor.result import ProbeResult

DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Histogram:
    """Bucket counts for a Prometheus histogram (non-cumulative internally)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class CheckStats:
    """Everything /metrics says about one check."""

    check: CheckConfig
    last: ProbeResult | None = None
    reasons: Counter[str] = field(default_factory=lambda: Counter({"ok": 0}))
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))

    def record(self, result: ProbeResult) -> None:
        self.last = result
        self.reasons[result.reason.value] += 1
        self.durations.observe(result.duration)


class LiveState:
    """Latest results for the checks of the running config."""

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str], CheckStats] = {}
        self.scheduler_lag = Histogram(LAG_BUCKETS)
        self.missed_intervals = 0
        self.reload_ok = True
        self.ready = False

    def set_checks(self, checks: list[CheckConfig]) -> None:
        """Adopt a config's checks; known checks keep their counters, removed ones vanish."""
        old = self.checks
        self.checks = {}
        for check in checks:
            stats = old.get(check.key)
            if stats is None:
                stats = CheckStats(check)
            else:
                stats.check = check
            self.checks[check.key] = stats

    def record(self, result: ProbeResult) -> CheckStats | None:
        stats = self.checks.get((result.service, result.check))
        if stats is not None:  # a result for a check removed by a reload is dropped
            stats.record(result)
        return stats
