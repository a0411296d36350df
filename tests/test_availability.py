"""Availability math, service rollup and monitor-offline detection (pure), and the
pipeline over a scripted hour compared with a hand-computed availability."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

import pytest
from helpers import make_config

from monitor.availability import availability, clip_merge, subtract
from monitor.live import LiveState
from monitor.maintenance import Maintenance
from monitor.outage import Event, GapClosed, GapOpened, State, WindowClosed, WindowOpened
from monitor.pipeline import Pipeline
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.rollup import (
    DEGRADED_PERFORMANCE,
    MAJOR_OUTAGE,
    OPERATIONAL,
    PARTIAL_OUTAGE,
    UNDER_MAINTENANCE,
    UNKNOWN,
    OfflineDetector,
    ServiceTracker,
    service_status,
)


def test_clip_merge_and_subtract() -> None:
    assert clip_merge([(5, 15), (0, 3), (12, 20), (30, None)], 2, 40) == [(2, 3), (5, 20), (30, 40)]
    assert subtract([(0, 10), (20, 30)], [(2, 4), (8, 22), (29, 40)]) == [(0, 2), (4, 8), (22, 29)]
    assert subtract([(0, 10)], []) == [(0, 10)]


@pytest.mark.parametrize(
    ("first_seen", "down", "unknown", "expected"),
    [
        (0.0, [], [], 1.0),
        (0.0, [(900.0, 1800.0)], [], 0.75),                        # 15 of 60 min down
        (0.0, [(900.0, 1800.0)], [(0.0, 900.0)], 1 - 900 / 2700),  # unknown excluded from observed
        (0.0, [(900.0, 1800.0)], [(1200.0, 1500.0)], 1 - 600 / 3300),  # unknown beats down
        (1800.0, [(2700.0, None)], [], 0.5),                       # open window runs to now
        (None, [], [], None),                                      # never seen
        (0.0, [], [(0.0, None)], None),                            # nothing observed
    ],
)
def test_availability(first_seen: float | None, down: list, unknown: list, expected: float | None) -> None:
    got = availability(3600.0, 3600.0, first_seen, down, unknown)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("checks", "maintenance", "expected"),
    [
        ([(True, State.UP), (True, State.UP)], False, OPERATIONAL),
        ([(True, State.DOWN), (True, State.UP)], False, PARTIAL_OUTAGE),
        ([(True, State.DOWN), (True, State.DOWN), (False, State.UP)], False, MAJOR_OUTAGE),
        ([(True, State.UP), (False, State.DOWN)], False, DEGRADED_PERFORMANCE),
        ([(True, State.DEGRADED), (True, State.UP)], False, DEGRADED_PERFORMANCE),
        ([(True, State.UNKNOWN), (True, State.UP)], False, OPERATIONAL),
        ([(True, State.DOWN), (True, State.UNKNOWN)], False, PARTIAL_OUTAGE),
        ([(True, State.DOWN)], True, UNDER_MAINTENANCE),
        ([(True, State.UNKNOWN)], True, UNDER_MAINTENANCE),
        # unknown: nothing is known about any critical check
        ([(True, State.UNKNOWN), (True, State.UNKNOWN)], False, UNKNOWN),
        ([(True, State.UNKNOWN), (False, State.UP)], False, UNKNOWN),
        ([(True, State.UNKNOWN), (False, State.DOWN)], False, UNKNOWN),
        ([(False, State.UNKNOWN)], False, UNKNOWN),  # no critical check: every check counts
        ([(False, State.UP)], False, OPERATIONAL),
        ([], False, UNKNOWN),  # every check skipped
    ],
)
def test_service_status(checks: list[tuple[bool, State]], maintenance: bool, expected: str) -> None:
    assert service_status(checks, maintenance) == expected


def test_service_tracker_windows_follow_status() -> None:
    t = ServiceTracker("svc")
    assert t.status == UNKNOWN  # nothing known before the first results
    assert [(e.state, e.at) for e in t.update(OPERATIONAL, 0)] == [(OPERATIONAL, 0)]  # type: ignore[union-attr]
    assert t.update(OPERATIONAL, 1) == []
    [_, opened] = t.update(PARTIAL_OUTAGE, 30, start_hint=10)
    assert isinstance(opened, WindowOpened)
    assert (opened.window.kind, opened.window.start, opened.window.severity) == ("down", 10, PARTIAL_OUTAGE)
    t.update(MAJOR_OUTAGE, 40)
    assert t.window is not None and t.window.severity == MAJOR_OUTAGE  # the worst status while open
    t.update(PARTIAL_OUTAGE, 50)
    [_, closed] = t.update(OPERATIONAL, 60)
    assert isinstance(closed, WindowClosed)
    assert (closed.window.start, closed.window.end, closed.window.severity) == (10, 60, MAJOR_OUTAGE)
    # degraded -> partial: the degraded window ends where the outage starts
    t.update(DEGRADED_PERFORMANCE, 100)
    events = t.update(PARTIAL_OUTAGE, 130, start_hint=120)
    assert [type(e).__name__ for e in events] == ["StateChanged", "WindowClosed", "WindowOpened"]
    assert events[1].window.end == 120 and events[2].window.start == 120  # type: ignore[union-attr]


def test_offline_needs_every_host_failing_with_dns_or_connect() -> None:
    d = OfflineDetector(frozenset({"a", "b"}))
    assert d.observe("a", 10, Reason.DNS) == []
    assert d.observe("a", 11, Reason.CONNECT) == []  # one host alone is that host's problem
    [opened] = d.observe("b", 12, Reason.CONNECT)
    assert isinstance(opened, GapOpened) and opened.gap.start == 10
    assert d.observe("b", 13, Reason.TIMEOUT) != []  # any other answer: we are online again
    assert not d.offline
    single = OfflineDetector(frozenset({"a"}))
    assert single.observe("a", 1, Reason.DNS) == []  # one host cannot tell us apart from it


def test_offline_by_canaries_starts_after_the_last_answer() -> None:
    """With canaries the services decide nothing; the gap starts at the first failure
    after the last answer of any canary (c1 failed at 10, but c2 answered at 11)."""
    d = OfflineDetector(frozenset({"a", "b"}), canaries=frozenset({"c1", "c2"}))
    assert d.observe("a", 9, Reason.DNS) == [] and d.observe("b", 9, Reason.DNS) == []
    assert d.holds(Reason.TIMEOUT) and not d.holds(Reason.HTTP_5XX)
    assert d.observe_canary("c1", 10, answered=False) == []
    assert d.observe_canary("c2", 11, answered=True) == []
    [opened] = d.observe_canary("c2", 12, answered=False)
    assert isinstance(opened, GapOpened) and opened.gap.start == 12
    assert d.decided("a", 10) and not d.decided("a", 10.5)  # c1 last spoke at 10
    [closed] = d.observe_canary("c1", 20, answered=True)
    assert isinstance(closed, GapClosed) and (closed.gap.start, closed.gap.end) == (12, 20)
    assert d.covers(15) and not d.covers(21) and d.started_after(11) and not d.started_after(12)
    # out of order: c1's failure started at 30 arrives after its answer started at 31;
    # the later probe has spoken
    late = OfflineDetector(frozenset({"a"}), canaries=frozenset({"c1"}))
    assert late.observe_canary("c1", 31, answered=True) == []
    assert late.observe_canary("c1", 30, answered=False) == [] and not late.offline


# --- the pipeline over a scripted hour ----------------------------------------

class MemorySink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def add_result(self, result: ProbeResult) -> None:
        pass

    async def write(self, events: Sequence[Event], on_commit: Callable[[], None] | None = None) -> None:
        self.events.extend(events)
        if on_commit is not None:
            on_commit()


def result(check: str, t: float, reason: Reason = Reason.OK, degraded: bool = False) -> ProbeResult:
    return ProbeResult("svc", check, started=t, duration=0.1, reason=reason, degraded=degraded)


def test_scripted_hour_matches_hand_computed_availability() -> None:
    """10 s probes for an hour: up 0-10 min; failing 10-25; blocked 25-30; up 30-40;
    maintenance 40-50 (probes fail, but that is maintenance); up 50-60.

    By hand: observed = 60 - 5 (blocked) - 10 (maintenance) = 45 min. The down window
    starts at the first failure (600 s) and ends at the first good probe after it; the
    blocked stretch 1500-1800 s is unknown, so the window's observed down time is
    1500 - 600 = 900 s. Availability = 1 - 900 / 2700 = 66.67 %.
    """
    t0 = 1_800_000_000.0
    cfg = make_config(
        {"api": {"url": "http://a.example/", "interval": "10s", "timeout": "5s"},
         "web": {"url": "http://b.example/", "interval": "10s", "timeout": "5s"}},
    )
    svc = dataclasses.replace(cfg.services[0], maintenance=(Maintenance(600.0, start=t0 + 2400),))
    cfg = dataclasses.replace(cfg, services=(svc,))

    live, sink = LiveState(), MemorySink()
    pipeline = Pipeline(cfg, live, sink)

    def reason_at(minute: float) -> Reason:
        if 10 <= minute < 25 or 40 <= minute < 50:
            return Reason.HTTP_5XX
        if 25 <= minute < 30:
            return Reason.BLOCKED
        return Reason.OK

    async def drive() -> None:
        for i in range(360):
            t = t0 + i * 10
            await pipeline.handle(result("api", t, reason_at(i / 6)))
            await pipeline.handle(result("web", t + 1))

    asyncio.run(drive())
    stats = live.checks[("svc", "api")]
    now = t0 + 3600
    maintenance = [span for m in svc.maintenance for span in m.spans(now - 30 * 86400, now)]
    got = stats.availability(now, live.gap_spans(), maintenance)
    assert got["1h"] == pytest.approx(1 - 900 / 2700, abs=0.001)
    assert got["24h"] == got["1h"]  # first seen an hour ago
    assert live.checks[("svc", "web")].availability(now, [], maintenance)["1h"] == pytest.approx(1.0)
    windows = [e.window for e in sink.events if isinstance(e, WindowClosed) and e.window.check == "api"]
    assert [(w.kind, w.start - t0, w.end - t0) for w in windows] == [("down", 600.0, 1800.0)]
    assert not any(isinstance(e, (GapOpened, GapClosed)) for e in sink.events)  # web stayed up


class SlowSink(MemorySink):
    """A disk that takes 20 ms per commit."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def write(self, events: Sequence[Event], on_commit: Callable[[], None] | None = None) -> None:
        await asyncio.sleep(0.02)
        self.commits += 1
        await super().write(events, on_commit)


