"""From probe results to published outage windows.

    ProbeResult -> OfflineDetector -> CheckTracker -> ServiceTracker -> events
    events -> Store (committed) -> LiveState (what /metrics and the API show)
           -> Notifier (webhooks) and one log line per change

`handle` only queues a result; one consumer task takes results in order, decides
their events (`process`, synchronous: no I/O), hands them to the store (one
transaction for all results taken together) and publishes them once they are
committed: into LiveState (`LiveState.apply`), the log and the receivers
(monitor.announce). So nothing is shown or announced that a crash could lose: an
event whose write failed is published when the store has written it on a retry, in
the order decided, or never. A slow disk never delays probing.

Each result costs O(1), whatever the layout (3,000 checks in one service or 3,000
services): a service's status comes from counts of its checks' states kept up to
date one check at a time (monitor.rollup.StatusCounts), and the consumer takes at
most `SLICE` seconds of results before it gives the event loop a turn.

A failure that the monitor's own network may have caused is held back until every
connectivity canary has reported after it (without canaries: a dns/connect failure,
until every other host has): only then is it known whether the service failed or
the monitor itself is offline. While it is offline every check and service is
`unknown`, and no window opens.

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from monitor.announce import Announcer, Publisher, clock
from monitor.config import CANARY_SERVICE, Canary, Config, ServiceConfig
from monitor.live import LiveState
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
from monitor.rollup import OfflineDetector, ServiceTracker, StatusCounts
from monitor.status import UNKNOWN
from monitor.store import StorageError
from monitor.units import format_duration

log = logging.getLogger("aipulse")


class EventSink(Protocol):
    """What the pipeline needs of monitor.store.Store."""

    def add_result(self, result: ProbeResult) -> None: ...

    async def write(self, events: Sequence[Event], on_commit: Callable[[], None] | None = None) -> None:
        """Returns after the first attempt to commit (raises StorageError if it failed);
        `on_commit` is called on the event loop once the events are committed, then
        or on a later retry (never, if the store closes first)."""
        ...


MAX_HOLD = 300.0  # seconds a dns/connect failure may wait for the offline decision
MAX_BATCH = 1000  # queued results whose events are committed together
SLICE = 0.02  # seconds of processing before the consumer gives the event loop a turn
OFFLINE = "monitor offline"  # StateChanged.why while the monitor cannot see anything
RESTARTED = "not probed since the restart"
_SILENT = (OFFLINE, RESTARTED)  # one line says it for every check (or nothing needs saying)


@dataclass(frozen=True, slots=True)
class Observation:
    key: tuple[str, str]
    host: str
    at: float
    result: ProbeResult


def _counted(tracker: CheckTracker) -> tuple[bool, State]:
    """What a check adds to its service's status. An open window counts even while
    the check is momentarily unknown (a bot wall mid-outage must not end the
    service's outage)."""
    return tracker.critical, State(tracker.window.kind) if tracker.window else tracker.state


class Pipeline:
    def __init__(self, config: Config, live: LiveState, store: EventSink | None = None,
                 notifier: Publisher | None = None) -> None:
        self.live = live
        self.store = store
        self.announcer = Announcer(notifier)
        self.trackers: dict[tuple[str, str], CheckTracker] = {}
        self.services: dict[str, ServiceTracker] = {}
        self.offline = OfflineDetector(frozenset())
        self.canaries: dict[str, Canary] = {}
        self._canary_last: dict[str, ProbeResult] = {}
        self._clock = float("-inf")  # the latest probe start processed
        self._counts: dict[str, StatusCounts] = {}  # by service
        self._counted: dict[tuple[str, str], tuple[bool, State]] = {}  # what each check adds to them
        self._held: deque[Observation] = deque()
        self._held_keys: Counter[tuple[str, str]] = Counter()
        # Committed in order, published in order: [events, committed?]
        self._unpublished: deque[list[object]] = deque()
        self._queue: asyncio.Queue[ProbeResult | None] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None
        self.configure(config, now=float("-inf"))

    @property
    def notifier(self) -> Publisher | None:
        return self.announcer.notifier

    def configure(self, config: Config, now: float) -> list[Event]:
        """Adopt a (new) config: unchanged checks keep their trackers and open windows.
        Returns events closing the open windows of checks and services it removes."""
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
        self.offline.set_voters(frozenset(c.host for c in config.checks), frozenset(self.canaries))
        self.hold_limit = min(MAX_HOLD, max((c.interval + c.timeout for c in (
            *config.checks, *(k.check for k in config.connectivity))), default=0))
        self._recount()
        self.announcer.configure(config.services)
        self.live.set_services(config.services)
        self.live.checks_skipped = len(config.skipped)
        return orphans

    def _recount(self) -> None:
        """Count every check's state into its service's status again (a new config, a
        restore, the monitor going offline: not per result)."""
        self._counts = {sid: StatusCounts() for sid in self.services}
        self._counted = {}
        for key, tracker in self.trackers.items():
            self._counted[key] = counted = _counted(tracker)
            self._counts[key[0]].add(*counted)

    def _recounted(self, key: tuple[str, str], tracker: CheckTracker) -> StatusCounts:
        """Its service's counts, with this check's current state (O(1))."""
        counts = self._counts[key[0]]
        new = _counted(tracker)
        old = self._counted.get(key)
        if new != old:
            counts.move(old, new)
            self._counted[key] = new
        return counts

    def restore(self, open_windows: Sequence[OutageWindow], windows: Sequence[OutageWindow],
                transitions: Sequence[StateChanged], gaps: Sequence[Gap],
                first_seen: dict[tuple[str, str], float], last_seen: float,
                since: float = float("-inf")) -> list[Event]:
        """Resume after a restart: open windows stay open; the stored history (from
        `since` on) is replayed into LiveState (availability, last outages). Returns the
        events that close windows of checks no longer configured (at `last_seen`, when
        the previous run was last alive)."""
        orphans: list[Event] = []
        for w in open_windows:
            if w.check is None:
                if (svc := self.services.get(w.service)) is not None:
                    svc.window = w
                    svc.status = w.severity
                    continue
            elif (tracker := self.trackers.get((w.service, w.check))) is not None:
                tracker.window = w
                tracker.state = State(w.kind)
                continue
            orphans.append(WindowClosed(replace(w, end=max(w.start, last_seen))))
        self._recount()
        stored: list[Event] = []
        for w in sorted(windows, key=lambda w: w.start):
            stored.append(WindowOpened(replace(w, end=None)))
            if w.end is not None:
                stored.append(WindowClosed(w))
        stored += transitions
        for g in gaps:
            stored.append(GapOpened(replace(g, end=None)))
            if g.end is not None:
                stored.append(GapClosed(g))
        # Then, as of the last moment the previous run was alive: nothing is known of a
        # check until it is probed again (an open window stays open).
        stored += [StateChanged(key[0], key[1], t.state.value, last_seen, RESTARTED)
                   for key, t in self.trackers.items()]
        stored += [StateChanged(sid, None, t.status, last_seen) for sid, t in self.services.items()]
        self.live.replay(stored, first_seen=first_seen, since=since)
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
        if self._held_keys[key] or self.offline.holds(result.reason):
            self._held.append(obs)  # a check's later results wait behind its held ones
            self._held_keys[key] += 1
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
        held = self._held
        while held and (self.offline.decided(held[0].host, held[0].at) or at - held[0].at > self.hold_limit):
            obs = held.popleft()
            self._held_keys[obs.key] -= 1
            if not self._held_keys[obs.key]:
                del self._held_keys[obs.key]
            events += self._observe(obs)
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
        self._recount()
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
        counts = self._recounted(obs.key, tracker)
        return [*check_events, *self._service_events(service, counts, check_events, obs.at, in_maintenance,
                                                     offline)]

    def _service_events(self, service: ServiceConfig, counts: StatusCounts, check_events: list[Event],
                        at: float, in_maintenance: bool, offline: bool) -> list[Event]:
        if offline and not in_maintenance:
            return self.services[service.id].update(UNKNOWN, at)
        status = counts.status(in_maintenance)
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
        if self._consumer is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._consumer), timeout)
            except TimeoutError:
                log.warning("stopping with %d results not yet processed", self._queue.qsize())
                self._consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._consumer
            self._consumer = None
        self.announcer.flush()

    async def join(self) -> None:
        """Wait until every queued result is processed."""
        await self._queue.join()

    async def _consume(self) -> None:
        # Results queued meanwhile are taken together and their events committed in one
        # transaction: when the disk is slow (or failing: each write may wait
        # `Store.write_timeout`), the consumer catches up by the batch instead of
        # falling behind by one commit per result while the queue grows without bound.
        # A batch takes at most SLICE seconds of processing, and the loop gets a turn
        # after each one, whatever the disk does: probes, scrapes and signals go on.
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + SLICE
            events: list[Event] = []
            try:
                while True:
                    result = batch[-1]
                    if result is None:
                        break
                    try:
                        events += self.process(result)
                    except Exception:
                        log.exception("processing a result of %s/%s failed", result.service,
                                      result.check)
                    if len(batch) >= MAX_BATCH or self._queue.empty() or loop.time() >= deadline:
                        break
                    batch.append(self._queue.get_nowait())
                if events:
                    await self.commit(events)
            except Exception:
                log.exception("committing the events of %d results failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if batch[-1] is None:
                return
            await asyncio.sleep(0)

    async def commit(self, events: Sequence[Event]) -> None:
        """Store durably, then publish, in the order of the calls. When the store cannot
        write them now, they are published once it has (it keeps them and retries),
        after everything committed before them; never before."""
        if not events:
            return
        entry: list[object] = [list(events), False]
        self._unpublished.append(entry)
        if self.store is None:
            entry[1] = True
            self._drain()
            return

        def committed() -> None:
            entry[1] = True
            self._drain()

        try:
            await self.store.write(events, on_commit=committed)
        except StorageError as exc:  # the store keeps them queued and retries
            log.debug("storing %d events failed: %s; published once written", len(events), exc)

    def _drain(self) -> None:
        while self._unpublished and self._unpublished[0][1]:
            events = self._unpublished.popleft()[0]
            for event in events:  # type: ignore[attr-defined]
                self._publish(event)
        self.announcer.due(self._clock)

    def _publish(self, event: Event) -> None:
        live, say = self.live, self.announcer
        if isinstance(event, StateChanged) and event.check is not None:
            stats = live.checks.get((event.service, event.check))
            # Seen again: it was unknown after it had been known (its unknown span is open).
            was_unknown = (stats.unknown_why if stats is not None and stats.state is State.UNKNOWN
                           and stats.unknown_spans and stats.unknown_spans[-1][1] is None else None)
            live.apply(event)
            self._log_check_state(event, was_unknown)
            return
        live.apply(event)
        if isinstance(event, StateChanged):
            if not (event.state == UNKNOWN and live.monitor_offline):  # the gap's line says it
                say.service_line(event.service, event.state, event.at, "%s is %s", event.service, event.state)
        elif isinstance(event, WindowUpdated):
            if event.window.check is None:
                say.service_window_updated(WindowOpened(event.window))
        elif isinstance(event, (WindowOpened, WindowClosed)):
            if event.window.check is None:
                say.service_window(event)
            else:
                say.check_window(event)
        elif isinstance(event, GapOpened):
            if event.gap.cause == "offline":
                log.warning("monitor offline since %s: %s; this time counts as unknown",
                            clock(event.gap.start), self._offline_why())
        elif isinstance(event, GapClosed):
            took = format_duration((event.gap.end or event.gap.start) - event.gap.start)
            if event.gap.cause == "offline":
                log.warning("monitor back online after %s", took)
            else:
                log.info("not running from %s to %s (%s): this time counts as unknown",
                         clock(event.gap.start), clock(event.gap.end or event.gap.start), took)

    def _log_check_state(self, event: StateChanged, was_unknown: str | None) -> None:
        """down/degraded are logged with their window; here: losing and regaining sight
        (not one line per check when the monitor itself goes offline)."""
        name = f"{event.service}/{event.check}"
        if event.state == State.UNKNOWN:
            if event.why not in _SILENT:
                self.announcer.check_line(event.service, "unknown", event.why.split(":", 1)[0], event.at,
                                          "%s is unknown: %s", name, event.why or "no result")
        elif was_unknown is not None and was_unknown not in _SILENT:
            if event.why:
                self.announcer.check_line(event.service, "seen", event.why.split(":", 1)[0], event.at,
                                          "%s is seen again, failing (%s); no outage window (yet)", name,
                                          event.why)
            else:
                self.announcer.check_line(event.service, "seen", "", event.at, "%s is %s again", name,
                                          event.state)

    def _offline_why(self) -> str:
        if not self.canaries:
            return "every host fails with dns/connect"
        # host names only: a URL's path or query is nobody's business in a log line
        failures = ", ".join(f"{self.canaries[k].check.host}: {r.reason}"
                             for k, r in self._canary_last.items() if k in self.canaries)
        return f"every connectivity canary fails ({failures})"


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
