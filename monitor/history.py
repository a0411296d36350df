"""`GET /history` (past outage windows, newest first, grouped by service and UTC day,
each with the vendor's own incident beside it where one overlaps, and how much earlier
we saw it) and `GET /feed.atom` (windows opened and closed, newest 100, Atom 1.0 written
by feedgenerator).

Both read on the API's reader threads (`monitor.api._READERS`) from their own read-only
connections; the views are built by pure functions with the clock passed in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import feedgenerator
from aiohttp import web

from monitor.api import _READERS, DB_PATH, LIVE
from monitor.outage import OutageWindow
from monitor.page import HISTORY_DAYS, SERVICE_ID, STATUS_LABELS, History, _common, render, window_severity
from monitor.store import StorageError, query_vendor_incidents, query_windows
from monitor.units import format_duration, rfc3339
from monitor.vendorlog import VendorIncidentRecord

DAY = 86400.0
MAX_WINDOWS = 2000  # per /history read
FEED_ENTRIES = 100
FEED_DAYS = 30  # windows that ended (or are open) within this many days feed the Atom feed
LATE_ADMISSION = 3600.0  # a vendor incident declared up to this long after our window ended is beside it
# (as for the live detection lead, monitor.live.ServiceStats.vendor_update)
IMPACT_LABELS = {"none": "no impact given", "minor": "minor", "major": "major", "critical": "critical",
                 "maintenance": "maintenance", "unknown": "impact unknown"}


@dataclass
class HistoryData:
    windows: list[OutageWindow] = field(default_factory=list)  # newest start first
    vendor: list[VendorIncidentRecord] = field(default_factory=list)
    error: str | None = None
    truncated: bool = False


def read(path: str, since: float, service: str | None = None, limit: int = MAX_WINDOWS) -> HistoryData:
    """Runs on a reader thread. A broken or missing database gives no history and the
    error, never a failed page."""
    try:
        windows = query_windows(path, service=service, since=since, limit=limit)
        vendor = query_vendor_incidents(path, since, service=service)
    except StorageError as e:
        return HistoryData(error=str(e))
    return HistoryData(windows, vendor, truncated=len(windows) >= limit)


# ------------------------------------------------------------------ views (pure)

def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


def lead_text(lead: float | None) -> str | None:
    """A detection lead (vendor start minus ours) in words."""
    if lead is None:
        return None
    if abs(lead) < 1:
        return "same time as the vendor"
    return f"{format_duration(abs(lead))} {'before' if lead > 0 else 'after'} the vendor"


def vendor_view(v: VendorIncidentRecord, now: float) -> dict[str, Any]:
    return {
        "name": v.name,
        "impact": v.impact,
        "impact_label": IMPACT_LABELS.get(v.impact, v.impact),
        "start": rfc3339(v.start),
        "start_human": _when(v.start),
        "declared": v.started is not None,  # False: the start is when we first saw it listed
        "end": rfc3339(v.ended),
        # a declared start after our last sighting (forward-dated) has no duration to show
        "duration": format_duration(span) if (span := (now if v.ended is None else v.ended) - v.start) >= 0
        else "–",
        "open": v.ended is None,
    }


def window_row(w: OutageWindow, vendor: Sequence[VendorIncidentRecord], now: float) -> dict[str, Any]:
    """One of our windows with the vendor incidents that overlap it (or were declared
    within `LATE_ADMISSION` after it ended) and the detection lead: the earliest such
    (non-maintenance) vendor start minus ours."""
    beside = [v for v in vendor if v.overlaps(w.start, w.end, now, LATE_ADMISSION)]
    starts = [v.start for v in beside if v.impact != "maintenance"]
    lead = min(starts) - w.start if starts else None
    severity = window_severity(w)
    return {
        "check": w.check,
        "kind": w.kind,
        "severity": severity,
        "label": STATUS_LABELS[severity] if w.check is None else w.kind,
        "reason": w.reason,
        "start": rfc3339(w.start),
        "start_human": _when(w.start),
        "end": rfc3339(w.end),
        "end_human": None if w.end is None else _when(w.end),
        "duration": format_duration(w.duration(now)),
        "open": w.end is None,
        "vendor": [vendor_view(v, now) for v in beside],
        "lead": None if lead is None else round(lead, 3),
        "lead_text": lead_text(lead),
    }


def history_view(data: HistoryData, services: Mapping[str, str], now: float) -> list[dict[str, Any]]:
    """Per service (config order, then any service only the history knows), per UTC day
    (newest first): our windows (newest first), each with the vendor incidents beside
    it, and the vendor incidents that overlap none of our windows ("vendor only")."""
    by_service: dict[str, list[OutageWindow]] = {}
    for w in data.windows:
        by_service.setdefault(w.service, []).append(w)
    vendor_of: dict[str, list[VendorIncidentRecord]] = {}
    for v in data.vendor:
        vendor_of.setdefault(v.service, []).append(v)
    order = [*services, *sorted((set(by_service) | set(vendor_of)) - set(services))]
    out = []
    for sid in order:
        windows, vendor = by_service.get(sid, []), vendor_of.get(sid, [])
        if not windows and not vendor:
            continue
        days: dict[str, dict[str, Any]] = {}
        matched: set[str] = set()
        for w in windows:
            matched.update(v.id for v in vendor if v.overlaps(w.start, w.end, now, LATE_ADMISSION))
            _day_of(days, w.start)["windows"].append(window_row(w, vendor, now))
        for v in vendor:
            if v.id not in matched:
                _day_of(days, v.start)["vendor_only"].append(vendor_view(v, now))
        out.append({"id": sid, "title": services.get(sid, sid), "total": len(windows),
                    "days": [days[d] for d in sorted(days, reverse=True)]})
    return out


def _day_of(days: dict[str, dict[str, Any]], t: float) -> dict[str, Any]:
    return days.setdefault(_day(t), {"date": _day(t), "windows": [], "vendor_only": []})


# ------------------------------------------------------------------ Atom feed (pure)

def feed_events(windows: Sequence[OutageWindow],
                limit: int = FEED_ENTRIES) -> list[tuple[float, str, OutageWindow]]:
    """(time, "opened" | "closed", window), newest first, at most `limit`."""
    events = [(w.start, "opened", w) for w in windows]
    events += [(w.end, "closed", w) for w in windows if w.end is not None]
    events.sort(key=lambda e: (e[0], e[1] == "closed"), reverse=True)
    return [(t, what, w) for t, what, w in events[:limit]]


def atom_feed(windows: Sequence[OutageWindow], titles: Mapping[str, str], base: str, now: float) -> bytes:
    """Atom 1.0: one entry per window opened and per window closed, newest first."""
    feed = feedgenerator.Atom1Feed(
        title="aipulse: outage windows", link=f"{base}/history", feed_url=f"{base}/feed.atom",
        description="Outage and degraded windows measured by aipulse, opened and closed.",
        id=f"{base}/feed.atom", language="en",
    )
    for when, what, w in feed_events(windows):
        who = titles.get(w.service, w.service) + (f" / {w.check}" if w.check else "")
        state = STATUS_LABELS[window_severity(w)] if w.check is None else w.kind
        if what == "opened":
            title = f"{who}: {state} since {_when(w.start)}"
            text = f"{who} is {state}" + (f" ({w.reason})" if w.reason else "") + f", since {_when(w.start)}."
        else:
            title = f"{who}: recovered after {format_duration(w.duration(now))}"
            text = (f"{who} was {state}" + (f" ({w.reason})" if w.reason else "") +
                    f" from {_when(w.start)} to {_when(w.end or now)}, {format_duration(w.duration(now))}.")
        stamp = dt.datetime.fromtimestamp(when, dt.UTC)
        key = f"{w.service}/{w.check or '-'}/{w.kind}/{w.start:.3f}/{what}"
        feed.add_item(title=title, link=f"{base}/history?service={w.service}#w-{w.start:.0f}",
                      description=text, unique_id=f"{base}/feed.atom#{key}", pubdate=stamp,
                      updateddate=stamp, categories=[w.kind, what])
    return feed.writeString("utf-8").encode("utf-8")


# ------------------------------------------------------------------ handlers

async def _read(request: web.Request, since: float, service: str | None, limit: int) -> HistoryData:
    return await asyncio.get_running_loop().run_in_executor(
        _READERS, functools.partial(read, request.app[DB_PATH], since, service, limit))


async def history_page(request: web.Request) -> web.Response:
    now = time.time()
    live = request.app[LIVE]
    service = request.query.get("service") or None
    if service is not None and not SERVICE_ID.fullmatch(service):
        service = None
    data = await _read(request, now - HISTORY_DAYS * DAY, service, MAX_WINDOWS)
    titles = {sid: s.service.title for sid, s in live.services.items()}
    groups = history_view(data, titles, now)
    common = _common(live, History(error=data.error, truncated=data.truncated), now)
    return render("history.html", groups=groups, service=service, **common)


async def feed(request: web.Request) -> web.Response:
    now = time.time()
    data = await _read(request, now - FEED_DAYS * DAY, None, MAX_WINDOWS)
    if data.error is not None:
        return web.json_response({"error": f"history unavailable: {data.error}"}, status=503)
    live = request.app[LIVE]
    titles = {sid: s.service.title for sid, s in live.services.items()}
    base = f"{request.scheme}://{request.host}"
    body = atom_feed(data.windows, titles, base, now)
    return web.Response(body=body, content_type="application/atom+xml", charset="utf-8",
                        headers={"Cache-Control": "max-age=30", "X-Content-Type-Options": "nosniff"})


def add_routes(app: web.Application) -> None:
    """The app must already hold `api.LIVE` and `api.DB_PATH`."""
    app.router.add_get("/history", history_page)
    app.router.add_get("/feed.atom", feed)