def test_slow_commits_are_batched_and_keep_order() -> None:
    """300 results that each open or close a window, arriving faster than the disk
    commits: the consumer commits what queued meanwhile together, so it keeps up, and
    the events are exactly those (in the same order) of processing one by one."""
    cfg = make_config({"api": {"url": "http://a.example/", "interval": "10s", "timeout": "5s",
                               "open_after": 1, "close_after": 1}})
    t0 = 1_800_000_000.0
    results = [result("api", t0 + i, Reason.HTTP_5XX if i % 2 else Reason.OK) for i in range(300)]

    inline = MemorySink()
    inline_pipeline = Pipeline(cfg, LiveState(), inline)

    async def one_by_one() -> None:
        for r in results:
            await inline_pipeline.handle(r)

    asyncio.run(one_by_one())
    assert sum(isinstance(e, WindowOpened) and e.window.check == "api" for e in inline.events) == 150

    slow = SlowSink()
    live = LiveState()
    pipeline = Pipeline(cfg, live, slow)

    async def queued() -> None:
        pipeline.start()
        for r in results:
            await pipeline.handle(r)
            await asyncio.sleep(0)  # probes finish one by one, between consumer turns
        await asyncio.wait_for(pipeline.join(), 5)
        await pipeline.stop()

    asyncio.run(queued())
    assert slow.events == inline.events
    assert slow.commits <= 5  # one by one it would be 300 commits (6 s)
    assert live.checks[("svc", "api")].outages_opened == 150
