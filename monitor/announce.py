"""Saying what happened, once it is stored: log lines and window events for receivers.

The pipeline hands every committed event here after LiveState has applied it.

* One log line when a window opens or closes, a check loses or regains sight, or a
  service's status changes. When many change at once (3,000 checks of one service, or 500 services), the first
  lines of a period (`PERIOD` seconds; at most `BURST` of one service and `BURST_ALL`
  in all) are logged one by one and the rest are counted: one summary line per
  service per period, with the reasons.
* A service-level window is handed to the receivers (webhooks, notify targets) once
  it cannot turn out shorter than one probe interval: its start and end are back-dated
  from the checks' windows, and two checks' windows a moment apart would otherwise
  make a window of 0.4 s that nobody should be woken for. One that does is never
  announced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from monitor.config import ServiceConfig
from monitor.outage import WindowClosed, WindowOpened
from monitor.units import format_duration

log = logging.getLogger("aipulse")

BURST = 10  # a service's lines logged one by one per period before they are counted
BURST_ALL = 50  # lines of all services logged one by one per period
PERIOD = 60.0  # seconds a summary line covers (a mass outage unfolds over a few intervals)


class Publisher(Protocol):
    def publish(self, event: WindowOpened | WindowClosed) -> None: ...


@dataclass
class _Budget:
    """One service's lines in the current period."""

    until: float  # monotonic end of the period
    logged: int = 0
    counted: Counter[str] = field(default_factory=Counter)  # what -> how many
    reasons: dict[str, Counter[str]] = field(default_factory=dict)  # what -> reason -> how many
    first: float | None = None  # wall time of the first counted line
    warn: bool = False


SUMMARY_WORDS = {
    "down opened": "outages began",
    "down closed": "outages ended",
    "degraded opened": "degraded windows began",
    "degraded closed": "degraded windows ended",
    "unknown": "checks became unknown",
    "seen": "checks were seen again",
    "status": "changes of the service's status",
    "service down opened": "service outage began",
    "service down closed": "service outage ended",
    "service degraded opened": "service degraded window began",
    "service degraded closed": "service degraded window ended",
}


class MassLog:
    """Log lines by service: `burst` of a service and `burst_all` in all one by one per
    `period`, the rest summed up in one line per service at the end of its period. A
    service whose period had to count counts from the first line of its next one (the
    mass goes on: one line per period)."""

    def __init__(self, burst: int = BURST, period: float = PERIOD, burst_all: int = BURST_ALL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.burst_all, self.period, self.monotonic = burst, burst_all, period, monotonic
        self._budgets: dict[str, _Budget] = {}
        self._mass: set[str] = set()  # services whose last period had to count
        self._all: tuple[float, int] = (float("-inf"), 0)  # (period end, lines logged) of all services
        self._timer: asyncio.TimerHandle | None = None

    def line(self, service: str, what: str, reason: str, at: float, level: int, msg: str,
             *args: object) -> None:
        """Log `msg % args` for `service`, or count it as `what` (with `reason`)."""
        now = self.monotonic()
        budget = self._budgets.get(service)
        if budget is not None and now >= budget.until:
            self._flush(service)
            budget = None
        if budget is None:
            budget = self._budgets[service] = _Budget(now + self.period)
            if service in self._mass:
                budget.logged = self.burst
            self._arm(now)
        until, logged = self._all
        if now >= until:
            until, logged = now + self.period, 0
        if budget.logged < self.burst and logged < self.burst_all:
            budget.logged += 1
            self._all = (until, logged + 1)
            log.log(level, msg, *args)
            return
        self._all = (until, logged)
        budget.counted[what] += 1
        budget.reasons.setdefault(what, Counter())[reason] += 1
        budget.first = at if budget.first is None else min(budget.first, at)
        budget.warn |= level >= logging.WARNING

    def flush(self) -> None:
        """Write every pending summary now (at stop; and when periods end)."""
        for service in list(self._budgets):
            self._flush(service)

    def _due(self) -> None:
        self._timer = None
        now = self.monotonic()
        for service, budget in list(self._budgets.items()):
            if now >= budget.until:
                self._flush(service)
        if self._budgets:
            self._arm(now)

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a pure test): summaries wait for the next line or flush()
            return
        until = min(b.until for b in self._budgets.values())
        self._timer = loop.call_later(max(0.0, until - now), self._due)

    def _flush(self, service: str) -> None:
        budget = self._budgets.pop(service)
        if not budget.counted:
            self._mass.discard(service)
            return
        self._mass.add(service)
        parts = []
        for what, n in budget.counted.most_common():
            reasons = budget.reasons[what]
            said = ", ".join(f"{r} {c:,}" for r, c in reasons.most_common(5) if r)
            more = len(reasons) - 5
            said += f", {more} more" if more > 0 else ""
            parts.append(f"{n:,} {SUMMARY_WORDS.get(what, what)}" + (f" ({said})" if said else ""))
        total = sum(budget.counted.values())
        log.log(logging.WARNING if budget.warn else logging.INFO,
                "%s: %s more check changes since %s, not logged one by one: %s "
                "(GET /api/v1/outages?service=%s lists every window)", service, f"{total:,}",
                clock(budget.first or 0.0), "; ".join(parts), service)


