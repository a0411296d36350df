"""From checks to services, and from many failures to "the monitor is offline" (pure).

* `service_status` rolls check states up into the Statuspage vocabulary (plus
  `unknown`: nothing is known about any critical check).
* `ServiceTracker` turns changes of that status into service-level windows.
* `OfflineDetector` decides when the monitor's own network is down, not the
  services: with connectivity canaries, when every canary fails; without them, when
  every distinct host fails at once with dns/connect. That time is a gap.
"""

from __future__ import annotations

import heapq
from collections import Counter
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
from monitor.status import (
    DEGRADED_PERFORMANCE,
    MAJOR_OUTAGE,
    OPERATIONAL,
    PARTIAL_OUTAGE,
    UNDER_MAINTENANCE,
    UNKNOWN,
)

_LEVEL_OF_STATUS = {
    MAJOR_OUTAGE: Level.DOWN,
    PARTIAL_OUTAGE: Level.DOWN,
    DEGRADED_PERFORMANCE: Level.DEGRADED,
}


class StatusCounts:
    """A service's checks counted by (critical, state): its status in O(1), kept up to
    date one check at a time (`move`), so a result costs the same in a service of 3
    checks or of 3,000."""

    __slots__ = ("critical", "others")

    def __init__(self) -> None:
        self.critical: Counter[State] = Counter()
        self.others: Counter[State] = Counter()

    def add(self, critical: bool, state: State, n: int = 1) -> None:
        (self.critical if critical else self.others)[state] += n

    def move(self, old: tuple[bool, State] | None, new: tuple[bool, State] | None) -> None:
        """One check went from `old` to `new` (None: not counted)."""
        if old == new:
            return
        if old is not None:
            self.add(*old, n=-1)
        if new is not None:
            self.add(*new)

    def status(self, in_maintenance: bool = False) -> str:
        """major_outage: every critical check is down; partial_outage: some are;
        degraded_performance: a check is degraded, or a non-critical check is down;
        unknown: every critical check is unknown (a service without critical checks:
        every check). Otherwise unknown checks do not count either way."""
        if in_maintenance:
            return UNDER_MAINTENANCE
        crit, others = self.critical, self.others
        n_crit = crit.total()
        voters, n_voters = (crit, n_crit) if n_crit else (others, others.total())
        if voters[State.UNKNOWN] == n_voters:
            return UNKNOWN
        if n_crit and crit[State.DOWN] == n_crit:
            return MAJOR_OUTAGE
        if crit[State.DOWN]:
            return PARTIAL_OUTAGE
        if crit[State.DEGRADED] or others[State.DOWN] or others[State.DEGRADED]:
            return DEGRADED_PERFORMANCE
        return OPERATIONAL


def service_status(checks: Iterable[tuple[bool, State]], in_maintenance: bool = False) -> str:
    """Statuspage status of a service from (critical, state) of its checks (see
    `StatusCounts.status`, which decides it)."""
    counts = StatusCounts()
    for critical, state in checks:
        counts.add(critical, state)
    return counts.status(in_maintenance)


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


