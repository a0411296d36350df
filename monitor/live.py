"""In-memory view of the latest results and outage state, read by /metrics and the API.

Two writers, both on the probe path: `record(result)` counts a result as it comes,
and `apply(event)` follows an outage event once it is durably stored (the pipeline;
restore replays the stored events through the same `apply`). So what a scrape or the
API shows is always already in the database. Readers only look: a scrape, an API call
or a page render never changes anything here (what they cache, they keep themselves,
keyed by `CheckStats.version`). Everything is plain data on the event loop's thread,
so no locks are needed.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from monitor.availability import WINDOWS, Interval, availability
from monitor.config import CheckConfig, ServiceConfig
from monitor.outage import (
    Event,
    Gap,
    GapClosed,
    GapOpened,
    OutageWindow,
    State,
    StateChanged,
    WindowClosed,
    WindowOpened,
    WindowUpdated,
)
from monitor.result import ProbeResult
from monitor.status import UNKNOWN
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
    first_seen: float | None = None  # the first result ever
    first_known: float | None = None  # the first time its state was known: observed time starts here
    unknown_why: str = ""  # what made it unknown (StateChanged.why), while it is
    down_spans: list[Interval] = field(default_factory=list)  # down windows, recent first-to-last
    unknown_spans: list[Interval] = field(default_factory=list)  # from the state timeline
    version: int = 0  # counts changes of state and windows (readers key their caches on it)

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

    def set_state(self, state: State, at: float, why: str = "") -> None:
        if state is State.UNKNOWN and self.state is not State.UNKNOWN:
            self.unknown_spans.append((at, None))
            self.unknown_why = why
        elif state is not State.UNKNOWN and self.unknown_spans and self.unknown_spans[-1][1] is None:
            self.unknown_spans[-1] = (self.unknown_spans[-1][0], at)
        if state is not State.UNKNOWN:
            self.unknown_why = ""
            if self.first_known is None or at < self.first_known:
                self.first_known = at
        self.state = state
        self.version += 1
        self._prune(at)

    def window_opened(self, window: OutageWindow) -> None:
        self.window = window
        if window.kind == "down":
            self.outages_opened += 1
            self.last_down = window
            self.down_spans.append((window.start, None))
        self.version += 1

    def window_closed(self, window: OutageWindow) -> None:
        self.window = None
        if window.kind == "down":
            self.last_down = self.last_closed_down = window
            for i in range(len(self.down_spans) - 1, -1, -1):
                if self.down_spans[i] == (window.start, None):
                    self.down_spans[i] = (window.start, window.end)
                    break
            self._prune(window.end or window.start)
        self.version += 1

    def availability(self, now: float, gaps: list[Interval],
                     maintenance: list[Interval]) -> dict[str, float | None]:
        """Availability per window at `now` (computed; nothing is kept)."""
        # Observed time starts when the state was first known: before that (no result
        # yet, or only results that tell nothing) it has no value, not 100 %.
        if self.down_spans:
            unknown = [*self.unknown_spans, *gaps, *maintenance]
            return {name: availability(now, span, self.first_known, self.down_spans, unknown)
                    for name, span in WINDOWS.items()}
        # never down: 1.0 wherever anything was observed (most checks, most of the time)
        return _never_down(now, self.first_known, [*self.unknown_spans, *gaps, *maintenance])

    def _prune(self, now: float) -> None:
        """Forget spans that ended before the longest availability window (on the
        event path, never by a reader)."""
        horizon = now - max(WINDOWS.values())
        if _ended_before(self.down_spans, horizon):
            self.down_spans = [s for s in self.down_spans if s[1] is None or s[1] > horizon]
        if _ended_before(self.unknown_spans, horizon):
            self.unknown_spans = [s for s in self.unknown_spans if s[1] is None or s[1] > horizon]


def _ended_before(spans: list[Interval], horizon: float) -> bool:
    """Did the oldest of `spans` (in time order) end before `horizon`?"""
    return bool(spans) and spans[0][1] is not None and spans[0][1] <= horizon  # type: ignore[operator]


_ALL_UP = dict.fromkeys(WINDOWS, 1.0)


def _never_down(now: float, first_known: float | None, unknown: list[Interval]) -> dict[str, float | None]:
    """`availability` of every window for a check without down time."""
    if first_known is None:
        return dict.fromkeys(WINDOWS)
    if not unknown and now - first_known > 1e-9:
        return _ALL_UP
    # 1.0 where some time was observed, else None (as `availability` decides it)
    return {name: None if availability(now, span, first_known, (), unknown) is None else 1.0
            for name, span in WINDOWS.items()}


@dataclass
class ServiceStats:
    service: ServiceConfig
    status: str = UNKNOWN  # nothing is known before the first results
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

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # Readers take "now" from here: the daemon's clock (monitor.clock), which the
        # times in this state come from, and which never goes backwards.
        self.now = clock
        self.checks: dict[tuple[str, str], CheckStats] = {}
        self.services: dict[str, ServiceStats] = {}
        self.gaps: list[Gap] = []
        self.gaps_version = 0  # counts changes of `gaps`
        self.scheduler_lag = Histogram(LAG_BUCKETS)
        self.missed_intervals = 0
        self.storage_errors = 0
        self.storage_replaced = 0  # the database file found deleted or replaced (a fresh one opened)
        self.reload_ok = True
        self.ready = False
        self.notifications: dict[str, TargetStats] = {}  # notify.targets by name
        self.checks_skipped = 0  # checks of the config left out for a missing key
        # Told the key of each check with a new result or a new state (monitor.metrics
        # renders these in the background, so a scrape finds them ready; what it keeps
        # is its own).
        self.on_change: list[Callable[[tuple[str, str]], None]] = []

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
            self._changed(stats.check.key)
        return stats

    def apply(self, event: Event) -> None:
        """Follow one outage event (stored already, or replayed from the store)."""
        if isinstance(event, StateChanged):
            if event.check is None:
                if (sstats := self.services.get(event.service)) is not None:
                    sstats.status = event.state
            elif (stats := self.checks.get((event.service, event.check))) is not None:
                stats.set_state(State(event.state), event.at, event.why)
                self._changed(stats.check.key)
        elif isinstance(event, (WindowOpened, WindowClosed, WindowUpdated)):
            w = event.window
            if w.check is None:
                if (sstats := self.services.get(w.service)) is not None:
                    sstats.window = None if isinstance(event, WindowClosed) else w
                    if w.kind == "down":
                        sstats.last_down = w
            elif (stats := self.checks.get((w.service, w.check))) is not None:
                if isinstance(event, WindowOpened):
                    stats.window_opened(w)
                elif isinstance(event, WindowClosed):
                    stats.window_closed(w)
                elif stats.window is not None and stats.window.start == w.start:
                    stats.window = w
                    stats.version += 1
                self._changed(stats.check.key)
        elif isinstance(event, GapOpened):
            self.gaps.append(event.gap)
            self.gaps_version += 1
        elif isinstance(event, GapClosed):
            horizon = (event.gap.end or event.gap.start) - max(WINDOWS.values())
            self.gaps = [g for g in self.gaps if (g.start != event.gap.start or g.end is not None)
                         and (g.end is None or g.end > horizon)]
            self.gaps.append(event.gap)
            self.gaps_version += 1

    def _changed(self, key: tuple[str, str]) -> None:
        for tell in self.on_change:
            tell(key)

    def replay(self, events: Iterable[Event], first_seen: dict[tuple[str, str], float] | None = None,
               since: float = float("-inf")) -> None:
        """Restore from stored events (after a restart): `apply` each, then zero what
        counts this process's doings only (windows opened since the start).
        `first_seen`: each check's first result ever; `since`: where the replayed
        history begins (a check seen before it was known before it, too)."""
        for event in events:
            self.apply(event)
        first_seen = first_seen or {}
        for key, stats in self.checks.items():
            stats.outages_opened = 0
            stats.first_seen = first_seen.get(key, stats.first_seen)
            if stats.first_seen is not None and stats.first_seen < since:
                # Seen before the history begins: its state then is not in the history.
                stats.first_known = min(stats.first_known or stats.first_seen, stats.first_seen)
            stats.version += 1

    @property
    def monitor_offline(self) -> bool:
        """Is the monitor itself offline now (an open gap of cause "offline")?"""
        return any(g.end is None and g.cause == "offline" for g in self.gaps)

    def gap_spans(self, now: float | None = None) -> list[Interval]:
        """The gaps overlapping the longest availability window before `now`."""
        horizon = (self.now() if now is None else now) - max(WINDOWS.values())
        return [(g.start, g.end) for g in self.gaps if g.end is None or g.end > horizon]
