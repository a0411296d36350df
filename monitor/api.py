"""JSON API: /api/v1/status (live view) and /api/v1/outages (history from SQLite).

Errors answer `{"error": "..."}` with a 4xx status. Nothing here ever includes a
header value, a URL query or anything else from config that may hold a secret.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from monitor.live import CheckStats, LiveState, ServiceStats
from monitor.outage import OutageWindow
from monitor.units import parse_time, rfc3339

LIVE = web.AppKey("live", LiveState)
DB_PATH = web.AppKey("db_path", str)

MAX_OUTAGES = 1000
# History reads get their own threads: the default executor also resolves probes' DNS.
_READERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="aipulse-api")


def window_json(w: OutageWindow, now: float) -> dict[str, Any]:
    return {
        "service": w.service,
        "check": w.check,
        "kind": w.kind,
        "start": rfc3339(w.start),
        "end": rfc3339(w.end),
        "duration_seconds": round(w.duration(now), 3),
        "reason": w.reason,
        "severity": w.severity,
    }


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _check_json(stats: CheckStats, now: float, gaps: list[Any], maintenance: list[Any]) -> dict[str, Any]:
    last = stats.last
    return {
        "id": stats.check.id,
        "kind": stats.check.kind,
        "critical": stats.check.critical,
        "state": stats.state.value,
        "last_result": None if last is None else {
            "time": rfc3339(last.started),
            "success": last.success,
            "reason": last.reason.value,
            "degraded": last.degraded,
            "status_code": last.status_code,
            "duration_seconds": round(last.duration, 6),
            "detail": last.detail,
        },
        "open_window": None if stats.window is None else window_json(stats.window, now),
        "availability": stats.availability(now, gaps, maintenance),
        "availability_as_of": rfc3339(now),
    }


def _vendor_json(sstats: ServiceStats) -> dict[str, Any] | None:
    """The vendor's own view, beside ours. Names and details are vendor text."""
    vendor = sstats.vendor
    if sstats.service.status_page is None:
        return None
    if vendor is None:
        return {"status": "unknown", "detail": "not polled yet"}
    return {
        "status": vendor.overall,
        "source": vendor.source,
        "checked_at": rfc3339(sstats.vendor_checked),
        "detail": vendor.detail,
        "components": [{"name": c.name, "status": c.status} for c in vendor.components],
        "incidents": [{"name": i.name, "status": i.status, "impact": i.impact, "started": rfc3339(i.started)}
                      for i in vendor.incidents],
        "detection_lead_seconds": sstats.detection_lead,
    }


async def status(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    now = live.now()
    gaps = live.gap_spans(now)
    services = []
    for sid, sstats in live.services.items():
        maintenance = [span for m in sstats.service.maintenance for span in m.spans(now - 30 * 86400, now)]
        services.append({
            "id": sid,
            "title": sstats.service.title,
            "status": sstats.status,
            "open_window": None if sstats.window is None else window_json(sstats.window, now),
            "vendor": _vendor_json(sstats),
            "checks": [_check_json(live.checks[c.key], now, gaps, maintenance)
                       for c in sstats.service.checks if c.key in live.checks],
        })
    return web.json_response({
        "generated_at": rfc3339(now),
        "monitor_offline": live.monitor_offline,
        "services": services,
    })


async def outages(request: web.Request) -> web.Response:
    from monitor.store import StorageError, query_windows

    q = request.query
    unknown = sorted(set(q) - {"service", "check", "since", "until", "limit"})
    if unknown:
        return json_error(400, f"unknown query parameter: {unknown[0]}")
    now = request.app[LIVE].now()
    bounds: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            bounds[name] = parse_time(q[name], now) if name in q else None
        except ValueError as exc:
            return json_error(400, f"{name}: {exc}")
    since, until = bounds["since"], bounds["until"]
    if since is not None and until is not None and since > until:
        return json_error(400, "since is after until")
    try:
        limit = int(q.get("limit", MAX_OUTAGES))
    except ValueError:
        return json_error(400, f'limit: not a number: "{q["limit"]}"')
    if not 1 <= limit <= MAX_OUTAGES:
        return json_error(400, f"limit: must be between 1 and {MAX_OUTAGES}")
    try:
        # One more than asked: whether more matched is said, never a silent cut.
        windows = await asyncio.get_running_loop().run_in_executor(_READERS, functools.partial(
            query_windows, request.app[DB_PATH], service=q.get("service"), check=q.get("check"),
            since=since, until=until, limit=limit + 1,
        ))
    except StorageError as exc:
        return json_error(503, f"history unavailable: {exc}")
    return web.json_response({"outages": [window_json(w, now) for w in windows[:limit]],
                              "truncated": len(windows) > limit})


def add_routes(app: web.Application, live: LiveState, db_path: str) -> None:
    app[LIVE] = live
    app[DB_PATH] = db_path
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/outages", outages)
    app.router.add_route("*", "/api", not_found)
    app.router.add_route("*", "/api/{rest:.*}", not_found)


async def not_found(request: web.Request) -> web.Response:
    return json_error(404, f"no such endpoint: {request.method} {request.path}")
