"""Never green when blind: the pipeline with connectivity canaries and without them.

Scripted timelines through the real Pipeline (events into an in-memory sink): who
decides that the monitor is offline, what every check and service says meanwhile,
which windows open, what availability reads, and what is logged and announced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from helpers import make_config
from test_availability import MemorySink

from monitor.config import CANARY_SERVICE, Config
from monitor.live import LiveState
from monitor.maintenance import Maintenance
from monitor.outage import GapClosed, GapOpened, State, StateChanged, WindowClosed, WindowOpened
from monitor.pipeline import Pipeline
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.status import UNKNOWN

T0 = 1_800_000_000.0


class Announced:
    """What the notifier is handed."""

    def __init__(self) -> None:
        self.events: list[WindowOpened | WindowClosed] = []

    def publish(self, event: WindowOpened | WindowClosed) -> None:
        self.events.append(event)


def vendor_config(canaries: bool = True, **defaults: object) -> Config:
    """One vendor, two hosts (api and www of vendor.example): the shape that fooled the
    inference. Canaries, when there are, are two local targets."""
    top: dict[str, object] = {"defaults": {"interval": "10s", "timeout": "5s", **defaults}}
    if canaries:
        top["connectivity"] = ["http://127.0.0.1:9/", "127.0.0.2:9"]
    return make_config({"api": {"url": "https://api.vendor.example/models"},
                        "website": {"url": "https://www.vendor.example/"}}, service="vendor", **top)


def result(check: str, t: float, reason: Reason = Reason.OK) -> ProbeResult:
    return ProbeResult("vendor", check, started=t, duration=0.05, reason=reason)


def canary(n: int, t: float, reason: Reason = Reason.OK) -> ProbeResult:
    return ProbeResult(CANARY_SERVICE, f"canary{n}", started=t, duration=0.05, reason=reason)


class Run:
    def __init__(self, config: Config) -> None:
        self.live, self.sink, self.announced = LiveState(), MemorySink(), Announced()
        self.pipeline = Pipeline(config, self.live, self.sink, self.announced)  # type: ignore[arg-type]

    def feed(self, results: list[ProbeResult]) -> None:
        async def go() -> None:
            for r in results:
                await self.pipeline.handle(r)

        asyncio.run(go())

    def tick(self, t: float, services: Reason, canaries: Reason | None) -> None:
        """One round at `t`: both checks, then (offset by 1 s) both canaries."""
        batch = [result("api", t, services), result("website", t + 0.5, services)]
        if canaries is not None:
            batch += [canary(1, t + 1, canaries), canary(2, t + 1.5, canaries)]
        self.feed(batch)

    def of(self, kind: type) -> list:
        return [e for e in self.sink.events if isinstance(e, kind)]

    def states(self) -> dict[str, str]:
        out = {c: s.state.value for (_, c), s in self.live.checks.items()}
        out["service"] = self.live.services["vendor"].status
        return out


def test_with_canaries_answering_a_vendor_refusing_connections_opens_windows() -> None:
    """Every host of the config belongs to one vendor and refuses connections: without
    canaries that looked like our own network failing (no window, ever). The canaries
    answer, so it is the vendor's outage."""
    run = Run(vendor_config())
    for i in range(3):
        run.tick(T0 + 10 * i, Reason.OK, Reason.OK)
    assert run.states() == {"api": "up", "website": "up", "service": "operational"}
    for i in range(3, 7):
        run.tick(T0 + 10 * i, Reason.CONNECT, Reason.OK)
    opened = [(w.window.check, w.window.start - T0) for w in run.of(WindowOpened)]
    assert ("api", 30.0) in opened and ("website", 30.5) in opened and (None, 30.0) in opened
    assert run.states() == {"api": "down", "website": "down", "service": "major_outage"}
    assert not run.of(GapOpened) and not run.live.monitor_offline


def test_without_canaries_the_same_timeline_is_taken_for_our_own_network() -> None:
    """Today's inference stays where there are no canaries: every distinct host failing
    with dns/connect at once is the monitor offline; no window opens, all is unknown."""
    run = Run(vendor_config(canaries=False))
    for i in range(3):
        run.tick(T0 + 10 * i, Reason.OK, None)
    for i in range(3, 7):
        run.tick(T0 + 10 * i, Reason.CONNECT, None)
    assert not run.of(WindowOpened) or all(e.window.start < T0 + 30 for e in run.of(WindowOpened))
    [gap] = run.of(GapOpened)
    assert gap.gap.start == T0 + 30 and run.live.monitor_offline
    assert run.states() == {"api": "unknown", "website": "unknown", "service": UNKNOWN}


