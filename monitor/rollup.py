"""From checks to services, and from many failures to "the monitor is offline" (pure).

* `service_status` rolls check states up into the Statuspage vocabulary (plus
  `unknown`: nothing is known about any critical check).
* `ServiceTracker` turns changes of that status into service-level windows.
* `OfflineDetector` decides when the monitor's own network is down, not the
  services: with connectivity canaries, when every canary fails; without them, when
  every distinct host fails at once with dns/connect. That time is a gap.
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
UNKNOWN = "unknown"
SERVICE_STATUSES = (OPERATIONAL, DEGRADED_PERFORMANCE, PARTIAL_OUTAGE, MAJOR_OUTAGE, UNDER_MAINTENANCE,
                    UNKNOWN)

_LEVEL_OF_STATUS = {
    MAJOR_OUTAGE: Level.DOWN,
    PARTIAL_OUTAGE: Level.DOWN,
    DEGRADED_PERFORMANCE: Level.DEGRADED,
}


def service_status(checks: Iterable[tuple[bool, State]], in_maintenance: bool = False) -> str:
    """Statuspage status of a service from (critical, state) of its checks.

    major_outage: every critical check is down; partial_outage: some are;
    degraded_performance: a check is degraded, or a non-critical check is down;
    unknown: every critical check is unknown (a service without critical checks: every
    check). Otherwise unknown checks do not count either way.
    """
    if in_maintenance:
        return UNDER_MAINTENANCE
    checks = list(checks)
    critical = [state for is_critical, state in checks if is_critical]
    others = [state for is_critical, state in checks if not is_critical]
    if all(s is State.UNKNOWN for s in critical or others):
        return UNKNOWN
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
    status: str = UNKNOWN
    window: OutageWindow | None = None
    _last_end: float = field(default=float("-inf"))

    def update(self, status: str, at: float, start_hint: float | None = None) -> list[Event]:
        """Adopt `status` as of `at`. `start_hint` back-dates an opening window (the
        start of the check window that caused it). `unknown` leaves an open window open:
        not seeing the service does not end its outage."""
        events: list[Event] = []
        if status == self.status:
            return events
        self.status = status
        events.append(StateChanged(self.service, None, status, at))
        if status == UNKNOWN:
            return events
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
# With canaries, a service's failure that the monitor's own network may have caused
# (no answer at all) waits for the canaries' verdict.
UNREACHED_REASONS = frozenset({Reason.DNS, Reason.CONNECT, Reason.TIMEOUT})


@dataclass
class OfflineDetector:
    """Is the monitor itself offline? Two ways to tell:

    * with connectivity `canaries` (targets that are not services): offline when the
      latest result of every canary failed, whatever the services do;
    * without canaries, inferred from the services: offline when the latest result of
      every distinct host (at least two) is a dns/connect failure.

    The gap starts at the earliest failure of that streak that came after the last
    answer of any canary (or host). `latest_at` tells when each voter last reported,
    so the pipeline can hold a failure that may be ours until every voter has spoken
    after it (then it is known whether the failure was the service's or ours)."""

    hosts: frozenset[str]
    canaries: frozenset[str] = frozenset()
    gap: Gap | None = None
    latest_at: dict[str, float] = field(default_factory=dict)  # by host, or by canary
    recent_gaps: list[Gap] = field(default_factory=list)  # closed gaps, newest last
    _failing_since: dict[str, float] = field(default_factory=dict)
    _last_ok: dict[str, float] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.gap is not None

    def holds(self, reason: Reason) -> bool:
        """Must a service's result with `reason` wait for the offline decision?"""
        if self.canaries:
            return reason in UNREACHED_REASONS
        return reason in OFFLINE_REASONS and len(self.hosts) >= 2

    def observe(self, host: str, at: float, reason: Reason) -> list[Event]:
        """A service's result. With canaries it decides nothing."""
        if self.canaries:
            return []
        return self._vote(host, self.hosts, at, reason not in OFFLINE_REASONS, minimum=2)

    def observe_canary(self, canary: str, at: float, answered: bool) -> list[Event]:
        """A canary's result: `answered` when it got through (any HTTP response, or a
        TCP connection)."""
        if canary not in self.canaries:
            return []
        return self._vote(canary, self.canaries, at, answered, minimum=1)

    def _vote(self, voter: str, voters: frozenset[str], at: float, answered: bool,
              minimum: int) -> list[Event]:
        if at < self.latest_at.get(voter, at):
            return []  # out of order: a later probe of this voter has already spoken
        self.latest_at[voter] = at
        if answered:
            self._failing_since.pop(voter, None)
            self._last_ok[voter] = max(at, self._last_ok.get(voter, at))
        else:
            self._failing_since.setdefault(voter, at)
        events: list[Event] = []
        if self.gap is None:
            if len(voters) >= minimum and voters <= self._failing_since.keys():
                after = max((self._last_ok.get(v, float("-inf")) for v in voters), default=float("-inf"))
                start = min((self._failing_since[v] for v in voters if self._failing_since[v] > after),
                            default=after)  # (only if an answer and a failure share a start time)
                self.gap = Gap(start, cause="offline")
                events.append(GapOpened(self.gap))
        elif answered:
            closed = replace(self.gap, end=max(at, self.gap.start))
            events.append(GapClosed(closed))
            self.recent_gaps = [*self.recent_gaps[-9:], closed]
            self.gap = None
        return events

    def decided(self, host: str, at: float) -> bool:
        """Has every canary (without canaries: every other host) reported at or after `at`?"""
        voters = self.canaries or self.hosts - {host}
        return all(self.latest_at.get(v, float("-inf")) >= at for v in voters)

    def started_after(self, at: float) -> bool:
        """Has a gap that started after `at` been seen (a result made before it, and
        decided only now)?"""
        return any(g.start > at for g in (*self.recent_gaps, *((self.gap,) if self.gap else ())))

    def covers(self, at: float) -> bool:
        """Was the monitor offline at `at`?"""
        if self.gap is not None and at >= self.gap.start:
            return True
        return any(g.start <= at <= (g.end or g.start) for g in self.recent_gaps)
