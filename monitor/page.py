"""The status page: `GET /` (every service) and `GET /services/<id>` (one in depth).

Server-rendered HTML (Jinja2, autoescaped: titles, details, reasons and vendor text
are config or service data and are never trusted), no JavaScript and no external
assets: inline CSS and inline SVG only, so it works from a phone, behind a strict
proxy, and with scripts disabled. It refreshes itself every 30 s.

Per page there are two history reads (`monitor.store`), both off the event loop on
the API's reader threads (`monitor.api._READERS`), each on its own read-only connection:

* windows: one `query_windows` over the last 90 days (every service on `/`);
* latency: one aggregate query over `results` for the last 24 hours, already bucketed
  by SQLite into at most `SPARK_POINTS` buckets per check (`query_latency`), so the
  page never pulls raw rows into Python.

Everything else comes from the in-memory `LiveState`. The pure parts (`daily_bars`,
`downsample`, `sparkline`) take the clock as an argument and are tested with tables.

Pages are built once for all their readers (`monitor.pagecache`): the views on the
event loop, a slice at a time; the template and gzip on a thread; at most one build
at a time; and the bytes sent as each reader takes them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from aiohttp import web

from monitor import __version__
from monitor.api import _READERS, DB_PATH, LIVE, _vendor_json
from monitor.availability import Interval, clip_merge, subtract, total
from monitor.live import CheckStats, LiveState, ServiceStats
from monitor.outage import OutageWindow
from monitor.pagecache import Body, Pacer, PageCache, off_loop, send
from monitor.result import PHASES
from monitor.store import StorageError, query_latency, query_windows
from monitor.units import format_duration, parse_time, rfc3339

DAY = 86400.0
HISTORY_DAYS = 90  # uptime bars
RECENT_DAYS = 30  # the list of recent windows
SPARK_SPAN = DAY  # latency sparkline
SPARK_POINTS = 96  # at most this many points per sparkline (15-minute buckets over 24 h)
MAX_WINDOWS = 20_000  # per page read; more than that over 90 days is flapping, and is said so
INDEX_RECENT = 5  # recent windows shown per service on `/` (all of them on its own page)
REFRESH_SECONDS = 30
SERVICE_ID = re.compile(r"[a-z0-9_-]+")

NO_DATA = "no_data"
OPERATIONAL = "operational"
DEGRADED = "degraded_performance"
PARTIAL = "partial_outage"
MAJOR = "major_outage"
MAINTENANCE = "under_maintenance"
UNKNOWN = "unknown"
_RANK = {NO_DATA: -1, OPERATIONAL: 0, DEGRADED: 1, PARTIAL: 2, MAJOR: 3}

STATUS_LABELS = {
    OPERATIONAL: "Operational",
    DEGRADED: "Degraded performance",
    PARTIAL: "Partial outage",
    MAJOR: "Major outage",
    "under_maintenance": "Under maintenance",
    "unknown": "Unknown",
    NO_DATA: "No data",
}

# A page is HTML we wrote; nothing may load from elsewhere, nothing may run.
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# ------------------------------------------------------------------ 90-day uptime bars

@dataclass(frozen=True, slots=True)
class DayBar:
    """One UTC day of one service (or check)."""

    date: dt.date
    worst: str  # no_data | operational | degraded_performance | partial_outage | major_outage
    availability: float | None  # observed up time / observed time; None when nothing observed
    downtime_seconds: float  # observed time inside `down` windows
    observed_seconds: float = 0.0  # time watched, minus unknown (gaps, maintenance)


def window_severity(w: OutageWindow) -> str:
    """The Statuspage word for a window: degraded ones are degraded_performance, down
    ones keep their severity (partial_outage or major_outage; major when unsaid)."""
    if w.kind == "degraded":
        return DEGRADED
    return w.severity if w.severity in (PARTIAL, MAJOR) else MAJOR


def daily_bars(windows: Sequence[OutageWindow], now: float, days: int = HISTORY_DAYS, *,
               first_seen: float | None = None, unknown: Iterable[Interval] = ()) -> list[DayBar]:
    """One bar per UTC day, oldest first, the last one being today (up to `now`).

    A day's `worst` is the worst window overlapping the watched part of it, else
    `operational`; a day before `first_seen` (the first probe ever stored; when not
    given, the first window's start) is `no_data`, and so is a day that was entirely
    `unknown` (monitor gaps, maintenance) without a window. Availability follows
    `monitor.availability`: down time / observed time, unknown time excluded,
    degraded time counted as up.
    """
    if first_seen is None and windows:
        first_seen = min(w.start for w in windows)
    unknown = list(unknown)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    first_day = today - dt.timedelta(days=days - 1)
    origin = dt.datetime(first_day.year, first_day.month, first_day.day, tzinfo=dt.UTC).timestamp()
    # Each window goes to the days it may touch (UTC days are 86400 s: POSIX time has
    # no leap seconds), so a page with many windows costs windows + days, not their product.
    per_day: list[list[OutageWindow]] = [[] for _ in range(days)]
    for w in windows:
        end = now if w.end is None else w.end
        for i in range(max(0, int((w.start - origin) // DAY)), min(days - 1, int((end - origin) // DAY)) + 1):
            per_day[i].append(w)
    bars: list[DayBar] = []
    for i, day_windows in enumerate(per_day):
        day = first_day + dt.timedelta(days=i)
        d0 = origin + i * DAY
        lo, hi = (d0 if first_seen is None else max(d0, first_seen)), min(d0 + DAY, now)
        if first_seen is None or lo >= hi:
            bars.append(DayBar(day, NO_DATA, None, 0.0))
            continue
        touching = [w for w in day_windows if w.start < hi and (w.end is None or w.end > lo)]
        holes = clip_merge(unknown, lo, hi)
        observed = (hi - lo) - total(holes)
        down = clip_merge([(w.start, w.end) for w in touching if w.kind == "down"], lo, hi)
        downtime = total(subtract(down, holes))
        worst = max((window_severity(w) for w in touching), key=_RANK.__getitem__,
                    default=OPERATIONAL if observed > 0 else NO_DATA)
        if observed <= 1e-9:
            bars.append(DayBar(day, worst, None, 0.0))
        else:
            share = max(0.0, min(1.0, 1.0 - downtime / observed))
            bars.append(DayBar(day, worst, share, downtime, observed))
    return bars


def overall_availability(bars: Sequence[DayBar]) -> float | None:
    observed = sum(b.observed_seconds for b in bars)
    if observed <= 0:
        return None
    return max(0.0, 1.0 - sum(b.downtime_seconds for b in bars) / observed)


# ------------------------------------------------------------------ latency sparkline

def downsample(points: Iterable[Sequence[float]], start: float, end: float,
               max_points: int = SPARK_POINTS) -> list[tuple[float, float]]:
    """(time, value[, weight]) points in [start, end] -> at most `max_points` (time,
    value) points, time-ordered: the weighted mean of each of `max_points` equal
    buckets that holds any point. Buckets without points are left out (a gap).

    `read_latency` buckets in SQLite the same way, so downsampling its output again
    (e.g. several checks of one service together) gives what raw rows would give.
    """
    if end <= start or max_points < 1:
        return []
    width = (end - start) / max_points
    acc: dict[int, list[float]] = {}
    for p in points:
        t, value = p[0], p[1]
        weight = p[2] if len(p) > 2 else 1.0
        if not start <= t <= end or weight <= 0:
            continue
        i = min(int((t - start) // width), max_points - 1)
        a = acc.setdefault(i, [0.0, 0.0, 0.0])
        a[0] += t * weight
        a[1] += value * weight
        a[2] += weight
    return [(a[0] / a[2], a[1] / a[2]) for _, a in sorted(acc.items())]


@dataclass(frozen=True, slots=True)
class Sparkline:
    """Inline-SVG geometry of a latency line (viewBox 0 0 width height)."""

    width: int
    height: int
    lines: tuple[str, ...]  # `points` attributes of polylines (a gap splits the line)
    dots: tuple[tuple[float, float], ...]  # lone points (x, y)
    peak: float  # seconds, the highest point
    last: float  # seconds, the newest point
    count: int


def sparkline(points: Sequence[tuple[float, float]], start: float, end: float, *,
              width: int = 240, height: int = 40, max_gap: float | None = None) -> Sparkline | None:
    """Lay time-ordered (time, seconds) points out on [start, end] x [0, peak]. The line
    breaks where consecutive points are more than `max_gap` apart (default: two and a
    half buckets of a 96-point sparkline), so missing data never looks like data."""
    if not points or end <= start:
        return None
    if max_gap is None:
        max_gap = 2.5 * (end - start) / SPARK_POINTS
    peak = max(v for _, v in points) or 1e-9
    pad = 2.0  # keep the stroke inside the box
    segments: list[list[tuple[float, float]]] = []
    prev_t: float | None = None
    for t, v in points:
        x = (t - start) / (end - start) * width
        y = pad + (1 - v / peak) * (height - 2 * pad)
        if prev_t is None or t - prev_t > max_gap:
            segments.append([])
        segments[-1].append((round(x, 1), round(y, 1)))
        prev_t = t
    lines = tuple(" ".join(f"{x:g},{y:g}" for x, y in seg) for seg in segments if len(seg) > 1)
    dots = tuple(seg[0] for seg in segments if len(seg) == 1)
    return Sparkline(width, height, lines, dots, peak, points[-1][1], len(points))


# ------------------------------------------------------------------ history reads (threads)

@dataclass
class History:
    windows: list[OutageWindow] = field(default_factory=list)  # newest start first
    latency: dict[tuple[str, str], list[tuple[float, float, int]]] = field(default_factory=dict)
    error: str | None = None
    truncated: bool = False
    _by_service: dict[str, list[OutageWindow]] | None = None

    def of(self, service: str) -> list[OutageWindow]:
        """The windows of one service, newest start first."""
        if self._by_service is None:
            self._by_service = {}
            for w in self.windows:
                self._by_service.setdefault(w.service, []).append(w)
        return self._by_service.get(service, [])


def read_history(path: str, now: float, service: str | None = None) -> History:
    """Both reads of a page (runs on a reader thread). A broken or missing database
    gives an empty history with the error, never a failed page."""
    try:
        windows = query_windows(path, service=service, since=now - HISTORY_DAYS * DAY, limit=MAX_WINDOWS)
        latency = query_latency(path, now - SPARK_SPAN, now, buckets=SPARK_POINTS, service=service)
    except StorageError as e:
        return History(error=str(e))
    return History(windows, latency, truncated=len(windows) >= MAX_WINDOWS)


# ------------------------------------------------------------------ views (plain data for templates)

def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms < 10_000 else f"{seconds:.1f} s"


def _pct(share: float | None) -> str:
    if share is None:
        return "–"
    if share >= 1.0:
        return "100%"
    return f"{min(share * 100, 99.99):.2f}%"  # never round a bad day up to 100%


def window_view(w: OutageWindow, now: float) -> dict[str, Any]:
    return {
        "check": w.check,
        "kind": w.kind,
        "severity": window_severity(w),
        "severity_label": STATUS_LABELS[window_severity(w)],
        # a check's window is down or degraded; a service's is a Statuspage status
        "kind_label": STATUS_LABELS[window_severity(w)] if w.check is None else w.kind,
        "start": rfc3339(w.start),
        "start_human": _when(w.start),
        "end": rfc3339(w.end),
        "end_human": None if w.end is None else _when(w.end),
        "duration": format_duration(w.duration(now)),
        "duration_seconds": round(w.duration(now), 3),
        "reason": w.reason,
        "open": w.end is None,
    }


def bars_view(bars: Sequence[DayBar]) -> list[dict[str, Any]]:
    out = []
    for i, b in enumerate(bars):
        if b.worst == NO_DATA:
            tip = f"{b.date.isoformat()}: no data"
        else:
            tip = f"{b.date.isoformat()}: {STATUS_LABELS[b.worst].lower()}, {_pct(b.availability)} available"
            if b.downtime_seconds > 0:
                tip += f", down {format_duration(b.downtime_seconds)}"
        out.append({"i": i, "date": b.date.isoformat(), "worst": b.worst, "tip": tip})
    return out


def _spark(points: Iterable[Sequence[float]], now: float, interval: float) -> Sparkline | None:
    """The last 24 hours of `points`; the line breaks only where more than two and a
    half buckets, or two and a half probe intervals, have no good probe."""
    start = now - SPARK_SPAN
    return sparkline(downsample(points, start, now), start, now,
                     max_gap=max(2.5 * SPARK_SPAN / SPARK_POINTS, 2.5 * interval))


def _check_view(stats: CheckStats, now: float, gaps: list[Interval], maintenance: list[Interval],
                deep: bool) -> dict[str, Any]:
    last = stats.last
    view: dict[str, Any] = {
        "id": stats.check.id,
        "kind": stats.check.kind,
        "critical": stats.check.critical,
        "state": stats.state.value,
        "latency": _ms(None if last is None else last.duration),
        "reason": None if last is None else last.reason.value,
        "degraded": bool(last is not None and last.degraded),
        "status_code": None if last is None else last.status_code,
        "detail": None if last is None else last.detail,
        "last_time": None if last is None else rfc3339(last.started),
        "last_human": None if last is None else _when(last.started),
        "window": None if stats.window is None else window_view(stats.window, now),
    }
    if deep:
        phases = [] if last is None else [
            (name, _ms(last.phases[name])) for name in (*PHASES, *sorted(set(last.phases) - set(PHASES)))
            if name in last.phases]
        if last is not None and last.ttft is not None:
            phases.append(("ttft", _ms(last.ttft)))
        if last is not None and last.steps:
            phases += [(f"step {name}", _ms(s)) for name, s in last.steps.items()]
        avail = stats.availability(now, gaps, maintenance)
        view["phases"] = phases
        view["step"] = None if last is None else last.step
        view["availability"] = [(name, _pct(share)) for name, share in avail.items()]
    return view


def _vendor_view(sstats: ServiceStats) -> dict[str, Any]:
    """What the vendor says (`api._vendor_json`, the same view as /api/v1/status)."""
    view: dict[str, Any] = {"status": "none", "text": "no status page", "detail": "", "components": [],
                            "incidents": [], "checked_at": None, "lead": None, "lead_human": None}
    data = _vendor_json(sstats)
    if data is None:
        return view
    incidents = [{**i, "started_human": _when(parse_time(i["started"], 0)) if i["started"] else None}
                 for i in data.get("incidents", [])]
    view.update(status=data["status"], detail=data.get("detail") or "", incidents=incidents,
                components=data.get("components", []), checked_at=data.get("checked_at"))
    if data["status"] == "unknown":
        view["text"] = f"unknown: {data.get('detail') or 'no detail'}"
        view["detail"] = ""  # already in the text
    else:
        view["text"] = STATUS_LABELS.get(data["status"], data["status"])
    lead = data.get("detection_lead_seconds")
    if lead is not None:
        view.update(lead=lead, lead_human=format_duration(abs(lead)))
    return view


async def _service_view(live: LiveState, sstats: ServiceStats, history: History, now: float,
                        deep: bool, pace: Pacer) -> dict[str, Any]:
    """One service's view; `pace()` between checks (a service may have thousands)."""
    service = sstats.service
    sid = service.id
    horizon = now - HISTORY_DAYS * DAY
    gaps = live.gap_spans()
    maintenance = [span for m in service.maintenance for span in m.spans(horizon, now)]
    checks = [live.checks[c.key] for c in service.checks if c.key in live.checks]
    mine = history.of(sid)
    service_windows = [w for w in mine if w.check is None]
    check_windows = [w for w in mine if w.check is not None]
    seen = [c.first_known for c in checks if c.first_known is not None]  # before: nothing observed
    bars = daily_bars(service_windows, now, first_seen=min(seen) if seen else None,
                      unknown=[*gaps, *maintenance])
    recent_since = now - RECENT_DAYS * DAY
    recent = [window_view(w, now) for w in check_windows if w.end is None or w.end >= recent_since]
    points = [p for c in checks for p in history.latency.get(c.check.key, [])]
    open_windows = [window_view(c.window, now) for c in checks if c.window is not None]
    open_windows.sort(key=lambda v: v["start"])
    check_views = []
    for c in checks:
        check_views.append(_check_view(c, now, gaps, maintenance, deep))
        await pace()
    view: dict[str, Any] = {
        "id": sid,
        "title": service.title,
        "status": sstats.status,
        "status_label": STATUS_LABELS.get(sstats.status, sstats.status),
        "window": None if sstats.window is None else window_view(sstats.window, now),
        "open_windows": open_windows,
        "waiting": all(c.last is None for c in checks),
        "checks": check_views,
        "bars": bars_view(bars),
        "uptime": _pct(overall_availability(bars)),
        "spark": _spark(points, now, max((c.check.interval for c in checks), default=0.0)),
        "recent": recent if deep else recent[:INDEX_RECENT],
        "recent_total": len(recent),
        "vendor": _vendor_view(sstats),
    }
    if deep:
        view["service_windows"] = [window_view(w, now) for w in service_windows
                                   if w.end is None or w.end >= recent_since]
        for cv, stats in zip(view["checks"], checks, strict=True):
            own = [w for w in check_windows if w.check == stats.check.id]
            check_bars = daily_bars(own, now, first_seen=stats.first_known,
                                    unknown=[*stats.unknown_spans, *gaps, *maintenance])
            cv["bars"] = bars_view(check_bars)
            cv["uptime"] = _pct(overall_availability(check_bars))
            cv["windows"] = [window_view(w, now) for w in own if w.end is None or w.end >= recent_since]
            cv["spark"] = _spark(history.latency.get(stats.check.key, []), now, stats.check.interval)
            await pace()
    return view


def _common(live: LiveState, history: History, now: float) -> dict[str, Any]:
    return {
        "now": rfc3339(now),
        "now_human": _when(now),
        "version": __version__,
        "refresh": REFRESH_SECONDS,
        "offline": live.monitor_offline,
        "history_error": history.error,
        "truncated": history.truncated,
        "days": HISTORY_DAYS,
        "recent_days": RECENT_DAYS,
    }


# ------------------------------------------------------------------ rendering and handlers

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("monitor", "templates"),
    autoescape=jinja2.select_autoescape(["html"], default_for_string=True, default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, status: int = 200, **context: Any) -> web.Response:
    response = web.Response(status=status, text=ENV.get_template(template).render(**context),
                            content_type="text/html", charset="utf-8", headers=HEADERS)
    response.enable_compression()  # when the client accepts it: ~10x smaller (90 bars a service)
    return response


async def _history(app: web.Application, now: float, service: str | None = None) -> History:
    return await asyncio.get_running_loop().run_in_executor(
        _READERS, functools.partial(read_history, app[DB_PATH], now, service))


def _render(template: str, context: dict[str, Any]) -> Iterator[str]:
    """A template with plain data (views: no live objects), on the page thread."""
    return ENV.get_template(template).generate(**context)


def summary(statuses: Sequence[str]) -> dict[str, Any]:
    """The banner over all services: its status (the worst problem; else `unknown` when
    any service is unknown: never green while some service cannot be seen) and counts."""
    problems = [s for s in statuses if s in (DEGRADED, PARTIAL, MAJOR)]
    unknown = sum(s == UNKNOWN for s in statuses)
    maintenance = sum(s == MAINTENANCE for s in statuses)
    if problems:
        worst = max(problems, key=_RANK.__getitem__)
    elif unknown:
        worst = UNKNOWN
    elif maintenance:
        worst = MAINTENANCE
    else:
        worst = OPERATIONAL
    return {"worst": worst, "worst_label": STATUS_LABELS[worst], "total": len(statuses),
            "problems": len(problems), "unknown": unknown, "maintenance": maintenance}


PAGES = web.AppKey("pages", PageCache)


async def index(request: web.Request) -> web.StreamResponse:
    body = await request.app[PAGES].get("/", functools.partial(_build_index, request.app))
    return await send(request, body, HEADERS)


async def _build_index(app: web.Application) -> Body:
    now = time.time()
    history = await _history(app, now)
    live = app[LIVE]  # read after the await: the freshest state, on the loop's thread
    pace = Pacer()
    services = [await _service_view(live, s, history, now, False, pace) for s in list(live.services.values())]
    context = {"services": services, "summary": summary([s["status"] for s in services]),
               **_common(live, history, now)}
    return await off_loop(functools.partial(_render, "index.html", context))


async def service_page(request: web.Request) -> web.StreamResponse:
    sid = request.match_info["id"]
    live = request.app[LIVE]
    if not SERVICE_ID.fullmatch(sid) or sid not in live.services:
        history = History()
        return render("not_found.html", status=404, what=sid[:100], **_common(live, history, time.time()))
    build = functools.partial(_build_service, request.app, sid)
    body = await request.app[PAGES].get(f"/services/{sid}", build)
    return await send(request, body, HEADERS)


async def _build_service(app: web.Application, sid: str) -> Body:
    now = time.time()
    history = await _history(app, now, sid)
    live = app[LIVE]
    sstats = live.services.get(sid)
    if sstats is None:  # removed by a reload while we read
        context = {"what": sid, **_common(live, history, now)}
        return await off_loop(functools.partial(_render, "not_found.html", context), 404)
    view = await _service_view(live, sstats, history, now, True, Pacer())
    context = {"s": view, **_common(live, history, now)}
    return await off_loop(functools.partial(_render, "service.html", context))


def add_routes(app: web.Application) -> None:
    """`/` and `/services/<id>`; the app must already hold `api.LIVE` and `api.DB_PATH`."""
    app[PAGES] = PageCache()
    app.router.add_get("/", index)
    app.router.add_get("/services/{id}", service_page)