def test_every_canary_failing_is_offline_whatever_the_services_say() -> None:
    """The canaries fail; one service even answers 5xx (a response from somewhere): the
    monitor is offline all the same. Everything is unknown at once (not one interval
    later), no window opens, the 5xx is not counted against the vendor, and when a
    canary answers again the gap closes and the checks are seen again."""
    run = Run(vendor_config())
    for i in range(3):
        run.tick(T0 + 10 * i, Reason.OK, Reason.OK)
    run.feed([canary(1, T0 + 31, Reason.DNS), canary(2, T0 + 31.5, Reason.TIMEOUT)])
    [gap] = run.of(GapOpened)
    assert gap.gap.start == T0 + 31
    assert run.states() == {"api": "unknown", "website": "unknown", "service": UNKNOWN}
    assert run.live.monitor_offline
    for i in range(4, 12):
        t = T0 + 10 * i
        run.feed([result("api", t, Reason.HTTP_5XX), result("website", t + 0.5, Reason.DNS),
                  canary(1, t + 1, Reason.DNS), canary(2, t + 1.5, Reason.CONNECT)])
    assert not run.of(WindowOpened)
    assert run.states() == {"api": "unknown", "website": "unknown", "service": UNKNOWN}
    run.feed([canary(1, T0 + 121, Reason.OK)])
    [closed] = run.of(GapClosed)
    assert (closed.gap.start, closed.gap.end) == (T0 + 31, T0 + 121)
    run.tick(T0 + 130, Reason.OK, Reason.OK)
    assert run.states() == {"api": "up", "website": "up", "service": "operational"}
    assert not run.of(WindowOpened)


def test_a_service_failure_waits_for_the_canaries_verdict() -> None:
    """A connect failure is held until every canary has reported after it: the canaries
    then fail, so it was ours and never counts toward a window."""
    run = Run(vendor_config(open_after=1))
    run.tick(T0, Reason.OK, Reason.OK)
    run.feed([result("api", T0 + 10, Reason.CONNECT), canary(1, T0 + 11, Reason.CONNECT)])
    assert not run.of(WindowOpened)  # canary2 has not spoken since
    run.feed([canary(2, T0 + 11.5, Reason.CONNECT)])
    assert not run.of(WindowOpened) and run.of(GapOpened)
    assert run.states()["api"] == "unknown"


def test_a_check_never_seen_has_no_availability_and_the_service_is_unknown() -> None:
    """Offline from the start: results come (dns failures), nothing is ever known.
    Availability has no value for any window (it read 100 % for a minute), and the
    service is unknown, never operational."""
    run = Run(vendor_config())
    for i in range(6):
        run.tick(T0 + 10 * i, Reason.DNS, Reason.DNS)
    stats = run.live.checks[("vendor", "api")]
    assert stats.first_seen == T0 and stats.first_known is None
    assert stats.availability(T0 + 60, run.live.gap_spans(), []) == dict.fromkeys(("1h", "24h", "7d", "30d"))
    assert run.states() == {"api": "unknown", "website": "unknown", "service": UNKNOWN}


def test_availability_starts_when_the_state_is_first_known() -> None:
    """A check whose first results tell nothing (a bot wall) and then answer: the
    blind first minute is not counted as up."""
    run = Run(vendor_config())
    run.feed([result("api", T0 + i, Reason.BLOCKED) for i in range(0, 60, 10)])
    run.feed([result("api", T0 + 60 + i) for i in range(0, 60, 10)])
    stats = run.live.checks[("vendor", "api")]
    assert (stats.first_seen, stats.first_known) == (T0, T0 + 60)
    assert stats.availability(T0 + 120, [], [])["1h"] == 1.0
    # down for the second half of the observed minute: 50 %, not 75 %
    run2 = Run(vendor_config(open_after=1, close_after=1))
    run2.feed([result("api", T0 + i, Reason.BLOCKED) for i in range(0, 60, 10)])
    run2.feed([result("api", T0 + 60 + i, Reason.OK if i < 30 else Reason.HTTP_5XX)
               for i in range(0, 60, 10)])
    got = run2.live.checks[("vendor", "api")].availability(T0 + 120, [], [])["1h"]
    assert got == pytest.approx(0.5)


def test_maintenance_is_logged_as_maintenance_and_a_failing_check_is_not_up_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """Maintenance 30-60 s; the api answers 503 from 20 s on. The log said
    "unknown (ok: )" at its start and "is up again" at its end."""
    cfg = vendor_config()
    svc = dataclasses.replace(cfg.services[0], maintenance=(Maintenance(30.0, start=T0 + 30),))
    run = Run(dataclasses.replace(cfg, services=(svc,)))
    caplog.set_level(logging.INFO, logger="aipulse")
    for i in range(9):
        api = Reason.OVERLOADED if i >= 2 else Reason.OK
        t = T0 + 10 * i
        run.feed([ProbeResult("vendor", "api", t, 0.05, api, detail="HTTP 503" if i >= 2 else ""),
                  result("website", t + 0.5), canary(1, t + 1), canary(2, t + 1.5)])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vendor/api ")]
    assert lines == ["vendor/api is unknown: under maintenance",
                     "vendor/api is seen again, failing (overloaded: HTTP 503); no outage window (yet)"]
    assert "vendor/website is up again" in [r.getMessage() for r in caplog.records]  # it was


