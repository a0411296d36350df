"""The HTML status page: the pure parts (90-day bars, latency downsampling) with tables,
escaping through a real daemon, and the page as a real headless Chromium renders it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import RunningDaemon, make_config, start_daemon, wait_for
from prometheus_client.registry import CollectorRegistry
from targets import serve

from monitor import page, server
from monitor.config import parse
from monitor.live import LiveState
from monitor.outage import OutageWindow, State
from monitor.page import (
    DayBar,
    daily_bars,
    downsample,
    overall_availability,
    sparkline,
)
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.statuspage import VendorComponent, VendorIncident, VendorStatus, unknown
from monitor.store import migrate, query_latency
from monitor.units import parse_time
from monitor.webconfig import WebConfig

ARTIFACTS = Path(__file__).parent / "artifacts"
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

# ---------------------------------------------------------------------------- daily_bars

NOW = parse_time("2025-01-28T12:00:00Z", 0)  # noon UTC, so today is half observed
DAY = 86400.0
MIDNIGHT = parse_time("2025-01-28T00:00:00Z", 0)  # today's start
LONG_AGO = NOW - 200 * DAY


def t(text: str) -> float:
    return parse_time(text, 0)


def down(start: str, end: str | None, severity: str = "major_outage") -> OutageWindow:
    return OutageWindow("svc", "api", "down", t(start), None if end is None else t(end), "overloaded",
                        severity)


def degraded(start: str, end: str | None) -> OutageWindow:
    return OutageWindow("svc", None, "degraded", t(start), None if end is None else t(end),
                        "degraded_performance", "degraded_performance")


def by_date(bars: list[DayBar]) -> dict[str, DayBar]:
    return {b.date.isoformat(): b for b in bars}


# (name, windows, first_seen, unknown, {date: (worst, availability, downtime_seconds)})
BAR_CASES: list[tuple[str, list[OutageWindow], float | None, list[tuple[float, float | None]],
                      dict[str, tuple[str, float | None, float]]]] = [
    ("never probed: every day is no data", [], None, [],
     {"2025-01-28": ("no_data", None, 0.0), "2024-10-31": ("no_data", None, 0.0)}),
    ("days before the first probe are no data", [], t("2025-01-26T18:00:00Z"), [],
     {"2025-01-25": ("no_data", None, 0.0),
      "2025-01-26": ("operational", 1.0, 0.0),  # 6 h watched, all up
      "2025-01-27": ("operational", 1.0, 0.0),
      "2025-01-28": ("operational", 1.0, 0.0)}),
    ("a full-day outage", [down("2025-01-27T00:00:00Z", "2025-01-28T00:00:00Z")], LONG_AGO, [],
     {"2025-01-26": ("operational", 1.0, 0.0),
      "2025-01-27": ("major_outage", 0.0, DAY),
      "2025-01-28": ("operational", 1.0, 0.0)}),  # it ended exactly at midnight
    ("a partial outage across midnight UTC counts on both days",
     [down("2025-01-26T23:00:00Z", "2025-01-27T01:00:00Z", "partial_outage")], LONG_AGO, [],
     {"2025-01-26": ("partial_outage", 1 - 3600 / DAY, 3600.0),
      "2025-01-27": ("partial_outage", 1 - 3600 / DAY, 3600.0),
      "2025-01-25": ("operational", 1.0, 0.0)}),
    ("degraded: yellow, and still up",
     [degraded("2025-01-27T10:00:00Z", "2025-01-27T12:00:00Z")], LONG_AGO, [],
     {"2025-01-27": ("degraded_performance", 1.0, 0.0)}),
    ("the worst window of the day wins",
     [degraded("2025-01-27T01:00:00Z", "2025-01-27T02:00:00Z"),
      down("2025-01-27T03:00:00Z", "2025-01-27T03:30:00Z", "partial_outage"),
      degraded("2025-01-27T04:00:00Z", "2025-01-27T05:00:00Z")], LONG_AGO, [],
     {"2025-01-27": ("partial_outage", 1 - 1800 / DAY, 1800.0)}),
    ("an open window runs to now; today is observed only up to now",
     [down("2025-01-28T11:00:00Z", None)], LONG_AGO, [],
     {"2025-01-28": ("major_outage", 1 - 3600 / (NOW - MIDNIGHT), 3600.0),
      "2025-01-27": ("operational", 1.0, 0.0)}),
    ("a window open for days paints every day it covers",
     [down("2025-01-26T12:00:00Z", None)], LONG_AGO, [],
     {"2025-01-26": ("major_outage", 0.5, DAY / 2),
      "2025-01-27": ("major_outage", 0.0, DAY),
      "2025-01-28": ("major_outage", 0.0, NOW - MIDNIGHT)}),
    ("unknown time (a monitor gap) is not observed: a day entirely unknown is no data",
     [], LONG_AGO, [(t("2025-01-26T00:00:00Z"), t("2025-01-27T00:00:00Z")),
                    (t("2025-01-27T00:00:00Z"), t("2025-01-27T12:00:00Z"))],
     {"2025-01-26": ("no_data", None, 0.0),
      "2025-01-27": ("operational", 1.0, 0.0)}),
    ("down time inside unknown time does not count",
     [down("2025-01-27T10:00:00Z", "2025-01-27T14:00:00Z")], LONG_AGO,
     [(t("2025-01-27T12:00:00Z"), t("2025-01-28T00:00:00Z"))],
     {"2025-01-27": ("major_outage", 1 - 7200 / (12 * 3600), 7200.0)}),
    ("without first_seen, the first window marks the start of data",
     [down("2025-01-27T06:00:00Z", "2025-01-27T07:00:00Z")], None, [],
     {"2025-01-26": ("no_data", None, 0.0),
      "2025-01-27": ("major_outage", 1 - 3600 / (18 * 3600), 3600.0)}),
]


@pytest.mark.parametrize(("windows", "first_seen", "unknown", "expected"),
                         [c[1:] for c in BAR_CASES], ids=[c[0] for c in BAR_CASES])
def test_daily_bars(windows: list[OutageWindow], first_seen: float | None,
                    unknown: list[tuple[float, float | None]],
                    expected: dict[str, tuple[str, float | None, float]]) -> None:
    bars = daily_bars(windows, NOW, first_seen=first_seen, unknown=unknown)
    assert len(bars) == 90
    assert bars[-1].date == dt.date(2025, 1, 28) and bars[0].date == dt.date(2024, 10, 31)
    assert [b.date for b in bars] == sorted({b.date for b in bars})  # one a day, oldest first
    days = by_date(bars)
    for date, (worst, availability, downtime) in expected.items():
        bar = days[date]
        assert bar.worst == worst, date
        assert bar.downtime_seconds == pytest.approx(downtime), date
        if availability is None:
            assert bar.availability is None, date
        else:
            assert bar.availability == pytest.approx(availability), date


def test_daily_bars_length_and_overall_availability() -> None:
    bars = daily_bars([down("2025-01-27T00:00:00Z", "2025-01-27T06:00:00Z")], NOW, days=7,
                      first_seen=t("2025-01-25T00:00:00Z"))
    assert [b.worst for b in bars] == ["no_data"] * 3 + ["operational", "operational", "major_outage",
                                                         "operational"]
    # 3.5 days watched, 6 hours of it down
    assert overall_availability(bars) == pytest.approx(1 - 6 / 84)
    assert overall_availability(daily_bars([], NOW)) is None


# ---------------------------------------------------------------------------- sparkline

START = NOW - DAY


def test_downsample_keeps_at_most_96_time_ordered_points() -> None:
    raw = [(START + i * 30, 0.2 + (i % 2) * 0.2) for i in range(2880)]  # every 30 s for 24 h
    points = downsample(reversed(raw), START, NOW)
    assert len(points) == 96
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    assert all(p[1] == pytest.approx(0.3) for p in points)  # each bucket is a mean
    assert all(START <= p[0] <= NOW for p in points)


@pytest.mark.parametrize(("raw", "expected"), [
    ([], []),
    ([(START + 10, 1.0)], [(START + 10, 1.0)]),
    # same bucket (15 min wide): one mean point; the next bucket: its own point
    ([(START + 0, 1.0), (START + 600, 3.0), (START + 900, 5.0)], [(START + 300, 2.0), (START + 900, 5.0)]),
    # outside the span: left out; exactly at the end: the last bucket
    ([(START - 1, 9.0), (NOW + 1, 9.0), (NOW, 4.0)], [(NOW, 4.0)]),
    # an empty bucket is a gap, not a zero
    ([(START + 60, 1.0), (START + 5 * 900 + 60, 1.0)], [(START + 60, 1.0), (START + 5 * 900 + 60, 1.0)]),
    # weights (what read_latency returns: mean time, mean value, count)
    ([(START + 100, 1.0, 3), (START + 200, 5.0, 1)], [(START + 125, 2.0)]),
])
def test_downsample_table(raw: list[tuple[float, ...]], expected: list[tuple[float, float]]) -> None:
    assert downsample(raw, START, NOW) == [pytest.approx(e) for e in expected]


def test_sparkline_geometry_and_gaps() -> None:
    assert sparkline([], START, NOW) is None
    hour = 3600.0
    points = [(START + i * 900, 0.1 * (1 + i % 3)) for i in range(8)]  # 2 h of data
    points += [(START + 10 * hour, 0.3)]  # alone after a long gap
    points += [(START + 20 * hour + i * 900, 0.2) for i in range(4)]
    sp = sparkline(points, START, NOW, width=240, height=40)
    assert sp is not None
    assert len(sp.lines) == 2 and len(sp.dots) == 1  # the gaps break the line
    assert sp.peak == pytest.approx(0.3) and sp.last == pytest.approx(0.2) and sp.count == 13
    xs = [float(xy.split(",")[0]) for line in sp.lines for xy in line.split()]
    ys = [float(xy.split(",")[1]) for line in sp.lines for xy in line.split()]
    assert min(xs) >= 0 and max(xs) <= 240 and min(ys) >= 0 and max(ys) <= 40
    assert min(ys) == pytest.approx(2.0)  # the peak touches the top (inside the stroke padding)
    assert sp.dots[0][0] == pytest.approx(100.0)  # 10 h of 24 h across 240 units


def _results_db(path: Path, rows: list[tuple[float, str, str, str, float]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO results (ts, service, check_id, reason, status, duration, degraded, "
                     "detail) VALUES (?, ?, ?, ?, 200, ?, 0, '')", rows)
    conn.execute("COMMIT")
    conn.close()


def test_query_latency_buckets_in_sqlite_like_downsample(tmp_path: Path) -> None:
    """One aggregate query: at most 96 points per check, good probes only, and
    downsampling its output again gives what the raw rows give."""
    db = tmp_path / "h.db"
    rows = [(START + i * 7.0, "acme", check, "ok", 0.05 + (i * 37 % 100) / 1000)
            for i in range(int(DAY / 7)) for check in ("api", "web")]
    rows += [(START + i * 60.0, "acme", "api", "connect", 0.001) for i in range(100)]  # failures: not latency
    rows += [(START - 3600, "acme", "api", "ok", 9.0)]  # too old
    rows += [(START + 100, "other", "api", "ok", 1.0)]
    _results_db(db, rows)
    got = query_latency(str(db), START, NOW, buckets=96, service="acme")
    assert set(got) == {("acme", "api"), ("acme", "web")}
    assert all(len(points) <= 96 for points in got.values())
    assert sum(n for points in got.values() for _, _, n in points) == 2 * int(DAY / 7)
    raw = [(ts, d) for ts, s, _, reason, d in rows if s == "acme" and reason == "ok" and START <= ts <= NOW]
    combined = downsample([p for points in got.values() for p in points], START, NOW)
    assert combined == [pytest.approx(p) for p in downsample(raw, START, NOW)]
    everyone = query_latency(str(db), START, NOW, buckets=96)
    assert set(everyone) == {("acme", "api"), ("acme", "web"), ("other", "api")}


# ---------------------------------------------------------------------------- escaping

def test_config_and_service_text_is_escaped(tmp_path: Path) -> None:
    """A title from config and a failure detail quoting the body's expectation both
    hold markup; the page shows them as text."""
    with serve() as target:
        config = {
            "defaults": {"interval": "200ms", "timeout": "200ms", "open_after": 2},
            "services": {"evil": {"title": f"Evil {XSS} AI", "checks": {
                "api": {"url": target.url("/ok"), "expect": {"body_contains": XSS}},
            }}},
        }
        with start_daemon(config, tmp_path) as d:
            wait_for(lambda: d.get("/api/v1/status").json()["services"][0]["checks"][0]["last_result"])
            for path in ("/", "/services/evil"):
                r = d.get(path)
                assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
                assert "<script" not in r.text.lower()
                assert f"Evil {XSS_ESCAPED} AI" in r.text  # the title
                assert f"body does not contain &#39;{XSS_ESCAPED}&#39;" in r.text  # the detail
                assert "default-src 'none'" in r.headers["content-security-policy"]
            r = d.get("/services/no-such")
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
            assert "No such service" in r.text and "Traceback" not in r.text
            for bad in ("/services/Evil", "/services/%3Cscript%3E", "/services/evil.html"):
                r = d.get(bad)
                assert r.status_code == 404 and "No such service" in r.text, bad
                assert "<script" not in r.text.lower()


async def test_vendor_text_and_storage_errors_are_escaped(tmp_path: Path) -> None:
    """Vendor component names, incident names and details are vendor text; a history
    error message holds a path. All shown, all escaped; the page still renders."""
    cfg = make_config({"api": {"url": "http://127.0.0.1:9/"}}, service="acme")
    live = LiveState()
    live.set_services(cfg.services)
    sstats = live.services["acme"]
    sstats.service = dataclasses.replace(sstats.service, status_page="https://status.example/api/v2/summary.json")
    sstats.vendor_update(VendorStatus(
        "statuspage", "major_outage",
        components=(VendorComponent("c1", f"API {XSS}", "major_outage"),),
        incidents=(VendorIncident("i1", f"Errors {XSS}", "investigating", "major", NOW, ("c1",)),),
        detail=f"note {XSS}"), NOW)
    stats = live.checks[("acme", "api")]
    stats.record(ProbeResult("acme", "api", time.time(), 0.01, Reason.CONNECT, detail=f"refused {XSS}"))
    stats.set_state(State.DOWN, time.time())
    missing_db = tmp_path / f"{XSS}.db"

    async def reload() -> str | None:
        return None

    app = server.make_app(live, CollectorRegistry(), str(missing_db), reload, WebConfig())
    runner = await server.start(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port(runner)}") as client:
            for path in ("/", "/services/acme"):
                r = await client.get(path)
                assert r.status_code == 200
                assert "<script" not in r.text.lower()
                assert f"API {XSS_ESCAPED}" in r.text and f"refused {XSS_ESCAPED}" in r.text
                assert f"Errors {XSS_ESCAPED}" in r.text
                assert "History unavailable" in r.text and XSS_ESCAPED + ".db" in r.text
            assert f"note {XSS_ESCAPED}" in (await client.get("/services/acme")).text
            sstats.vendor_update(unknown(f"HTML where JSON was expected: {XSS}"), NOW)
            app[page.PAGES].clear()  # pages are reused for a while (monitor.pagecache): build anew
            r = await client.get("/")
            assert f"unknown: HTML where JSON was expected: {XSS_ESCAPED}" in r.text
            assert "<script" not in r.text.lower()
            sstats.status = "under_maintenance"  # planned work: said, but not a problem
            app[page.PAGES].clear()
            r = await client.get("/")
            assert 'data-status="under_maintenance"' in r.text and "planned maintenance in progress" in r.text
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------- speed

async def test_page_is_fast_with_a_day_of_results(tmp_path: Path) -> None:
    """Seven services of three checks probed every 30 s for a day (60 480 results) and
    windows over 90 days: each page is two queries and renders well within a second."""
    services = {f"svc{s}": {"title": f"Service {s}", "checks": {
        c: {"url": f"http://127.0.0.1:9/{c}"} for c in ("website", "api", "login")}} for s in range(7)}
    cfg = parse(yaml.safe_dump({"services": services}), "t.yaml", env={})
    now = time.time()
    db = tmp_path / "h.db"
    _results_db(db, [(now - DAY + i * 30, f"svc{s}", c, "ok", 0.1 + (i % 7) / 100)
                     for s in range(7) for c in ("website", "api", "login") for i in range(2880)])
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO windows (service, check_id, kind, start_ts, end_ts, reason, severity) "
                     "VALUES (?, ?, 'down', ?, ?, 'overloaded', ?)",
                     [(f"svc{s}", check, now - k * DAY / 3, now - k * DAY / 3 + 600, sev)
                      for s in range(7) for k in range(1, 270)
                      for check, sev in (("api", "major_outage"), ("", "partial_outage"))])
    conn.commit()
    conn.close()
    live = LiveState()
    live.set_services(cfg.services)
    for stats in live.checks.values():
        stats.first_seen = now - 100 * DAY
        stats.record(ProbeResult(stats.check.service, stats.check.id, now, 0.1, Reason.OK))

    async def reload() -> str | None:
        return None

    runner = await server.start(server.make_app(live, CollectorRegistry(), str(db), reload, WebConfig()),
                                "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port(runner)}") as client:
            for path in ("/", "/services/svc3"):
                await client.get(path)  # warm up (template compilation)
                began = time.perf_counter()
                r = await client.get(path)
                took = time.perf_counter() - began
                assert r.status_code == 200 and r.text.count('class="bar"') >= 90
                assert took < 1.0, f"{path} took {took:.3f}s"
                print(f"{path}: {took * 1000:.0f} ms, {len(r.content)} bytes on the wire")
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------- Chromium

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic")


def chromium(tmp_path: Path, *args: str, timeout: float = 60.0) -> str:
    """Run headless Chromium once with a fresh profile; its stdout. Killed (its whole
    process group) when it overruns `timeout`."""
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    assert os.path.exists(binary), "chromium is required (Debian package chromium; .ci/run installs it)"
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium {' '.join(args)} did not finish within {timeout}s")
    assert proc.returncode == 0, err[-2000:]
    return out


class Dom(HTMLParser):
    """Every element with its attributes and the `data-service` of its section."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                      "track", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self._stack: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        service = a.get("data-service") or (self._stack[-1][1] if self._stack else None)
        self.elements.append((tag, a, service))
        if tag not in self.VOID:
            self._stack.append((tag, service))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a, a.get("data-service") or (self._stack[-1][1] if self._stack else None)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                return

    def find(self, tag: str, service: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a, s in self.elements if t == tag and (service is None or s == service)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[RunningDaemon, dict[str, Any]]]:
    """A daemon watching two services; acme's API has had an outage that is still open
    (the target answers 503 until the window opens, and keeps doing so)."""
    with serve() as target:
        config = {
            "status_page_interval": "500ms",
            "defaults": {"interval": "300ms", "timeout": "250ms", "open_after": 3, "close_after": 2},
            "services": {
                "acme": {"title": "Acme AI", "status_page": target.url("/api/v2/summary.json"), "checks": {
                    "api": {"url": target.url("/switch/api")},
                    "website": {"url": target.url("/ok"), "expect": {"body_contains": "hello"}},
                }},
                "globex": {"title": "Globex Models", "checks": {"api": {"url": target.url("/json")}}},
            },
        }
        with start_daemon(config, tmp_path, db=tmp_path / "history.db") as d:
            wait_for(lambda: target.hits.get("switch/api", 0) >= 3, timeout=10)  # some good probes first
            target.mode["api"] = "503"

            def acme() -> dict[str, Any]:
                return next(s for s in d.get("/api/v1/status").json()["services"] if s["id"] == "acme")

            wait_for(lambda: acme()["open_window"], timeout=15)
            target.mode["incident_started"] = acme()["open_window"]["start"]  # the vendor admits it too
            wait_for(lambda: acme()["vendor"]["status"] == "major_outage", timeout=10)
            yield d, acme()


