"""From checks to services, and from many failures to "the monitor is offline" (pure).

* `service_status` rolls check states up into the Statuspage vocabulary.
* `ServiceTracker` turns changes of that status into service-level windows.
* `OfflineDetector` notices when every distinct host fails at once with dns/connect:
  then the monitor's own network is down, not the services, and that time is a gap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from monitor.outage import (
    LEVEL_OF_KIND,
    Event,
    Gap,
    GapClosed,
    GapOpened,
    Level,
    OutageWindow,
    State,
    StateChanged,
    WindowClosed,
    WindowOpened,
    WindowUpdated,
)
from monitor.reasons import Reason

OPERATIONAL = "operational"
DEGRADED_PERFORMANCE = "degraded_performance"
PARTIAL_OUTAGE = "partial_outage"
MAJOR_OUTAGE = "major_outage"
UNDER_MAINTENANCE = "under_maintenance"
SERVICE_STATUSES = (OPERATIONAL, DEGRADED_PERFORMANCE, PARTIAL_OUTAGE, MAJOR_OUTAGE, UNDER_MAINTENANCE)

_LEVEL_OF_STATUS = {
    MAJOR_OUTAGE: Level.DOWN,
    PARTIAL_OUTAGE: Level.DOWN,
    DEGRADED_PERFORMANCE: Level.DEGRADED,
}


def service_status(checks: Iterable[tuple[bool, State]], in_maintenance: bool = False) -> str:
    """Statuspage status of a service from (critical, state) of its checks.

    major_outage: every critical check is down; partial_outage: some are;
    degraded_performance: a check is degraded, or a non-critical check is down.
    Unknown checks do not count either way.
    """
    if in_maintenance:
        return UNDER_MAINTENANCE
    critical = [state for is_critical, state in checks if is_critical]
    others = [state for is_critical, state in checks if not is_critical]
    down = [s is State.DOWN for s in critical]
    if down and all(down):
        return MAJOR_OUTAGE
    if any(down):
        return PARTIAL_OUTAGE
    if any(s is State.DEGRADED for s in critical) or any(s in (State.DOWN, State.DEGRADED) for s in others):
        return DEGRADED_PERFORMANCE
    return OPERATIONAL


@dataclass
class ServiceTracker:
    """Service-level windows follow the service status: partial or major outage is a
    `down` window (severity: the worst status while it was open), degraded performance
    a `degraded` window."""

    service: str
    status: str = OPERATIONAL
    window: OutageWindow | None = None
    _last_end: float = field(default=float("-inf"))

    def update(self, status: str, at: float, start_hint: float | None = None) -> list[Event]:
        """Adopt `status` as of `at`. `start_hint` back-dates an opening window (the
        start of the check window that caused it)."""
        events: list[Event] = []
        if status == self.status:
            return events
        self.status = status
        events.append(StateChanged(self.service, None, status, at))
        level = _LEVEL_OF_STATUS.get(status)
        current = None if self.window is None else LEVEL_OF_KIND[self.window.kind]
        if level == current:
            if status == MAJOR_OUTAGE and self.window is not None and self.window.severity != status:
                self.window = replace(self.window, severity=MAJOR_OUTAGE)  # the worst while open
                events.append(WindowUpdated(self.window))
            return events
        start = at if start_hint is None else min(at, start_hint)
        if self.window is not None:
            end = max(self.window.start, start if level is not None else at)
            closed = replace(self.window, end=end)
            events.append(WindowClosed(closed))
            self._last_end = end
            self.window = None
        if level is not None:
            kind = "down" if level is Level.DOWN else "degraded"
            self.window = OutageWindow(self.service, None, kind, max(start, self._last_end),
                                       reason=status, severity=status)
            events.append(WindowOpened(self.window))
        return events


OFFLINE_REASONS = frozenset({Reason.DNS, Reason.CONNECT})


@dataclass
class OfflineDetector:
    """The monitor is offline when the latest result of every distinct host (at least
    two) is a dns/connect failure. The gap starts at the earliest of those failures.

    `latest_at` tells when each host last reported, so the pipeline can hold a
    dns/connect failure until every other host has spoken after it (then it is known
    whether the failure was the service's or ours)."""

    hosts: frozenset[str]
    gap: Gap | None = None
    latest_at: dict[str, float] = field(default_factory=dict)
    recent_gaps: list[Gap] = field(default_factory=list)  # closed gaps, newest last
    _failing_since: dict[str, float] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.gap is not None

    def observe(self, host: str, at: float, reason: Reason) -> list[Event]:
        self.latest_at[host] = max(at, self.latest_at.get(host, at))
        if reason in OFFLINE_REASONS:
            self._failing_since.setdefault(host, at)
        else:
            self._failing_since.pop(host, None)
        events: list[Event] = []
        if self.gap is None:
            if len(self.hosts) >= 2 and self.hosts <= self._failing_since.keys():
                self.gap = Gap(min(self._failing_since[h] for h in self.hosts), cause="offline")
                events.append(GapOpened(self.gap))
        elif reason not in OFFLINE_REASONS:
            closed = replace(self.gap, end=max(at, self.gap.start))
            events.append(GapClosed(closed))
            self.recent_gaps = [*self.recent_gaps[-9:], closed]
            self.gap = None
        return events

    def decided(self, host: str, at: float) -> bool:
        """Has every other host reported at or after `at`?"""
        return all(self.latest_at.get(h, float("-inf")) >= at for h in self.hosts if h != host)

    def covers(self, at: float) -> bool:
        """Was the monitor offline at `at`?"""
        if self.gap is not None and at >= self.gap.start:
            return True
        return any(g.start <= at <= (g.end or g.start) for g in self.recent_gaps)
