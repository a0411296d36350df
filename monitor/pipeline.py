"""From probe results to published outage windows.

    ProbeResult -> OfflineDetector -> CheckTracker -> ServiceTracker -> events
    events -> Store (committed) -> LiveState (what /metrics and the API show)
           -> Notifier (webhooks) and one log line per change

`process` is synchronous and pure apart from the trackers it owns, so events are
decided in result order; `handle` awaits the durable write before anything is
published, so nothing is ever shown or announced that a crash could lose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from monitor.config import Config, ServiceConfig
from monitor.live import CheckStats, LiveState
from monitor.outage import (
    CheckTracker,
    Event,
    Gap,
    GapClosed,
    GapOpened,
    OutageWindow,
    State,
    StateChanged,
    WindowClosed,
    WindowOpened,
    level_of,
)
from monitor.result import ProbeResult
from monitor.rollup import OfflineDetector, ServiceTracker, service_status
from monitor.units import format_duration

log = logging.getLogger("aipulse")


class EventSink(Protocol):
    """What the pipeline needs of monitor.store.Store."""

    def add_result(self, result: ProbeResult) -> None: ...
    async def write(self, events: Sequence[Event]) -> None: ...


class Publisher(Protocol):
    def publish(self, event: WindowOpened | WindowClosed) -> None: ...


class Pipeline:
    def __init__(self, config: Config, live: LiveState, store: EventSink | None = None,
                 notifier: Publisher | None = None) -> None:
        self.live = live
        self.store = store
        self.notifier = notifier
        self.trackers: dict[tuple[str, str], CheckTracker] = {}
        self.services: dict[str, ServiceTracker] = {}
        self.offline = OfflineDetector(frozenset())
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Adopt a (new) config: unchanged checks keep their trackers and open windows."""
        self.config = config
        self.service_configs = {s.id: s for s in config.services}
        old = self.trackers
        self.trackers = {}
        for check in config.checks:
            tracker = old.get(check.key)
            if tracker is None:
                tracker = CheckTracker(check.service, check.id, check.open_after, check.close_after,
                                       check.critical)
            else:
                tracker.open_after, tracker.close_after = check.open_after, check.close_after
                tracker.critical = check.critical
            self.trackers[check.key] = tracker
        self.services = {s.id: self.services.get(s.id) or ServiceTracker(s.id) for s in config.services}
        self.offline.hosts = frozenset(c.host for c in config.checks)
        self.live.set_services(config.services)

    def restore(self, open_windows: Sequence[OutageWindow], windows: Sequence[OutageWindow],
                transitions: Sequence[StateChanged], gaps: Sequence[Gap],
                first_seen: dict[tuple[str, str], float]) -> None:
        """Resume after a restart: open windows stay open; history feeds availability."""
        for w in open_windows:
            if w.check is None:
                if (svc := self.services.get(w.service)) is not None:
                    svc.window = w
                    svc.status = w.severity
                    self.live.services[w.service].window = w
                    self.live.services[w.service].status = w.severity
            elif (tracker := self.trackers.get((w.service, w.check))) is not None:
                tracker.window = w
                tracker.state = State(w.kind)
        for w in sorted(windows, key=lambda w: w.start):
            stats = self.live.checks.get((w.service, w.check or ""))
            if stats is None:
                continue
            stats.window_opened(w)
            if w.end is not None:
                stats.window_closed(w)
        for t in transitions:
            stats = self.live.checks.get((t.service, t.check or ""))
            if stats is not None:
                stats.set_state(State(t.state), t.at)
        for key, stats in self.live.checks.items():
            stats.first_seen = first_seen.get(key, stats.first_seen)
            tracker = self.trackers[key]
            stats.state = tracker.state
            stats.window = tracker.window
            stats.outages_opened = 0  # a counter: counts windows opened by this process
        self.live.gaps = list(gaps)

    def process(self, result: ProbeResult) -> list[Event]:
        """Decide the events one result causes (no I/O)."""
        key = (result.service, result.check)
        tracker = self.trackers.get(key)
        service = self.service_configs.get(result.service)
        if tracker is None or service is None:  # removed by a reload while probing
            return []
        at = result.started
        check = next(c for c in service.checks if c.id == result.check)
        events: list[Event] = list(self.offline.observe(check.host, at, result.reason))
        if any(isinstance(e, GapOpened) for e in events):
            # The failures that led here were the monitor's, not the services'.
            for t in self.trackers.values():
                t.forget_pending(self.offline.gap.start if self.offline.gap else at)
        in_maintenance = any(m.active(at) for m in service.maintenance)
        level = None if (self.offline.offline or in_maintenance) else level_of(result)
        check_events = tracker.observe(at, level, result.reason.value)
        events += check_events
        events += self._service_events(service, check_events, at, in_maintenance)
        return events

    def _service_events(self, service: ServiceConfig, check_events: list[Event], at: float,
                        in_maintenance: bool) -> list[Event]:
        # An open window counts even while the check is momentarily unknown (a bot wall
        # mid-outage must not end the service's outage).
        states = [(t.critical, State(t.window.kind) if t.window else t.state)
                  for t in (self.trackers[c.key] for c in service.checks)]
        status = service_status(states, in_maintenance)
        opened = [e.window.start for e in check_events if isinstance(e, WindowOpened)]
        closed = [e.window.end for e in check_events if isinstance(e, WindowClosed) and e.window.end]
        when = closed[-1] if closed and not opened else at
        return self.services[service.id].update(status, when, min(opened) if opened else None)

    async def handle(self, result: ProbeResult) -> None:
        self.live.record(result)
        if self.store is not None:
            self.store.add_result(result)
        events = self.process(result)
        if events:
            await self.commit(events)

    async def commit(self, events: Sequence[Event]) -> None:
        """Store durably, then publish. A storage failure is logged; the events are
        still published (the store keeps them queued and retries)."""
        if self.store is not None:
            try:
                await self.store.write(events)
            except Exception as exc:  # StorageError: the store retries on its own
                log.debug("storing %d events failed: %s", len(events), exc)
        for event in events:
            self._publish(event)

    def _publish(self, event: Event) -> None:
        live = self.live
        if isinstance(event, StateChanged):
            if event.check is None:
                if (sstats := live.services.get(event.service)) is not None:
                    sstats.status = event.state
                log.info("%s is %s", event.service, event.state)
            elif (stats := live.checks.get((event.service, event.check))) is not None:
                stats.set_state(State(event.state), event.at)
                # down/degraded are logged with their window; here: losing and regaining sight.
                if event.state == State.UNKNOWN and stats.last is not None:
                    log.info("%s/%s is unknown (%s: %s)", event.service, event.check,
                             stats.last.reason, stats.last.detail)
                elif stats.unknown_spans and stats.unknown_spans[-1][1] == event.at:
                    log.info("%s/%s is %s again", event.service, event.check, event.state)
        elif isinstance(event, (WindowOpened, WindowClosed)):
            w = event.window
            if w.check is None:
                if (sstats := live.services.get(w.service)) is not None:
                    sstats.window = w if isinstance(event, WindowOpened) else None
            elif (stats := live.checks.get((w.service, w.check))) is not None:
                _apply_window(stats, event)
            _log_window(event)
            if self.notifier is not None:
                self.notifier.publish(event)
        elif isinstance(event, GapOpened):
            live.gaps.append(event.gap)
            log.warning("monitor offline since %s: every host fails with dns/connect; "
                        "this time counts as unknown", _clock(event.gap.start))
        elif isinstance(event, GapClosed):
            live.gaps = [g for g in live.gaps if g.start != event.gap.start or g.end is not None]
            live.gaps.append(event.gap)
            if event.gap.cause == "offline":
                log.warning("monitor back online after %s", format_duration(
                    (event.gap.end or event.gap.start) - event.gap.start))