class OfflineDetector:
    """Is the monitor itself offline? Two ways to tell:

    * with connectivity `canaries` (targets that are not services): offline when the
      latest result of every canary failed, whatever the services do;
    * without canaries, inferred from the services: offline when the latest result of
      every distinct host (at least two) is a dns/connect failure.

    The gap starts at the earliest failure of that streak that came after the last
    answer of any canary (or host). `latest_at` tells when each voter last reported,
    so the pipeline can hold a failure that may be ours until every voter has spoken
    after it (then it is known whether the failure was the service's or ours).

    Every question a result asks costs O(log voters) at most, not O(voters): the
    failing voters are counted, and the earliest report among the voters is kept in
    a heap."""

    def __init__(self, hosts: frozenset[str], canaries: frozenset[str] = frozenset()) -> None:
        self.gap: Gap | None = None
        self.latest_at: dict[str, float] = {}  # by host, or by canary
        self.recent_gaps: list[Gap] = []  # closed gaps, newest last
        self._failing_since: dict[str, float] = {}  # voters only
        self._last_ok: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (latest_at, voter); stale entries skipped
        self.set_voters(hosts, canaries)

    @property
    def hosts(self) -> frozenset[str]:
        return self._hosts

    @property
    def canaries(self) -> frozenset[str]:
        return self._canaries

    def set_voters(self, hosts: frozenset[str], canaries: frozenset[str] = frozenset()) -> None:
        """Adopt a config's hosts and canaries (what they said so far is kept)."""
        self._hosts, self._canaries = hosts, canaries
        self._voters = canaries or hosts
        for d in (self._failing_since, self._last_ok, self.latest_at):
            for v in [v for v in d if v not in self._voters]:
                del d[v]
        self._rebuild_heap()

    @property
    def offline(self) -> bool:
        return self.gap is not None

    def holds(self, reason: Reason) -> bool:
        """Must a service's result with `reason` wait for the offline decision?"""
        if self._canaries:
            return reason in UNREACHED_REASONS
        return reason in OFFLINE_REASONS and len(self._hosts) >= 2

    def observe(self, host: str, at: float, reason: Reason) -> list[Event]:
        """A service's result. With canaries it decides nothing."""
        if self._canaries:
            return []
        return self._vote(host, at, reason not in OFFLINE_REASONS, minimum=2)

    def observe_canary(self, canary: str, at: float, answered: bool) -> list[Event]:
        """A canary's result: `answered` when it got through (any HTTP response, or a
        TCP connection)."""
        if canary not in self._canaries:
            return []
        return self._vote(canary, at, answered, minimum=1)

    def _vote(self, voter: str, at: float, answered: bool, minimum: int) -> list[Event]:
        voters = self._voters
        if voter not in voters:
            return []
        before = self.latest_at.get(voter)
        if before is not None and at < before:
            return []  # out of order: a later probe of this voter has already spoken
        if before != at:
            self.latest_at[voter] = at
            self._push(at, voter)
        if answered:
            self._failing_since.pop(voter, None)
            self._last_ok[voter] = max(at, self._last_ok.get(voter, at))
        else:
            self._failing_since.setdefault(voter, at)
        events: list[Event] = []
        if self.gap is None:
            # (_failing_since holds voters only: every voter fails when the counts match)
            if len(voters) >= minimum and len(self._failing_since) == len(voters):
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
        return self._earliest(None if self._canaries else host) >= at

    def _earliest(self, but: str | None) -> float:
        """The earliest latest report among the voters, `but` excepted (+inf: none)."""
        heap = self._heap
        self._clean()
        if not heap:
            return float("inf")
        if heap[0][1] != but:
            return heap[0][0]
        top = heapq.heappop(heap)
        self._clean()
        second = heap[0][0] if heap else float("inf")
        heapq.heappush(heap, top)
        return second

    def _clean(self) -> None:
        heap, latest = self._heap, self.latest_at
        while heap and latest.get(heap[0][1], float("-inf")) != heap[0][0]:
            heapq.heappop(heap)

    def _push(self, at: float, voter: str) -> None:
        heapq.heappush(self._heap, (at, voter))
        if len(self._heap) > 4 * len(self._voters) + 64:  # stale entries of busy voters
            self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(self.latest_at.get(v, float("-inf")), v) for v in self._voters]
        heapq.heapify(self._heap)

    def started_after(self, at: float) -> bool:
        """Has a gap that started after `at` been seen (a result made before it, and
        decided only now)?"""
        return any(g.start > at for g in (*self.recent_gaps, *((self.gap,) if self.gap else ())))

    def covers(self, at: float) -> bool:
        """Was the monitor offline at `at`?"""
        if self.gap is not None and at >= self.gap.start:
            return True
        return any(g.start <= at <= (g.end or g.start) for g in self.recent_gaps)
