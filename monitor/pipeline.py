"""From probe results to published outage windows.

    ProbeResult -> OfflineDetector -> CheckTracker -> ServiceTracker -> events
    events -> Store (committed) -> LiveState (what /metrics and the API show)
           -> Notifier (webhooks) and one log line per change

`handle` only queues a result; one consumer task takes results in order, decides
their events (`process`, synchronous: no I/O), awaits the durable write (one
transaction for all results queued meanwhile) and only then publishes. So nothing
is shown or announced that a crash could lose, events are published in the order
they were decided, and a slow disk never delays probing.

A failure that the monitor's own network may have caused is held back until every
connectivity canary has reported after it (without canaries: a dns/connect failure,
until every other host has): only then is it known whether the service failed or
the monitor itself is offline. While it is offline every check and service is
`unknown`, and no window opens.

A service-level window is announced (log line, webhook) once it cannot turn out
shorter than one probe interval: its start and end are back-dated from the checks'
windows, and two checks' windows a moment apart would otherwise make a window of
0.4 s that nobody should be woken for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from monitor.config import CANARY_SERVICE, Canary, Config, ServiceConfig
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
    WindowUpdated,
    level_of,
)
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.rollup import UNKNOWN, OfflineDetector, ServiceTracker, service_status
from monitor.store import StorageError
from monitor.units import format_duration

log = logging.getLogger("aipulse")


class EventSink(Protocol):
    """What the pipeline needs of monitor.store.Store."""

    def add_result(self, result: ProbeResult) -> None: ...
    async def write(self, events: Sequence[Event]) -> None: ...


class Publisher(Protocol):
    def publish(self, event: WindowOpened | WindowClosed) -> None: ...


MAX_HOLD = 300.0  # seconds a dns/connect failure may wait for the offline decision
MAX_BATCH = 1000  # queued results whose events are committed together
OFFLINE = "monitor offline"  # StateChanged.why while the monitor cannot see anything
RESTARTED = "not probed since the restart"
_SILENT = (OFFLINE, RESTARTED)  # one line says it for every check (or nothing needs saying)


@dataclass(frozen=True, slots=True)
class Observation:
    key: tuple[str, str]
    host: str
    at: float
    result: ProbeResult


class Pipeline:
    def __init__(self, config: Config, live: LiveState, store: EventSink | None = None,
                 notifier: Publisher | None = None) -> None:
        self.live = live
        self.store = store
        self.notifier = notifier
        self.trackers: dict[tuple[str, str], CheckTracker] = {}
        self.services: dict[str, ServiceTracker] = {}
        self.offline = OfflineDetector(frozenset())
        self.canaries: dict[str, Canary] = {}
        self._canary_last: dict[str, ProbeResult] = {}
        self._clock = float("-inf")  # the latest probe start processed
        # Service windows opened but not yet announced: service -> (event, announce from)
        self._quiet: dict[str, tuple[WindowOpened, float]] = {}
        self._held: deque[Observation] = deque()
        self._queue: asyncio.Queue[ProbeResult | None] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None
        self.configure(config)

    def configure(self, config: Config, now: float | None = None) -> list[Event]:
        """Adopt a (new) config: unchanged checks keep their trackers and open windows.
        Returns events closing the open windows of checks and services it removes."""
        now = time.time() if now is None else now
        keep = {c.key for c in config.checks}
        keep_services = {s.id for s in config.services}
        orphans: list[Event] = [
            WindowClosed(replace(t.window, end=max(t.window.start, now)))
            for key, t in self.trackers.items() if key not in keep and t.window is not None
        ] + [
            WindowClosed(replace(t.window, end=max(t.window.start, now)))
            for sid, t in self.services.items() if sid not in keep_services and t.window is not None
        ]
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
        self.check_configs = {c.key: c for c in config.checks}
        self.canaries = {c.check.id: c for c in config.connectivity}
        self._canary_last = {k: v for k, v in self._canary_last.items() if k in self.canaries}
        self.offline.hosts = frozenset(c.host for c in config.checks)
        self.offline.canaries = frozenset(self.canaries)
        self.hold_limit = min(MAX_HOLD, max((c.interval + c.timeout for c in (
            *config.checks, *(k.check for k in config.connectivity))), default=0))
        self.live.set_services(config.services)
        self.live.checks_skipped = len(config.skipped)
        return orphans

    def restore(self, open_windows: Sequence[OutageWindow], windows: Sequence[OutageWindow],
                transitions: Sequence[StateChanged], gaps: Sequence[Gap],
                first_seen: dict[tuple[str, str], float], last_seen: float,
                since: float = float("-inf")) -> list[Event]:
        """Resume after a restart: open windows stay open; history (from `since` on)
        feeds availability. Returns the events that close windows of checks no longer
        configured (at `last_seen`, when the previous run was last alive)."""
        orphans: list[Event] = []
        for w in open_windows:
            known = self.services.get(w.service) if w.check is None else self.trackers.get(
                (w.service, w.check))
            if known is None:
                orphans.append(WindowClosed(replace(w, end=max(w.start, last_seen))))
                continue
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
            if stats.first_seen is not None and stats.first_seen < since:
                # Seen before the history begins: its state then is not in the history.
                stats.first_known = min(stats.first_known or stats.first_seen, stats.first_seen)
            tracker = self.trackers[key]
            stats.set_state(tracker.state, last_seen, RESTARTED)  # unknown until it is probed again
            stats.window = tracker.window
            stats.outages_opened = 0  # a counter: counts windows opened by this process
        self.live.gaps = list(gaps)
        return orphans

    def process(self, result: ProbeResult) -> list[Event]:
        """Decide the events one result causes (no I/O)."""
        self._clock = max(self._clock, result.started)
        if result.service == CANARY_SERVICE:
            return self._process_canary(result)
        key = (result.service, result.check)
        check = self.check_configs.get(key)
        if check is None:  # removed by a reload while probing
            return []
        at = result.started
        events: list[Event] = list(self.offline.observe(check.host, at, result.reason))
        events += self._went_offline(events, at)
        obs = Observation(key, check.host, at, result)
        held_keys = {o.key for o in self._held}
        if key in held_keys or self.offline.holds(result.reason):
            self._held.append(obs)  # a check's later results wait behind its held ones
        else:
            events += self._observe(obs)
        return events + self._release(at)

    def _process_canary(self, result: ProbeResult) -> list[Event]:
        if result.check not in self.canaries:  # removed by a reload while probing
            return []
        self._canary_last[result.check] = result
        at = result.started
        events = self.offline.observe_canary(result.check, at, result.reason is Reason.OK)
        events += self._went_offline(events, at)
        return events + self._release(at)

    def _release(self, at: float) -> list[Event]:
        """Observe the held results whose offline question is decided (or held too long)."""
        events: list[Event] = []
        while self._held and (self.offline.decided(self._held[0].host, self._held[0].at)
                              or at - self._held[0].at > self.hold_limit):
            events += self._observe(self._held.popleft())
        return events

    def _went_offline(self, events: list[Event], at: float) -> list[Event]:
        """When a gap opened: the failures that led here were the monitor's, not the
        services'; and from now on nothing is known about any check or service."""
        if self.offline.gap is None or not any(isinstance(e, GapOpened) for e in events):
            return []
        for t in self.trackers.values():
            t.forget_pending(self.offline.gap.start)
        out: list[Event] = []
        for t in self.trackers.values():
            out += t.observe(at, None, why=OFFLINE)
        for sid, service in self.services.items():
            config = self.service_configs[sid]
            if not any(m.active(at) for m in config.maintenance):
                out += service.update(UNKNOWN, at)
        return out

    def _observe(self, obs: Observation) -> list[Event]:
        tracker = self.trackers.get(obs.key)
        service = self.service_configs.get(obs.key[0])
        if tracker is None or service is None:
            return []
        result = obs.result
        in_maintenance = any(m.active(obs.at) for m in service.maintenance)
        # Offline now, offline then, or made before a gap that has opened since (held
        # for the decision, and by then most likely ours): nothing to say of the service.
        offline = self.offline.offline or self.offline.covers(obs.at) or self.offline.started_after(obs.at)
        if in_maintenance:
            level, why = None, "under maintenance"
        elif offline:
            level, why = None, OFFLINE
        else:
            level = level_of(result)
            why = "" if result.success else _failure(result)
        check_events = tracker.observe(obs.at, level, result.reason.value, why)
        return [*check_events, *self._service_events(service, check_events, obs.at, in_maintenance, offline)]

    def _service_events(self, service: ServiceConfig, check_events: list[Event], at: float,
                        in_maintenance: bool, offline: bool) -> list[Event]:
        if offline and not in_maintenance:
            return self.services[service.id].update(UNKNOWN, at)
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
        """Take a result: counted at once, its outage events decided and published in order
        by the consumer task (see `start`). A canary's result is neither counted nor
        stored: it only decides whether the monitor is offline."""
        if result.service != CANARY_SERVICE:
            self.live.record(result)
            if self.store is not None:
                self.store.add_result(result)
        if self._consumer is None:  # not started: process inline (tests, `aipulse once`)
            events = self.process(result)
            if events:
                await self.commit(events)
        else:
            self._queue.put_nowait(result)

    def start(self) -> None:
        self._consumer = asyncio.create_task(self._consume(), name="pipeline")

    async def stop(self, timeout: float = 5.0) -> None:
        """Process what is queued (up to `timeout`), then stop."""
        if self._consumer is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._consumer), timeout)
        except TimeoutError:
            log.warning("stopping with %d results not yet processed", self._queue.qsize())
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        self._consumer = None

    async def join(self) -> None:
        """Wait until every queued result is processed."""
        await self._queue.join()

    async def _consume(self) -> None:
        # Results queued meanwhile are taken together and their events committed in one
        # transaction: when the disk is slow (or failing: each write may wait
        # `Store.write_timeout`), the consumer catches up by the batch instead of
        # falling behind by one commit per result while the queue grows without bound.
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events: list[Event] = []
            try:
                for result in batch:
                    if result is None:
                        break
                    try:
                        events += self.process(result)
                    except Exception:
                        log.exception("processing a result of %s/%s failed", result.service,
                                      result.check)
                if events:
                    await self.commit(events)
            except Exception:
                log.exception("committing the events of %d results failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if batch[-1] is None:
                return

    async def commit(self, events: Sequence[Event]) -> None:
        """Store durably, then publish. A storage failure is logged; the events are
        still published (the store keeps them queued and retries)."""
        if self.store is not None:
            try:
                await self.store.write(events)
            except StorageError as exc:  # the store keeps them queued and retries
                log.debug("storing %d events failed: %s", len(events), exc)
        for event in events:
            self._publish(event)
        self._announce_due()

    def _publish(self, event: Event) -> None:
        live = self.live
        if isinstance(event, StateChanged):
            if event.check is None:
                if (sstats := live.services.get(event.service)) is not None:
                    sstats.status = event.state
                if not (event.state == UNKNOWN and live.monitor_offline):  # the gap's line says it
                    log.info("%s is %s", event.service, event.state)
            elif (stats := live.checks.get((event.service, event.check))) is not None:
                was_unknown_why = stats.unknown_why
                stats.set_state(State(event.state), event.at, event.why)
                # down/degraded are logged with their window; here: losing and regaining
                # sight (not one line per check when the monitor itself goes offline).
                name = f"{event.service}/{event.check}"
                if event.state == State.UNKNOWN:
                    if event.why not in _SILENT:
                        log.info("%s is unknown: %s", name, event.why or "no result")
                elif (stats.unknown_spans and stats.unknown_spans[-1][1] == event.at
                      and was_unknown_why not in _SILENT):
                    if event.why:
                        log.info("%s is seen again, failing (%s); no outage window (yet)", name, event.why)
                    else:
                        log.info("%s is %s again", name, event.state)
        elif isinstance(event, WindowUpdated):
            w = event.window
            if w.check is None and (sstats := live.services.get(w.service)) is not None:
                sstats.window = w
                if w.kind == "down":
                    sstats.last_down = w
            quiet = self._quiet.get(w.service) if w.check is None else None
            if quiet is not None and quiet[0].window.start == w.start:
                self._quiet[w.service] = (WindowOpened(w), quiet[1])
        elif isinstance(event, (WindowOpened, WindowClosed)):
            w = event.window
            if w.check is None:
                if (sstats := live.services.get(w.service)) is not None:
                    sstats.window = w if isinstance(event, WindowOpened) else None
                    if w.kind == "down":
                        sstats.last_down = w
            elif (stats := live.checks.get((w.service, w.check))) is not None:
                _apply_window(stats, event)
            if w.check is None:
                self._announce_service_window(event)
            else:
                self._announce(event)
        elif isinstance(event, GapOpened):
            live.gaps.append(event.gap)
            if event.gap.cause == "offline":
                log.warning("monitor offline since %s: %s; this time counts as unknown",
                            _clock(event.gap.start), self._offline_why())
        elif isinstance(event, GapClosed):
            live.gaps = [g for g in live.gaps if g.start != event.gap.start or g.end is not None]
            live.gaps.append(event.gap)
            took = format_duration((event.gap.end or event.gap.start) - event.gap.start)
            if event.gap.cause == "offline":
                log.warning("monitor back online after %s", took)
            else:
                log.info("not running from %s to %s (%s): this time counts as unknown",
                         _clock(event.gap.start), _clock(event.gap.end or event.gap.start), took)

    def _offline_why(self) -> str:
        if not self.canaries:
            return "every host fails with dns/connect"
        # host names only: a URL's path or query is nobody's business in a log line
        failures = ", ".join(f"{self.canaries[k].check.host}: {r.reason}"
                             for k, r in self._canary_last.items() if k in self.canaries)
        return f"every connectivity canary fails ({failures})"

    def _announce(self, event: WindowOpened | WindowClosed) -> None:
        _log_window(event)
        if self.notifier is not None:
            self.notifier.publish(event)

    def _announce_service_window(self, event: WindowOpened | WindowClosed) -> None:
        """A service window's open is announced once the window cannot turn out shorter
        than one interval (see the module docstring); one that does is never announced."""
        w = event.window
        config = self.service_configs.get(w.service)
        checks = config.checks if config is not None else ()
        shortest = min((c.interval for c in checks), default=0.0)
        if isinstance(event, WindowOpened):
            # How far back a close can be dated: a check window's end (its first good
            # probe of close_after) or the start of a worse one (its first of open_after).
            backdate = max((max(c.open_after, c.close_after) * c.interval for c in checks), default=0.0)
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

    def _announce_due(self) -> None:
        for sid, (event, due) in list(self._quiet.items()):
            if self._clock >= due:
                del self._quiet[sid]
                self._announce(event)


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


def _failure(result: ProbeResult) -> str:
    """'overloaded: HTTP 503 ...' for a log line."""
    return f"{result.reason}: {result.detail}" if result.detail else str(result.reason)


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
