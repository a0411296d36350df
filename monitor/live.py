"""In-memory view of the latest results and outage state, read by /metrics and the API.

The pipeline writes here only after an event is durably stored, so what a scrape or
the API shows is always already in the database. Readers only look. Everything is
plain data on the event loop's thread, so no locks are needed.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field

from monitor.availability import WINDOWS, Interval, availability
from monitor.config import CheckConfig, ServiceConfig
from monitor.outage import Gap, OutageWindow, State
from monitor.result import ProbeResult
from monitor.rollup import OPERATIONAL
from monitor.statuspage import VendorStatus, detection_lead

DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TTFT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
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

    def cumulative_counts(self) -> list[int]:
        """Cumulative counts per bucket, +Inf last."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass
class CheckStats:
    """Everything /metrics and the API say about one check."""

    check: CheckConfig
    last: ProbeResult | None = None
    reasons: Counter[str] = field(default_factory=lambda: Counter({"ok": 0}))
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    ttfts: Histogram | None = None  # stream checks only
    state: State = State.UNKNOWN
    window: OutageWindow | None = None  # the open window, if any
    outages_opened: int = 0  # down windows opened since start
    last_down: OutageWindow | None = None  # the latest down window (open or closed)
    last_closed_down: OutageWindow | None = None
    first_seen: float | None = None
    down_spans: list[Interval] = field(default_factory=list)  # down windows, recent first-to-last
    unknown_spans: list[Interval] = field(default_factory=list)  # from the state timeline
    _availability: dict[str, float | None] = field(default_factory=dict)
    _availability_at: float = float("-inf")

    def record(self, result: ProbeResult) -> None:
        self.last = result
        self.reasons[result.reason.value] += 1
        self.durations.observe(result.duration)
        if result.ttft is not None:
            if self.ttfts is None:
                self.ttfts = Histogram(TTFT_BUCKETS)
            self.ttfts.observe(result.ttft)
        if self.first_seen is None:
            self.first_seen = result.started

    def set_state(self, state: State, at: float) -> None:
        if state is State.UNKNOWN and self.state is not State.UNKNOWN:
            self.unknown_spans.append((at, None))
        elif state is not State.UNKNOWN and self.unknown_spans and self.unknown_spans[-1][1] is None:
            self.unknown_spans[-1] = (self.unknown_spans[-1][0], at)
        self.state = state
        self._availability_at = float("-inf")

    def window_opened(self, window: OutageWindow) -> None:
        self.window = window
        if window.kind == "down":
            self.outages_opened += 1
            self.last_down = window
            self.down_spans.append((window.start, None))
        self._availability_at = float("-inf")

    def window_closed(self, window: OutageWindow) -> None:
        self.window = None
        if window.kind == "down":
            self.last_down = self.last_closed_down = window
            for i in range(len(self.down_spans) - 1, -1, -1):
                if self.down_spans[i] == (window.start, None):
                    self.down_spans[i] = (window.start, window.end)
                    break
        self._availability_at = float("-inf")

    @property
    def availability_at(self) -> float | None:
        """When the cached availability was computed (None: not yet)."""
        return None if self._availability_at == float("-inf") else self._availability_at

    def availability(self, now: float, gaps: list[Interval], maintenance: list[Interval],
                     max_age: float = 10.0) -> dict[str, float | None]:
        """Availability per window; recomputed at most every `max_age` seconds."""
        if now - self._availability_at > max_age:
            if self.down_spans:
                unknown = [*self.unknown_spans, *gaps, *maintenance]
                values = {
                    name: availability(now, span, self.first_seen, self.down_spans, unknown)
                    for name, span in WINDOWS.items()
                }
            else:  # never down: 1.0 wherever anything was observed (most checks, most of the time)
                values = _never_down(now, self.first_seen, [*self.unknown_spans, *gaps, *maintenance])
            if values != self._availability:  # same values: same dict (the metrics cache its text)
                self._availability = values
            self._availability_at = now
            self._prune(now)
        return self._availability

    def _prune(self, now: float) -> None:
        horizon = now - max(WINDOWS.values())
        self.down_spans = [s for s in self.down_spans if s[1] is None or s[1] > horizon]
        self.unknown_spans = [s for s in self.unknown_spans if s[1] is None or s[1] > horizon]


_ALL_UP = dict.fromkeys(WINDOWS, 1.0)


def _never_down(now: float, first_seen: float | None, unknown: list[Interval]) -> dict[str, float | None]:
    """`availability` of every window for a check without down time."""
    if first_seen is None:
        return dict.fromkeys(WINDOWS)
    if not unknown and now - first_seen > 1e-9:
        return _ALL_UP
    # 1.0 where some time was observed, else None (as `availability` decides it)
    return {name: None if availability(now, span, first_seen, (), unknown) is None else 1.0
            for name, span in WINDOWS.items()}


@dataclass
class ServiceStats:
    service: ServiceConfig
    status: str = OPERATIONAL
    window: OutageWindow | None = None  # the open service-level window
    last_down: OutageWindow | None = None  # the latest service-level outage window
    vendor: VendorStatus | None = None  # the vendor's own status page, last poll
    vendor_checked: float | None = None
    detection_lead: float | None = None  # vendor incident start - our window start

    def vendor_update(self, vendor: VendorStatus, now: float) -> None:
        """A new poll of the vendor's page; keeps the latest detection lead."""
        self.vendor, self.vendor_checked = vendor, now
        ours = self.last_down
        starts = [i.started for i in vendor.incidents if i.started is not None]
        if ours is not None and starts and (ours.end is None or min(starts) <= ours.end + 3600):
            self.detection_lead = detection_lead(ours.start, vendor)


@dataclass
class TargetStats:
    """One notification target's messages (monitor.delivery writes, /metrics reads)."""

    sent: int = 0
    failed: int = 0  # given up after every attempt failed
    dropped: int = 0  # pushed out of a full queue, or left when the target was removed
    queued: int = 0  # waiting to be sent, the one being sent included


class LiveState:
    """Latest results and outage state for the checks of the running config."""

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str], CheckStats] = {}
        self.services: dict[str, ServiceStats] = {}
        self.gaps: list[Gap] = []
        self.scheduler_lag = Histogram(LAG_BUCKETS)
        self.missed_intervals = 0
        self.storage_errors = 0
        self.reload_ok = True
        self.ready = False
        self.notifications: dict[str, TargetStats] = {}  # notify.targets by name
        # Checks with a new result since the metrics last rendered them (monitor.metrics
        # renders these in the background, so a scrape finds them ready).
        self.changed: set[tuple[str, str]] = set()

    def set_services(self, services: tuple[ServiceConfig, ...]) -> None:
        """Adopt a config's services and checks; known ones keep their state, removed
        ones vanish."""
        old_checks, old_services = self.checks, self.services
        self.checks, self.services = {}, {}
        for service in services:
            sstats = old_services.get(service.id) or ServiceStats(service)
            sstats.service = service
            self.services[service.id] = sstats
            for check in service.checks:
                stats = old_checks.get(check.key) or CheckStats(check)
                stats.check = check
                self.checks[check.key] = stats

    def record(self, result: ProbeResult) -> CheckStats | None:
        stats = self.checks.get((result.service, result.check))
        if stats is not None:  # a result for a check removed by a reload is dropped
            stats.record(result)
            self.changed.add(stats.check.key)
        return stats

    def gap_spans(self) -> list[Interval]:
        horizon = time.time() - max(WINDOWS.values())
        self.gaps = [g for g in self.gaps if g.end is None or g.end > horizon]
        return [(g.start, g.end) for g in self.gaps]
