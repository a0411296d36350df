"""What one notification target hears, and when: routing, holding and grouping (pure; the
clock is passed in).

One `Grouper` per target turns the pipeline's window events into `Digest`s, each
one message about one service:

    routing      only check windows (a service's own window repeats what its checks
                 say) of the target's `services` and `kinds`
    holding      an opened window waits until it has lasted `min_duration` (from its
                 back-dated start); one that closes sooner is never announced, and
                 neither is its closing
    grouping     the first event of a service starts a group; everything of that
                 service within `group_wait` joins it; then the group is one Digest.
                 A mass outage of 1,000 checks of one service is one message.

A window closing whose opening this grouper never saw (it opened before a restart or a
reload) is announced when it lasted `min_duration`: exactly then was its opening due.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from monitor.outage import OutageWindow, WindowClosed, WindowOpened

WindowKey = tuple[str, str | None, str, float]  # service, check, kind, start


def window_key(w: OutageWindow) -> WindowKey:
    return (w.service, w.check, w.kind, w.start)


@dataclass(frozen=True, slots=True)
class Route:
    """What a target receives (from its TargetConfig)."""

    services: frozenset[str] | None = None  # None: every service
    kinds: frozenset[str] = frozenset({"down", "degraded", "closed"})
    min_duration: float = 0.0

    def wants(self, w: OutageWindow) -> bool:
        return (w.check is not None and w.kind in self.kinds
                and (self.services is None or w.service in self.services))


@dataclass(frozen=True, slots=True)
class Digest:
    """One message's worth: one service's windows that opened or closed in one group.

    `opened` are still open; `closed` have their end (some also opened in this same
    group: a short window); `removed` closed because their check left the config."""

    service: str
    opened: tuple[OutageWindow, ...] = ()
    closed: tuple[OutageWindow, ...] = ()
    removed: tuple[OutageWindow, ...] = ()

    @property
    def windows(self) -> int:
        return len(self.opened) + len(self.closed) + len(self.removed)


@dataclass
class _Group:
    due: float
    opened: dict[WindowKey, OutageWindow] = field(default_factory=dict)
    closed: dict[WindowKey, OutageWindow] = field(default_factory=dict)
    removed: dict[WindowKey, OutageWindow] = field(default_factory=dict)


class Grouper:
    """Routing, min_duration and grouping for one target. Feed it events in order with
    `add`; ask `next_due` when to come back and `due(now)` for the digests ready then."""

    def __init__(self, route: Route, group_wait: float) -> None:
        self.route = route  # may be replaced (a reload); applies from the next event / due()
        self.group_wait = group_wait
        self._held: dict[WindowKey, OutageWindow] = {}  # opened, waiting for min_duration
        # The held windows by start (= by ripe time, whatever min_duration is), so that a
        # mass outage costs O(log n) per window; entries no longer held are skipped.
        self._starts: list[tuple[float, int, WindowKey]] = []
        self._seq = itertools.count()
        self._groups: dict[str, _Group] = {}  # service -> the group being gathered

    def add(self, event: WindowOpened | WindowClosed, now: float, removed: bool = False) -> None:
        """One window event; `removed`: a closing because the check left the config."""
        w = event.window
        if not self.route.wants(w):
            return
        key = window_key(w)
        if isinstance(event, WindowOpened):
            ripe = w.start + self.route.min_duration
            if ripe <= now:
                self._group(w.service, now).opened[key] = w
            else:
                self._hold(key, w)
            return
        lasted = (w.end if w.end is not None else now) - w.start
        held = self._held.pop(key, None)
        if held is not None and lasted < self.route.min_duration:
            return  # a blip: its opening was never sent, nor is its closing
        group = self._groups.get(w.service)
        opened_here = group is not None and key in group.opened
        if held is None and not opened_here and (
                "closed" not in self.route.kinds or lasted < self.route.min_duration):
            return  # nobody was told it opened (or is to be told it closed)
        group = self._group(w.service, now)
        group.opened.pop(key, None)
        (group.removed if removed else group.closed)[key] = w

    def restore(self, windows: Iterable[OutageWindow], now: float) -> None:
        """Windows open when this grouper starts (a restart, a new target): those younger
        than min_duration were not announced yet and are held; older ones were."""
        for w in windows:
            if self.route.wants(w) and w.end is None and w.start + self.route.min_duration > now:
                self._hold(window_key(w), w)

    def next_due(self) -> float | None:
        """When `due` will next have something to say (None: nothing pending)."""
        times = [g.due for g in self._groups.values()]
        starts = self._starts
        while starts and starts[0][2] not in self._held:
            heapq.heappop(starts)
        if starts:
            times.append(starts[0][0] + self.route.min_duration)
        return min(times, default=None)

    def due(self, now: float) -> list[Digest]:
        """Digests whose group is complete at `now`, by service."""
        self._promote(now)
        out = []
        for service in sorted(s for s, g in self._groups.items() if g.due <= now):
            g = self._groups.pop(service)
            if g.opened or g.closed or g.removed:
                out.append(Digest(service, _by_check(g.opened), _by_check(g.closed), _by_check(g.removed)))
        return out

    def flush(self, now: float) -> list[Digest]:
        """Every group being gathered, as digests now, not waited out (at shutdown).
        Windows held for min_duration stay held."""
        self._promote(now)
        for group in self._groups.values():
            group.due = min(group.due, now)
        return self.due(now)

    @property
    def pending(self) -> int:
        """Windows held or gathered, not yet in a digest."""
        return len(self._held) + sum(len(g.opened) + len(g.closed) + len(g.removed)
                                     for g in self._groups.values())

    def _promote(self, now: float) -> None:
        """Held windows that have lasted min_duration by `now` join their service's group."""
        starts = self._starts
        while starts and starts[0][0] + self.route.min_duration <= now:
            start, _, key = heapq.heappop(starts)
            w = self._held.pop(key, None)
            if w is not None and self.route.wants(w):  # the route may have changed meanwhile
                self._group(w.service, start + self.route.min_duration).opened[key] = w

    def _hold(self, key: WindowKey, w: OutageWindow) -> None:
        self._held[key] = w
        heapq.heappush(self._starts, (w.start, next(self._seq), key))

    def _group(self, service: str, at: float) -> _Group:
        group = self._groups.get(service)
        if group is None:
            group = self._groups[service] = _Group(due=at + self.group_wait)
        return group


def _by_check(windows: dict[WindowKey, OutageWindow]) -> tuple[OutageWindow, ...]:
    return tuple(sorted(windows.values(), key=lambda w: (w.check or "", w.start)))