def test_no_false_offline_line_at_restart(caplog: pytest.LogCaptureFixture) -> None:
    """The time the daemon was not running is a gap too, but not "monitor offline"."""
    from monitor.pipeline import restart_gap_events

    run = Run(vendor_config())
    caplog.set_level(logging.INFO, logger="aipulse")
    asyncio.run(run.pipeline.commit(restart_gap_events([], heartbeat=T0, now=T0 + 90)))
    lines = [r.getMessage() for r in caplog.records]
    assert not any("offline" in line for line in lines), lines
    assert any(line.startswith("not running from") for line in lines), lines
    assert not run.live.monitor_offline


def test_a_service_window_shorter_than_one_interval_is_never_announced(
        caplog: pytest.LogCaptureFixture) -> None:
    """api down (30-60 s) while website is slow (20-60.4 s): when the api recovers
    (its end back-dated to its first good probe at 60 s) the service steps down to
    degraded_performance, and the website's recovery a moment later (back-dated to
    60.4 s) ends that: a service window of 0.4 s. It is stored (history is history)
    but no warning and no webhook announce it; the outage windows are announced."""
    cfg = make_config({"api": {"url": "https://api.vendor.example/", "interval": "10s", "timeout": "5s"},
                       "website": {"url": "https://www.vendor.example/", "interval": "10s", "timeout": "5s",
                                   "expect": {"max_latency": "1s"}}},
                      service="vendor", connectivity=["127.0.0.1:9"])
    run = Run(cfg)
    caplog.set_level(logging.INFO, logger="aipulse")
    slow = lambda t: ProbeResult("vendor", "website", t, 2.0, Reason.OK, degraded=True)  # noqa: E731
    for i in range(12):
        t = T0 + 10 * i
        api = result("api", t, Reason.HTTP_5XX if 3 <= i < 6 else Reason.OK)
        web = slow(t + 0.4) if 2 <= i < 6 else result("website", t + 0.4)
        run.feed([api, web, canary(1, t + 1)])
    short = [e.window for e in run.of(WindowClosed) if e.window.check is None and e.window.kind == "degraded"
             and e.window.end is not None and e.window.end - e.window.start < 10]
    assert short, [e.window for e in run.of(WindowClosed)]
    starts = {w.start for w in short}
    announced = [e.window for e in run.announced.events if e.window.check is None]
    assert not [w for w in announced if w.start in starts], announced
    assert [w.kind for w in announced if w.check is None] == ["down", "down"]  # opened and closed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(line.startswith("vendor: degraded performance") for line in warnings), warnings
    assert sum(line.startswith("vendor: outage") for line in warnings) == 2, warnings


def test_unknown_never_closes_a_service_window() -> None:
    """A bot wall over every check mid-outage: the service is unknown meanwhile, and its
    outage window stays open (it ends when the service is seen up again)."""
    run = Run(vendor_config(open_after=1, close_after=1))
    run.tick(T0, Reason.HTTP_5XX, Reason.OK)
    assert run.states()["service"] == "major_outage"
    run.tick(T0 + 10, Reason.OK, Reason.OK)
    run.tick(T0 + 20, Reason.HTTP_5XX, Reason.OK)
    changes = [e for e in run.of(StateChanged) if e.check is None]
    assert [e.state for e in changes][-1] == "major_outage"
    assert run.live.services["vendor"].window is not None
    assert State.UNKNOWN.value == UNKNOWN


@pytest.mark.parametrize(("statuses", "worst", "unknown", "problems"), [
    (["operational", "operational"], "operational", 0, 0),
    (["operational", "unknown"], "unknown", 1, 0),  # never "All services operational"
    (["unknown", "unknown"], "unknown", 2, 0),
    (["under_maintenance", "unknown"], "unknown", 1, 0),
    (["under_maintenance", "operational"], "under_maintenance", 0, 0),
    (["partial_outage", "unknown", "major_outage"], "major_outage", 1, 2),
    (["degraded_performance", "operational"], "degraded_performance", 0, 1),
])
def test_the_page_summary_counts_unknown_and_is_never_green_with_it(
        statuses: list[str], worst: str, unknown: int, problems: int) -> None:
    from monitor.page import summary

    got = summary(statuses)
    assert (got["worst"], got["unknown"], got["problems"], got["total"]) == (worst, unknown, problems,
                                                                             len(statuses))
