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
            if self.window is not None and status == MAJOR_OUTAGE and self.window.severity != MAJOR_OUTAGE:
                self.window = replace(self.window, severity=MAJOR_OUTAGE)
            return events
        self.status = status
        events.append(StateChanged(self.service, None, status, at))
        level = _LEVEL_OF_STATUS.get(status)
        current = None if self.window is None else LEVEL_OF_KIND[self.window.kind]
        if level == current:
            if status == MAJOR_OUTAGE and self.window is not None:
                self.window = replace(self.window, severity=MAJOR_OUTAGE)
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
    two) is a dns/connect failure. The gap starts at the earliest of those failures."""

    hosts: frozenset[str]
    gap: Gap | None = None
    _failing_since: dict[str, float] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.gap is not None

    def observe(self, host: str, at: float, reason: Reason) -> list[Event]:
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
            events.append(GapClosed(replace(self.gap, end=max(at, self.gap.start))))
            self.gap = None
        return events
