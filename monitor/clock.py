"""The daemon's time: wall-clock epoch seconds that never go backwards.

Every time the daemon records (a probe's start, a window's start and end, a gap, the
heartbeat) comes from one `SteadyClock`. It reads the wall clock once, at the start,
and from then on moves with the monotonic clock, which NTP slews like the wall clock
but which no step ever moves. So:

* the system clock stepped back an hour: our time goes on from where it was (an hour
  ahead of the system clock, until the system clock has caught up) instead of
  storing a window of -3,594 s and taking every later probe for an out-of-order one;
* the system clock stepped forward: our time follows it only once the step has held
  for `adopt_after` seconds (a forward correction after boot is real; a jump of 20
  days that is undone 70 s later is not), and then in one step forward, never back.

Each step is logged once. Durations are right across a backward step and across a
forward one undone within `adopt_after`; across an adopted forward step they include
the step (there is no telling which of the two clocks was right before it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from monitor.config import CheckConfig
from monitor.result import ProbeResult
from monitor.units import format_duration

log = logging.getLogger("aipulse")

TOLERANCE = 1.0  # seconds the wall clock may drift from ours before it counts as a step
ADOPT_AFTER = 300.0  # seconds a forward step must hold before our time follows it


class SteadyClock:
    """Wall-clock time that never goes backwards (see the module doc). `wall` and
    `monotonic` are injectable for tests."""

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 adopt_after: float = ADOPT_AFTER, tolerance: float = TOLERANCE) -> None:
        self.wall, self.monotonic = wall, monotonic
        self.adopt_after, self.tolerance = adopt_after, tolerance
        self._base, self._base_mono = wall(), monotonic()
        self._ahead_since: float | None = None  # monotonic time the wall clock was first seen ahead
        self._behind = False  # logged that the wall clock is behind ours

    def now(self) -> float:
        mono = self.monotonic()
        ours = self._base + (mono - self._base_mono)
        wall = self.wall()
        off = wall - ours
        if off > self.tolerance:
            if self._ahead_since is None:
                self._ahead_since = mono
                log.warning("the system clock jumped %s ahead; aipulse keeps its own time and takes the new "
                            "one if it holds for %s", format_duration(off), format_duration(self.adopt_after))
            elif mono - self._ahead_since >= self.adopt_after:
                log.warning("the system clock has stayed %s ahead: aipulse's time steps forward to it",
                            format_duration(off))
                self._rebase(wall, mono)
                return wall
        elif off > 0:  # within the tolerance: follow the wall clock's small drift forward
            self._ahead_since = None
            self._behind = False
            self._rebase(wall, mono)
            return wall
        else:
            self._ahead_since = None
            if off < -self.tolerance and not self._behind:
                self._behind = True
                log.warning("the system clock went back %s; aipulse's time goes on from before the step "
                            "(ahead of the system clock until it catches up), so no duration is negative",
                            format_duration(-off))
            elif off >= -self.tolerance:
                self._behind = False
        return ours

    def __call__(self) -> float:
        return self.now()

    def _rebase(self, wall: float, mono: float) -> None:
        self._base, self._base_mono = wall, mono


def stamped(probe: Callable[[CheckConfig], Awaitable[ProbeResult]],
            clock: SteadyClock) -> Callable[[CheckConfig], Awaitable[ProbeResult]]:
    """`probe`, with each result's `started` taken from `clock` as the probe starts."""

    async def run(check: CheckConfig) -> ProbeResult:
        started = clock.now()
        result = await probe(check)
        return dataclasses.replace(result, started=started)

    return run
