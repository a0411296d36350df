"""SVG status badges, shields.io style: ``/badge/<service>.svg`` (the service's
status) and ``/badge/<service>/<check>.svg`` with ``metric=status|uptime|latency``
and, for uptime, ``window=24h|7d|30d``.

The SVG is self-contained (no fonts, scripts or images from elsewhere). Text widths
come from the advance widths of DejaVu Sans at 11 px (`_WIDTHS`, read from
DejaVuSans.ttf 2.37's hmtx table with fontTools), and each text carries
``textLength``, so a viewer that falls back to another font still fits the box.
Colours follow the status page; unknown is grey, never green. ``Cache-Control``
lets a badge be cached for one probe interval (the shortest of the service's
checks): a cached badge is never older than the data behind it.
"""

from __future__ import annotations

import math
import time
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from monitor.api import LIVE
from monitor.live import CheckStats, ServiceStats
from monitor.page import SERVICE_ID

FONT_SIZE = 11
PAD = 6  # px of space on each side of a text
HEIGHT = 20

# Advance widths of DejaVu Sans (units per em 2048) for " " (32) to "~" (126).
_WIDTHS = (
    651, 821, 942, 1716, 1303, 1946, 1597, 563, 799, 799, 1024, 1716, 651, 739, 651, 690, 1303, 1303, 1303,
    1303, 1303, 1303, 1303, 1303, 1303, 1303, 690, 690, 1716, 1716, 1716, 1087, 2048, 1401, 1405, 1430, 1577,
    1294, 1178, 1587, 1540, 604, 604, 1343, 1141, 1767, 1532, 1612, 1235, 1612, 1423, 1300, 1251, 1499, 1401,
    2025, 1403, 1251, 1403, 799, 690, 799, 1716, 1024, 1024, 1255, 1300, 1126, 1300, 1260, 721, 1300, 1298,
    569, 569, 1186, 569, 1995, 1298, 1253, 1300, 1300, 842, 1067, 803, 1298, 1212, 1675, 1212, 1212, 1075,
    1303, 690, 1303, 1716,
)
_UNITS_PER_EM = 2048
_OTHER = 1303  # a character outside ASCII: as wide as a digit (DejaVu's é is 1260, ü 1298)
_NARROW = {0x2013: 1024, 0x2014: 2048, 0x2026: 2048, 0xB7: 651}  # – — … ·

COLORS = {
    "operational": "#1f9d55", "up": "#1f9d55",
    "degraded_performance": "#c98a00", "degraded": "#c98a00",
    "partial_outage": "#e36a0e",
    "major_outage": "#d42a1f", "down": "#d42a1f",
    "under_maintenance": "#2f6fdc",
    "unknown": "#6b737d", "none": "#6b737d",
}
WORDS = {
    "operational": "operational", "degraded_performance": "degraded", "partial_outage": "partial outage",
    "major_outage": "major outage", "under_maintenance": "maintenance", "unknown": "unknown",
    "up": "up", "degraded": "degraded", "down": "down",
}
WINDOWS = ("24h", "7d", "30d")
METRICS = ("status", "uptime", "latency")


def text_width(text: str, size: float = FONT_SIZE) -> float:
    """Rendered width in px of `text` in DejaVu Sans at `size` px."""
    units = 0
    for ch in text:
        code = ord(ch)
        units += _WIDTHS[code - 32] if 32 <= code <= 126 else _NARROW.get(code, _OTHER)
    return units * size / _UNITS_PER_EM


def render(label: str, message: str, color: str, title: str | None = None) -> str:
    """A two-part badge: `label` on grey, `message` on `color`."""
    lw, mw = text_width(label), text_width(message)
    left, right = math.ceil(lw) + 2 * PAD, math.ceil(mw) + 2 * PAD
    width = left + right
    tip = escape(title or f"{label}: {message}")
    lx, mx = left / 2, left + right / 2
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" role="img" '
        f'aria-label={quoteattr(f"{label}: {message}")}>'
        f"<title>{tip}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="{HEIGHT}" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="{HEIGHT}" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="{HEIGHT}" fill={quoteattr(color)}/>'
        f'<rect width="{width}" height="{HEIGHT}" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="DejaVu Sans,Verdana,Geneva,sans-serif" '
        f'font-size="{FONT_SIZE}">'
        f"{_text(label, lx, lw)}{_text(message, mx, mw)}</g></svg>"
    )