def restart_gap_events(gaps: Sequence[Gap], heartbeat: float | None, now: float) -> list[Event]:
    """Events that record the time the daemon was not running: from the last
    heartbeat of the previous run until now. A gap left open by a crash ends there too."""
    events: list[Event] = []
    for gap in gaps:
        if gap.end is None:
            events.append(GapClosed(replace(gap, end=max(gap.start, heartbeat or gap.start))))
    if heartbeat is not None and now > heartbeat:
        gap = Gap(heartbeat, None, "not_running")
        events += [GapOpened(gap), GapClosed(replace(gap, end=now))]
    return events


def _apply_window(stats: CheckStats, event: WindowOpened | WindowClosed) -> None:
    if isinstance(event, WindowOpened):
        stats.window_opened(event.window)
    else:
        stats.window_closed(event.window)


def _log_window(event: WindowOpened | WindowClosed) -> None:
    w = event.window
    name = w.service if w.check is None else f"{w.service}/{w.check}"
    what = "outage" if w.kind == "down" else "degraded performance"
    if isinstance(event, WindowOpened):
        log.warning("%s: %s since %s (%s)", name, what, _clock(w.start), w.reason)
    else:
        log.warning("%s: %s over after %s (%s to %s, %s)", name, what,
                    format_duration((w.end or w.start) - w.start), _clock(w.start), _clock(w.end or w.start),
                    w.reason)


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
