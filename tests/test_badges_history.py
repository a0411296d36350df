"""Badges, /history and /feed.atom: pure parts with tables, the vendor's incidents in
a real SQLite store, and all of it through a real daemon that lives through an outage
(its vendor admitting it 90 s late), read back as XML, with feedparser and in headless
Chromium (screenshots in tests/artifacts/)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import feedparser
import pytest
from helpers import RunningDaemon, start_daemon, wait_for
from targets import serve
from test_page import ARTIFACTS, Dom, chromium, png_size

from monitor import badge, history, vendorlog
from monitor.outage import OutageWindow
from monitor.store import Store, query_vendor_incidents
from monitor.units import parse_time, rfc3339
from monitor.vendorformats.model import VendorComponent, VendorIncident, VendorStatus

SVG = "{http://www.w3.org/2000/svg}"


# ------------------------------------------------------------------ badges (pure)


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_badge_is_svg_with_both_texts_sized_from_the_width_table() -> None:
    svg = badge.render("OpenAI", "major outage", "#d42a1f")
    root = ET.fromstring(svg)
    assert texts(svg) == ["OpenAI", "OpenAI", "major outage", "major outage"]  # each with its shadow
    label, message = badge.text_width("OpenAI"), badge.text_width("major outage")
    assert int(root.get("width")) == math.ceil(label) + math.ceil(message) + 4 * badge.PAD
    lengths = [float(t.get("textLength")) for t in root.iter(f"{SVG}text")]
    assert lengths == [round(label, 1)] * 2 + [round(message, 1)] * 2
    assert "<script" not in svg and "href" not in svg  # nothing from elsewhere, nothing runs


def test_badge_text_is_escaped() -> None:
    svg = badge.render('a<b & "c"', "</text><script>", "#000")
    assert texts(svg)[0] == 'a<b & "c"' and texts(svg)[2] == "</text><script>"


@pytest.mark.parametrize(("share", "text"), [(None, "no data"), (1.0, "100%"), (0.99999, "99.99%"),
                                             (0.9953, "99.53%"), (0.5, "50.00%")])
def test_uptime_text_never_rounds_up_to_100(share: float | None, text: str) -> None:
    assert badge.uptime_text(share)[0] == text


def test_the_width_table_matches_what_chromium_renders(tmp_path: Path) -> None:
    """DejaVu Sans 11 px as a real browser lays it out, without textLength."""
    samples = ["OpenAI", "operational", "major outage", "Google Gemini api uptime 30d", "99.95%",
               "WWW iii", "Moonshot AI (Kimi)", "n/a"]
    spans = "".join(f'<text id="t{i}" x="0" y="{20 * i + 14}" font-family="DejaVu Sans" font-size="11">'
                    f"{s}</text>" for i, s in enumerate(samples))
    page = tmp_path / "widths.html"
    page.write_text(
        f'<!doctype html><html><body><svg xmlns="http://www.w3.org/2000/svg" width="600" height="200">{spans}'
        "</svg><pre id=out></pre><script>document.getElementById('out').textContent = "
        f"[...Array({len(samples)}).keys()].map(i => document.getElementById('t' + i)"
        ".getComputedTextLength().toFixed(2)).join(' ');</script></body></html>")
    dom = chromium(tmp_path, "--dump-dom", "--font-render-hinting=none", page.as_uri())
    measured = [float(w) for w in dom.split('<pre id="out">')[1].split("</pre>")[0].split()]
    for sample, width in zip(samples, measured, strict=True):
        assert abs(badge.text_width(sample) - width) < 0.05 * len(sample) + 0.5, (sample, width)


# ------------------------------------------------------------------ history and feed (pure)

NOW = 1_790_000_000.0


def record(iid: str, started: float | None, first_seen: float, ended: float | None,
           impact: str = "major") -> vendorlog.VendorIncidentRecord:
    return vendorlog.VendorIncidentRecord("acme", iid, f"incident {iid}", impact, started, first_seen, ended)


def test_history_view_puts_the_vendor_incident_beside_our_window_with_the_lead() -> None:
    ours = OutageWindow("acme", "api", "down", NOW - 3600, NOW - 1800, "http_5xx", "major_outage")
    other = OutageWindow("acme", "web", "degraded", NOW - 90_000, NOW - 89_000, "ok", "degraded_performance")
    data = history.HistoryData(windows=[ours, other], vendor=[
        record("late", NOW - 3600 + 420, NOW - 3000, NOW - 1700),  # declared 7 min after our start
        record("maint", NOW - 4000, NOW - 4000, NOW - 3500, impact="maintenance"),  # overlaps, no lead
        record("alone", NOW - 200_000, NOW - 200_000, NOW - 199_000),  # overlaps nothing of ours
    ])
    (group,) = history.history_view(data, {"acme": "Acme AI", "other": "Other"}, NOW)
    assert (group["id"], group["title"], group["total"]) == ("acme", "Acme AI", 2)
    days = [d["date"] for d in group["days"]]
    assert days == sorted(days, reverse=True) and len(days) == 3
    row = group["days"][0]["windows"][0]
    assert [v["name"] for v in row["vendor"]] == ["incident late", "incident maint"]
    assert row["lead"] == 420 and row["lead_text"] == "7m 0s before the vendor"
    assert group["days"][1]["windows"][0]["vendor"] == []
    assert [v["name"] for v in group["days"][2]["vendor_only"]] == ["incident alone"]


def test_atom_feed_has_an_entry_per_window_opened_and_closed() -> None:
    windows = [OutageWindow("acme", "api", "down", NOW - 600, None, "timeout", "major_outage"),
               OutageWindow("acme", None, "down", NOW - 3600, NOW - 1800, "http_5xx", "partial_outage")]
    feed = feedparser.parse(history.atom_feed(windows, {"acme": "Acme AI"}, "http://mon.example", NOW))
    assert feed.version == "atom10" and not feed.bozo
    assert [e.title for e in feed.entries] == [
        "Acme AI / api: down since " + history._when(NOW - 600),
        "Acme AI: recovered after 30m 0s",
        "Acme AI: Partial outage since " + history._when(NOW - 3600),
    ]
    assert len({e.id for e in feed.entries}) == 3
    assert feed.feed.links[0].href == "http://mon.example/history"


# ------------------------------------------------------------------ the vendor's incidents, stored


async def test_vendor_snapshots_record_start_first_seen_and_end(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    store = Store(db)
    store.open(0.0)
    inc = VendorIncident("i1", "Elevated errors", "investigating", "major", NOW - 900, ("c",))
    api = VendorComponent("c", "API", "partial_outage")
    page = VendorStatus("statuspage", "partial_outage", (api,), (inc,))
    first = vendorlog.snapshot("acme", page, NOW - 600, None)
    assert first is not None
    assert vendorlog.snapshot("acme", page, NOW - 300, first) is None  # nothing changed: nothing written
    unreadable = VendorStatus("unknown", "unknown", detail="HTML where JSON was expected")
    assert vendorlog.snapshot("acme", unreadable, NOW - 200, first) is None  # says nothing, ends nothing
    await store.write([first])
    assert query_vendor_incidents(db, 0.0) == [
        vendorlog.VendorIncidentRecord("acme", "i1", "Elevated errors", "major", NOW - 900, NOW - 600, None)]
    recovered = VendorStatus("statuspage", "operational", (VendorComponent("c", "API", "operational"),))
    resolved = vendorlog.snapshot("acme", recovered, NOW - 60, first)
    assert resolved is not None
    await store.write([resolved])
    (rec,) = query_vendor_incidents(db, 0.0)
    assert (rec.first_seen, rec.ended) == (NOW - 600, NOW - 60)  # ended: the first poll without it
    past = VendorIncident("p1", "Old one", "resolved", "minor", NOW - 7200, (), ended=NOW - 7000)
    feed = VendorStatus("feed", "operational", (VendorComponent("feed:x", "x", "operational"),), (),
                        past=(past,))
    listed = vendorlog.snapshot("acme", feed, NOW, resolved)
    await store.write([listed])
    got = {r.id: r for r in query_vendor_incidents(db, 0.0)}
    assert got["p1"].ended == NOW - 7000 and got["p1"].started == NOW - 7200
    assert got["i1"].ended == NOW - 60  # not reopened by a snapshot that does not list it
    await store.close()


# ------------------------------------------------------------------ through a real daemon


@pytest.fixture(scope="module")
def lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningDaemon, dict[str, Any]]]:
    """acme's API goes down, its vendor admits it 90 s after our window's start, then
    it recovers and the vendor resolves it; globex stays up."""
    tmp = tmp_path_factory.mktemp("history")
    with serve() as target:
        config = {
            "status_page_interval": "300ms",
            "defaults": {"interval": "300ms", "timeout": "250ms", "open_after": 2, "close_after": 2},
            "services": {
                "acme": {"title": "Acme AI", "status_page": target.url("/api/v2/summary.json"), "checks": {
                    "api": {"url": target.url("/switch/api")},
                    "website": {"url": target.url("/ok")},
                }},
                "globex": {"title": "Globex Models", "checks": {"api": {"url": target.url("/json")}}},
            },
        }
        with start_daemon(config, tmp, db=tmp / "history.db") as d:
            wait_for(lambda: target.hits.get("switch/api", 0) >= 2, timeout=10)
            target.mode["api"] = "503"

            def acme() -> dict[str, Any]:
                return next(s for s in d.get("/api/v1/status").json()["services"] if s["id"] == "acme")

            window = wait_for(lambda: acme()["open_window"], timeout=15)
            target.mode["incident_started"] = rfc3339(parse_time(window["start"], 0) + 90)
            wait_for(lambda: acme()["vendor"]["status"] == "major_outage", timeout=10)
            during = {"acme": acme(), "badge": d.get("/badge/acme.svg")}
            target.mode["api"] = "ok"
            wait_for(lambda: acme()["open_window"] is None and acme()["status"] == "operational", timeout=15)
            target.mode.pop("incident_started")
            wait_for(lambda: acme()["vendor"]["status"] == "operational", timeout=10)
            yield d, during


def test_service_badge_during_and_after_the_outage(lived: tuple[RunningDaemon, dict[str, Any]]) -> None:
    d, during = lived
    r = during["badge"]
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml; charset=utf-8"
    assert texts(r.text)[0] == "Acme AI" and texts(r.text)[2] in ("major outage", "partial outage")
    after = d.get("/badge/acme.svg")
    assert texts(after.text)[2] == "operational"
    assert after.headers["cache-control"] == "max-age=1"  # the interval (300 ms) rounds up to 1 s
    assert texts(d.get("/badge/acme.svg?label=Acme").text)[0] == "Acme"


def test_check_badges_status_uptime_latency_and_errors(lived: tuple[RunningDaemon, dict[str, Any]]) -> None:
    d, _ = lived
    assert texts(d.get("/badge/acme/api.svg").text)[2] == "up"
    uptime = texts(d.get("/badge/acme/api.svg?metric=uptime&window=24h").text)
    assert uptime[0] == "Acme AI api uptime 24h"
    assert uptime[2].endswith("%") and float(uptime[2][:-1]) < 100  # it was down for a while
    assert texts(d.get("/badge/globex/api.svg?metric=uptime&window=7d").text)[2] == "100%"
    latency = texts(d.get("/badge/globex/api.svg?metric=latency").text)[2]
    assert latency.endswith(" ms") and int(latency[:-3]) >= 0
    missing = d.get("/badge/nope/api.svg")
    assert missing.status_code == 404 and texts(missing.text)[2] == "no such check"
    assert missing.headers["cache-control"] == "no-store"
    assert d.get("/badge/acme/api.svg?metric=karma").status_code == 400
    assert d.get("/badge/acme/api.svg?metric=uptime&window=1y").status_code == 400
    assert d.get("/badge/acme.svg?metric=uptime").status_code == 400


def test_feed_atom_lists_the_windows_opened_and_closed(lived: tuple[RunningDaemon, dict[str, Any]]) -> None:
    d, _ = lived
    r = d.get("/feed.atom")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/atom+xml")
    feed = feedparser.parse(r.content)
    assert feed.version == "atom10" and not feed.bozo, feed.get("bozo_exception")
    titles = [e.title for e in feed.entries]
    assert any(t.startswith("Acme AI / api: down since") for t in titles)
    assert any(t.startswith("Acme AI / api: recovered after") for t in titles)
    assert any(t.startswith("Acme AI: ") and "since" in t for t in titles)  # the service-level window
    assert all("Globex" not in t for t in titles)
    assert feed.feed.links[0].href == d.url("/history")


def test_history_shows_our_window_beside_the_vendor_incident(
        lived: tuple[RunningDaemon, dict[str, Any]]) -> None:
    d, _ = lived
    dom = Dom(d.get("/history").text)
    section = dom.find("section", data_service="acme")
    assert len(section) == 1 and not dom.find("section", data_service="globex")
    rows = dom.find("tr", "acme", data_check="api", data_kind="down")
    assert len(rows) == 1 and rows[0]["data-open"] == "false"
    assert abs(float(rows[0]["data-lead"]) - 90) < 0.01  # the vendor declared it 90 s after our start
    html = d.get("/history").text
    assert "Elevated errors on the API" in html and "1m 30s before the vendor" in html
    # the vendor resolved it: the first readable poll without it ended it
    wait_for(lambda: 'data-impact="major"' in (h := d.get("/history").text) and ", open)" not in h)
    assert '<a href="/history">History</a>' in d.get("/").text  # linked from the status page
    assert 'href="/feed.atom"' in d.get("/").text


def test_chromium_renders_page_history_and_badge(lived: tuple[RunningDaemon, dict[str, Any]],
                                                 tmp_path: Path) -> None:
    d, _ = lived
    ARTIFACTS.mkdir(exist_ok=True)
    for name, path, size in (("status-page-landscape.png", "/", (1280, 1400)),
                             ("history.png", "/history", (1280, 1000)),
                             ("badge.png", "/badge/acme/api.svg?metric=uptime&window=24h", (400, 60))):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        chromium(tmp_path, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", d.url(path))
        assert png_size(shot.read_bytes()) == size
    dom = Dom(chromium(tmp_path, "--dump-dom", d.url("/history")))
    assert dom.find("tr", "acme", data_check="api", data_kind="down")
    svg = chromium(tmp_path, "--dump-dom", d.url("/badge/acme.svg"))
    assert "operational" in svg