def _text(text: str, x: float, width: float) -> str:
    """A text with its one-pixel shadow, stretched to exactly `width`."""
    body = escape(text)
    return (f'<text x="{x:g}" y="15" fill="#010101" fill-opacity=".3" textLength="{width:.1f}">{body}</text>'
            f'<text x="{x:g}" y="14" textLength="{width:.1f}">{body}</text>')


def uptime_text(share: float | None) -> tuple[str, str]:
    """(message, colour) for an availability share; never rounds a bad window up to 100%."""
    if share is None:
        return "no data", COLORS["unknown"]
    pct = "100%" if share >= 1.0 else f"{min(share * 100, 99.99):.2f}%"
    color = (COLORS["operational"] if share >= 0.999 else COLORS["degraded"] if share >= 0.99
             else COLORS["partial_outage"] if share >= 0.95 else COLORS["down"])
    return pct, color


def latency_text(stats: CheckStats) -> tuple[str, str]:
    """The last probe's duration, when it succeeded (a refused connection is fast, and
    that is not latency)."""
    last = stats.last
    if last is None or not last.success:
        return "n/a", COLORS["unknown"]
    ms = last.duration * 1000
    text = f"{ms:.0f} ms" if ms < 10_000 else f"{last.duration:.1f} s"
    return text, COLORS["degraded"] if last.degraded else COLORS["operational"]


# ------------------------------------------------------------------ handlers

_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff"}


def _svg(svg: str, max_age: float, status: int = 200) -> web.Response:
    cache = f"max-age={max(1, int(max_age))}" if status == 200 else "no-store"
    return web.Response(status=status, text=svg, content_type="image/svg+xml", charset="utf-8",
                        headers={**_HEADERS, "Cache-Control": cache})


def _not_found(what: str) -> web.Response:
    return _svg(render("aipulse", f"no such {what}", COLORS["unknown"]), 0, status=404)


def _bad(message: str) -> web.Response:
    return _svg(render("aipulse", message, COLORS["unknown"]), 0, status=400)


def _interval(sstats: ServiceStats) -> float:
    return min((c.interval for c in sstats.service.checks), default=60.0)


async def service_badge(request: web.Request) -> web.Response:
    sid = request.match_info["service"]
    live = request.app[LIVE]
    if not SERVICE_ID.fullmatch(sid) or (sstats := live.services.get(sid)) is None:
        return _not_found("service")
    metric = request.query.get("metric", "status")
    if metric != "status":
        return _bad("metric: only status for a service")
    status = sstats.status
    if all(live.checks.get(c.key) is None or live.checks[c.key].last is None for c in sstats.service.checks):
        status = "unknown"  # no result yet: nothing is known
    label = request.query.get("label") or sstats.service.title
    return _svg(render(label[:60], WORDS.get(status, status), COLORS.get(status, COLORS["unknown"])),
                _interval(sstats))


async def check_badge(request: web.Request) -> web.Response:
    sid, cid = request.match_info["service"], request.match_info["check"]
    live = request.app[LIVE]
    stats = live.checks.get((sid, cid)) if SERVICE_ID.fullmatch(sid) and SERVICE_ID.fullmatch(cid) else None
    if stats is None:
        return _not_found("check")
    metric = request.query.get("metric", "status")
    if metric not in METRICS:
        return _bad(f"metric: one of {', '.join(METRICS)}")
    label = request.query.get("label") or f"{live.services[sid].service.title} {cid}"
    if metric == "status":
        state = stats.state.value
        message, color = WORDS.get(state, state), COLORS.get(state, COLORS["unknown"])
    elif metric == "latency":
        message, color = latency_text(stats)
        label = request.query.get("label") or f"{label} latency"
    else:
        window = request.query.get("window", "30d")
        if window not in WINDOWS:
            return _bad(f"window: one of {', '.join(WINDOWS)}")
        now = time.time()
        sstats = live.services[sid]
        maintenance = [span for m in sstats.service.maintenance for span in m.spans(now - 30 * 86400, now)]
        message, color = uptime_text(stats.availability(now, live.gap_spans(), maintenance).get(window))
        label = request.query.get("label") or f"{label} uptime {window}"
    return _svg(render(label[:80], message, color), stats.check.interval)


def add_routes(app: web.Application) -> None:
    """The app must already hold `api.LIVE`."""
    app.router.add_get("/badge/{service}.svg", service_badge)
    app.router.add_get("/badge/{service}/{check}.svg", check_badge)