class Announcer:
    """Logs committed events and hands window events to the receivers (see module doc)."""

    def __init__(self, notifier: Publisher | None, mass: MassLog | None = None) -> None:
        self.notifier = notifier
        self.mass = mass or MassLog()
        self._timing: dict[str, tuple[float, float]] = {}  # service -> (shortest interval, back-dating)
        # Service windows opened but not yet announced: service -> (event, announce from)
        self._quiet: dict[str, tuple[WindowOpened, float]] = {}

    def configure(self, services: tuple[ServiceConfig, ...]) -> None:
        timing = {}
        for s in services:
            shortest = min((c.interval for c in s.checks), default=0.0)
            # How far back a close can be dated: a check window's end (its first good
            # probe of close_after) or the start of a worse one (its first of open_after).
            backdate = max((max(c.open_after, c.close_after) * c.interval for c in s.checks), default=0.0)
            timing[s.id] = (shortest, backdate)
        self._timing = timing

    def check_window(self, event: WindowOpened | WindowClosed) -> None:
        self._window(event, "")

    def check_line(self, service: str, what: str, reason: str, at: float, msg: str, *args: object) -> None:
        """A check's state line (unknown, seen again), counted with its service's lines."""
        self.mass.line(service, what, reason, at, logging.INFO, msg, *args)

    def service_line(self, service: str, status: str, at: float, msg: str, *args: object) -> None:
        """A service's status change, counted with its lines when many come at once."""
        self.mass.line(service, "status", status, at, logging.INFO, msg, *args)

    def service_window(self, event: WindowOpened | WindowClosed) -> None:
        """A service window's open is announced once the window cannot turn out shorter
        than one interval; one that does is never announced."""
        w = event.window
        shortest, backdate = self._timing.get(w.service, (0.0, 0.0))
        if isinstance(event, WindowOpened):
            self._quiet[w.service] = (event, w.start + shortest + backdate)
            return
        quiet = self._quiet.pop(w.service, None)
        if quiet is not None and quiet[0].window.start == w.start:
            if w.duration(w.start) < shortest:
                log.debug("%s: a %s window of %s, shorter than one interval: not announced", w.service,
                          w.kind, format_duration(w.duration(w.start)))
                return
            self._announce(quiet[0])
        self._announce(event)

    def service_window_updated(self, event: WindowOpened) -> None:
        """A quiet service window's severity rose: announce it as it is now."""
        w = event.window
        quiet = self._quiet.get(w.service)
        if quiet is not None and quiet[0].window.start == w.start:
            self._quiet[w.service] = (event, quiet[1])

    def due(self, clock_now: float) -> None:
        """Announce the quiet service windows that are long enough by `clock_now`."""
        for sid, (event, due) in list(self._quiet.items()):
            if clock_now >= due:
                del self._quiet[sid]
                self._announce(event)

    def flush(self) -> None:
        self.mass.flush()

    def _announce(self, event: WindowOpened | WindowClosed) -> None:
        self._window(event, "service ")

    def _window(self, event: WindowOpened | WindowClosed, kind_prefix: str) -> None:
        """Log a window opened or closed (through the mass-log budget) and notify."""
        w = event.window
        what = f"{kind_prefix}{w.kind} {'opened' if isinstance(event, WindowOpened) else 'closed'}"
        at = w.start if isinstance(event, WindowOpened) else (w.end or w.start)
        self.mass.line(w.service, what, w.reason, at, logging.WARNING, *window_line(event))
        if self.notifier is not None:
            self.notifier.publish(event)


def window_line(event: WindowOpened | WindowClosed) -> tuple[str, ...]:
    """The log line (format and arguments) of a window opening or closing."""
    w = event.window
    name = w.service if w.check is None else f"{w.service}/{w.check}"
    what = "outage" if w.kind == "down" else "degraded performance"
    if isinstance(event, WindowOpened):
        return "%s: %s since %s (%s)", name, what, clock(w.start), w.reason
    return ("%s: %s over after %s (%s to %s, %s)", name, what, format_duration((w.end or w.start) - w.start),
            clock(w.start), clock(w.end or w.start), w.reason)


def clock(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