def test_chromium_renders_the_outage(outage: tuple[RunningDaemon, dict[str, Any]], tmp_path: Path) -> None:
    d, acme = outage
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", d.url("/"))
    data = shot.read_bytes()
    assert png_size(data) == (1280, 2000)
    assert len(data) > 30_000  # a blank page of that size is a few KiB

    dom = Dom(chromium(tmp_path, "--dump-dom", d.url("/")))
    section = dom.find("section", data_service="acme")
    assert len(section) == 1 and section[0]["data-status"] in ("major_outage", "partial_outage")
    assert dom.find("section", data_service="globex")[0]["data-status"] == "operational"
    # the open window, at the start the API gives
    since = [a for a in dom.find("time", "acme") if "since" in a.get("class", "").split()]
    assert acme["open_window"]["start"] in {a["datetime"] for a in since}
    assert dom.find("p", "acme", data_start=acme["open_window"]["start"])
    # 90 bars a service: today carries the outage, the days before the first probe have no data
    bars = [a for a in dom.find("rect", "acme") if a.get("class") == "bar"]
    assert len(bars) == 90
    assert bars[-1]["data-day"] == dt.datetime.now(dt.UTC).date().isoformat()
    assert bars[-1]["data-worst"] in ("major_outage", "partial_outage")
    assert {b["data-worst"] for b in bars[:-2]} == {"no_data"}
    assert len([a for a in dom.find("rect", "globex") if a.get("class") == "bar"]) == 90
    # checks, and the vendor's view beside ours
    assert dom.find("tr", "acme", data_check="api", data_state="down")
    assert dom.find("tr", "acme", data_check="website", data_state="up")
    assert dom.find("div", "acme", data_vendor_status="major_outage")
    assert dom.find("div", "globex", data_vendor_status="none")

    html = chromium(tmp_path, "--dump-dom", d.url("/services/acme"))
    detail = Dom(html)
    assert detail.find("section", data_service="acme")[0]["data-status"] in ("major_outage", "partial_outage")
    assert detail.find("section", data_check="api", data_state="down")
    assert len(re.findall(r"<td>(?:1h|24h|7d|30d)</td>\s*<td class=\"num\">\d+(?:\.\d+)?%</td>", html)) == 8
