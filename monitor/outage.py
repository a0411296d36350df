"""Outage windows: the pure per-check state machine (no I/O; the clock is passed in).

Each probe result becomes an observation of one *level*::

    GOOD (0)      every assertion held, fast enough
    DEGRADED (1)  every assertion held, slower than expect.max_latency
    DOWN (2)      any failure reason except `blocked`
    None          unknown: `blocked`, monitor offline, maintenance. Neutral: it
                  neither extends nor breaks a streak, and never closes a window;
                  the check's state is `unknown` until the next known observation.

A window of kind `down` opens after `open_after` consecutive observations at DOWN; a
window of kind `degraded` after `open_after` consecutive observations at DEGRADED or
worse. Its start is back-dated to the first observation of that streak. It closes
after `close_after` consecutive observations below its level; its end is the first
observation of that closing streak. A check has at most one open window, and its
windows never overlap: when a down window opens over a degraded one, the degraded
window ends where the down window starts.

Availability does not come from here: it is computed (monitor.availability) from the
windows, the unknown stretches of the state timeline (StateChanged events), monitor
gaps and maintenance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum

from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.status import State, severity_for  # the status words (importable from here too)


class Level(IntEnum):
    GOOD = 0
    DEGRADED = 1
    DOWN = 2


KIND_OF_LEVEL = {Level.DEGRADED: "degraded", Level.DOWN: "down"}
LEVEL_OF_KIND = {"degraded": Level.DEGRADED, "down": Level.DOWN}


def level_of(result: ProbeResult) -> Level | None:
    """The observation a result makes; None is unknown (a bot wall, or a failure inside
    aipulse, tells us nothing about the service)."""
    if result.internal:
        return None
    if result.reason is Reason.OK:
        return Level.DEGRADED if result.degraded else Level.GOOD
    if result.reason is Reason.BLOCKED:
        return None
    return Level.DOWN


@dataclass(frozen=True, slots=True)
class OutageWindow:
    """One outage (or degraded) window of a check, or of a service when check is None."""

    service: str
    check: str | None
    kind: str  # "down" | "degraded"
    start: float  # epoch seconds
    end: float | None = None  # None while open
    reason: str = ""
    severity: str = ""  # Statuspage words: major_outage, partial_outage, degraded_performance

    @property
    def is_open(self) -> bool:
        return self.end is None

    def duration(self, now: float) -> float:
        return (self.end if self.end is not None else now) - self.start


@dataclass(frozen=True, slots=True)
class WindowOpened:
    window: OutageWindow


@dataclass(frozen=True, slots=True)
class WindowClosed:
    window: OutageWindow  # with `end` set


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    window: OutageWindow  # still open; its severity rose (a service: partial -> major)


@dataclass(frozen=True, slots=True)
class StateChanged:
    service: str
    check: str | None  # None: the service's own status changed
    state: str  # a State for checks, a Statuspage status for services
    at: float
    # Why, for the log line only (not stored): what made a check unknown, or the failure
    # a check came back into view with ("" when it came back answering well).
    why: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Gap:
    """Time the monitor itself could not see: not running, or offline (all hosts
    unreachable at once). Applies to every check; counts as unknown."""

    start: float
    end: float | None = None
    cause: str = "offline"  # "offline" | "not_running"


@dataclass(frozen=True, slots=True)
class GapOpened:
    gap: Gap


@dataclass(frozen=True, slots=True)
class GapClosed:
    gap: Gap


Event = WindowOpened | WindowClosed | WindowUpdated | StateChanged | GapOpened | GapClosed


@dataclass
class CheckTracker:
    """Hysteresis for one check. Feed it observations in time order."""

    service: str
    check: str
    open_after: int
    close_after: int
    critical: bool = True
    window: OutageWindow | None = None
    state: State = State.UNKNOWN
    # Recent known observations (time, level, reason) since the last window closed, at
    # most max(open_after, close_after) of them (read anew each time: a reload may
    # change both). A list: a deque reserves 64 slots, ~0.5 KB a check.
    _recent: list[tuple[float, Level, str]] = field(default_factory=list)
    _reasons: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.window is not None:
            self.state = State(self.window.kind)

    def observe(self, at: float, level: Level | None, reason: str = "", why: str = "") -> list[Event]:
        """`why`: for the log line of a state change (see StateChanged.why)."""
        events: list[Event] = []
        if level is None:
            # We cannot see the service now; an open window stays open (and keeps the
            # service's status), but this time is unknown, not down.
            self._set_state(State.UNKNOWN, at, events, why)
            return events
        recent = self._recent
        recent.append((at, level, reason))
        if len(recent) > max(self.open_after, self.close_after):
            del recent[:len(recent) - max(self.open_after, self.close_after)]
        if self.window is not None and level >= LEVEL_OF_KIND[self.window.kind]:
            self._reasons[reason] += 1
        self._escalate(events, at)
        self._recover(events, at)
        # Hysteresis: a failure that has not (yet) opened a window leaves the check up.
        self._set_state(State(self.window.kind) if self.window else State.UP, at, events, why)
        return events

    def forget_pending(self, at_or_after: float) -> None:
        """Drop observations from `at_or_after` on (they turned out to be the monitor's
        own outage, not the service's)."""
        while self._recent and self._recent[-1][0] >= at_or_after:
            at, level, reason = self._recent.pop()
            if (self.window is not None and at >= self.window.start
                    and level >= LEVEL_OF_KIND[self.window.kind]):
                self._reasons -= Counter([reason])  # it was counted for the open window

    def _streak(self, n: int, ok: Callable[[Level], bool]) -> list[tuple[float, Level, str]] | None:
        if len(self._recent) < n:
            return None
        tail = self._recent[-n:]
        return tail if all(ok(level) for _, level, _ in tail) else None

    def _run(self, ok: Callable[[Level], bool]) -> list[tuple[float, Level, str]]:
        """The trailing run of recent observations that satisfy `ok`, oldest first."""
        run: list[tuple[float, Level, str]] = []
        for obs in reversed(self._recent):
            if not ok(obs[1]):
                break
            run.append(obs)
        return run[::-1]

    def _escalate(self, events: list[Event], now: float) -> None:
        current = LEVEL_OF_KIND[self.window.kind] if self.window else Level.GOOD
        for level in (Level.DOWN, Level.DEGRADED):
            if current >= level:
                return
            # The whole run, not only its last open_after: after a down window closes on
            # slow probes, the run of them can already be longer than open_after.
            streak = self._run(lambda lv, lvl=level: lv >= lvl)
            if len(streak) < self.open_after:
                continue
            start = streak[0][0]
            if self.window is not None:
                # degraded -> down: the degraded window ends where the down one starts,
                # and the down streak's reasons are not the degraded window's.
                start = max(start, self.window.start)
                self._reasons -= Counter(r for at, _, r in streak if at >= start)
                self._close(start, events)
            kind = KIND_OF_LEVEL[level]
            self._reasons = Counter(r for _, lv, r in streak if lv >= level)
            self.window = OutageWindow(
                self.service, self.check, kind, start,
                reason=self._reasons.most_common(1)[0][0],
                severity=severity_for(kind, self.critical),
            )
            events.append(WindowOpened(self.window))
            # The window is back-dated; the state timeline records when we knew.
            self._set_state(State(kind), now, events)
            return

    def _recover(self, events: list[Event], now: float) -> None:
        if self.window is None:
            return
        level = LEVEL_OF_KIND[self.window.kind]
        streak = self._streak(self.close_after, lambda lv: lv < level)
        if streak is None:
            return
        end = streak[0][0]
        self._close(end, events)
        # Observations before the end belong to the closed window.
        keep = next((i for i, obs in enumerate(self._recent) if obs[0] >= end), len(self._recent))
        del self._recent[:keep]
        self._escalate(events, now)  # e.g. down -> degraded, if the recovery is slow

    def _close(self, end: float, events: list[Event]) -> None:
        assert self.window is not None
        closed = replace(self.window, end=end, reason=self._reasons.most_common(1)[0][0]
                         if self._reasons else self.window.reason)
        events.append(WindowClosed(closed))
        self.window = None
        self._reasons = Counter()

    def _set_state(self, state: State, at: float, events: list[Event], why: str = "") -> None:
        if state != self.state:
            self.state = state
            events.append(StateChanged(self.service, self.check, state.value, at, why))
