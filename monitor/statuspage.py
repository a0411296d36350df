"""Vendor status pages: what the vendor says, next to what we measure.

Two machine-readable formats are read (reference: ai-services.md sections 1.1-1.4):

* **Atlassian Statuspage v2** ``/api/v2/summary.json`` -- ``{page, components[],
  incidents[], scheduled_maintenances[], status{indicator}}``. incident.io's
  Statuspage-compatible shim answers the same shape and is read the same way.
* **incident.io native** ``<base>/proxy/<host>`` -- ``{"summary": {components[],
  affected_components[], ongoing_incidents[], in_progress_maintenances[], ...}}``.

Everything is normalised to the Statuspage component vocabulary (`STATUSES`) plus
``unknown``. The rule that matters most: **an unreadable source is unknown -- never
operational and never down**. HTML where JSON was expected (the page moved
provider; the old URL answers 200 with an HTML shell), a bot challenge, a non-2xx
answer, malformed JSON, a JSON shape we do not recognise, an empty component list,
and every transport failure (timeout, DNS, TLS, too large) give ``overall ==
"unknown"`` with a `detail` saying why.

How ``overall`` is computed (never from ``status.indicator`` alone; a page can say
"major" while a component is in major outage): the worst of

* every component's status (group header rows ``group: true`` are skipped: they
  are aggregates of rows we already read),
* every unresolved incident's impact, mapped ``none -> operational``,
  ``minor -> degraded_performance``, ``major -> partial_outage``,
  ``critical -> major_outage``, ``maintenance -> under_maintenance``,
* the page's own ``status.indicator`` mapped the same way, when present,

ordered ``operational < under_maintenance < unknown < degraded_performance <
partial_outage < major_outage``. ``unknown`` (a status word we do not know) sits
above maintenance and below any real impairment: one unreadable word can stop us
claiming "operational" but cannot hide a declared outage elsewhere on the page.

Component names are vendor text: they reach Prometheus only through
`component_label` / `component_labels` (``[a-z0-9_]``, at most 64 characters,
unique per page), and at most `MAX_COMPONENTS` components per page are kept
(``overall`` still counts them all).

`StatusPagePoller` fetches each configured page on its own asyncio task, once right
away and then every ``interval``, each fetch under one hard deadline with a bounded
body (the probes' `send` / `read_body`), and keeps the newest answer in ``latest``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import ssl
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor import __version__
from monitor.probes import verified_context
from monitor.probes.client import Client, get
from monitor.probes.net import ProbeTrace
from monitor.reasons import Failure, is_challenge

log = logging.getLogger("aipulse.statuspage")

# The Statuspage component vocabulary, best to worst, then "unknown": the values of
# aipulse_vendor_component_status{status} (one series per value).
STATUSES = ("operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage")
COMPONENT_STATUSES = (*STATUSES, "unknown")

MAX_COMPONENTS = 100  # per page; more would be a label-cardinality hazard
MAX_INCIDENTS = 50  # Statuspage itself lists at most 50
MAX_LABEL = 64

_RANK = {
    "operational": 0,
    "under_maintenance": 1,
    "unknown": 2,
    "degraded_performance": 3,
    "partial_outage": 4,
    "major_outage": 5,
}

# Component status words, both vendors. incident.io says full_outage where
# Statuspage says major_outage. Anything else is "unknown", never "operational".
_COMPONENT_WORDS = {
    "operational": "operational",
    "degraded_performance": "degraded_performance",
    "partial_outage": "partial_outage",
    "major_outage": "major_outage",
    "full_outage": "major_outage",
    "under_maintenance": "under_maintenance",
}

# Statuspage incident impact / status.indicator -> component vocabulary.
_IMPACT_TO_STATUS = {
    "none": "operational",
    "minor": "degraded_performance",
    "major": "partial_outage",
    "critical": "major_outage",
    "maintenance": "under_maintenance",
}
_STATUS_TO_IMPACT = {v: k for k, v in _IMPACT_TO_STATUS.items()}

# Incident lifecycle words, normalised to Statuspage's (incident.io's "fixing" is
# Statuspage's "identified").
_INCIDENT_WORDS = {
    "investigating": "investigating",
    "identified": "identified",
    "fixing": "identified",
    "monitoring": "monitoring",
    "resolved": "resolved",
    "postmortem": "postmortem",
    "scheduled": "scheduled",
    "in_progress": "in_progress",
    "verifying": "verifying",
    "completed": "completed",
}
_CLOSED = frozenset({"resolved", "postmortem", "completed"})


@dataclass(frozen=True, slots=True)
class VendorComponent:
    id: str
    name: str  # vendor text: display only, never a label (see component_label)
    status: str  # one of COMPONENT_STATUSES


@dataclass(frozen=True, slots=True)
class VendorIncident:
    id: str
    name: str
    status: str  # investigating | identified | monitoring | ... | unknown
    impact: str  # Statuspage impact: none | minor | major | critical | maintenance | unknown
    started: float | None  # epoch seconds: started_at, else created_at / published_at
    components: tuple[str, ...]  # component ids


@dataclass(frozen=True, slots=True)
class VendorStatus:
    source: str  # "statuspage" | "incidentio" | "unknown"
    overall: str  # one of COMPONENT_STATUSES
    components: tuple[VendorComponent, ...] = ()
    incidents: tuple[VendorIncident, ...] = ()  # unresolved only
    detail: str = ""  # why unknown (or a note, e.g. components left out); never a label

    @property
    def known(self) -> bool:
        return self.overall != "unknown"


def unknown(detail: str, source: str = "unknown") -> VendorStatus:
    return VendorStatus(source=source, overall="unknown", detail=detail)


# --------------------------------------------------------------------------- parsing


def parse(body: bytes, content_type: str, status: int, headers: Mapping[str, str]) -> VendorStatus:
    """Read one status-page answer. Pure; never raises on vendor input."""
    hdrs = {name.lower(): value for name, value in headers.items()}  # whatever mapping we were given
    if is_challenge(status, hdrs, body):
        return unknown(f"bot challenge (HTTP {status})")
    if not 200 <= status < 300:
        return unknown(f"HTTP {status} ({_REASON_WORDS.get(status, 'not a 2xx answer')})")
    stripped = body.lstrip()
    if "html" in content_type.lower() or stripped[:1] == b"<":
        return unknown("HTML where JSON was expected (the page may have moved)")
    if not stripped:
        return unknown("empty body")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return unknown("malformed JSON")
    if isinstance(doc, dict) and isinstance(doc.get("summary"), dict):
        return _incidentio(doc["summary"])
    if isinstance(doc, dict) and "components" in doc:
        return _statuspage(doc)
    return unknown("JSON of an unrecognised shape (neither Statuspage v2 nor incident.io)")


_REASON_WORDS = {429: "rate limited", 503: "overloaded", 404: "not found", 410: "gone"}


def _statuspage(doc: dict[str, Any]) -> VendorStatus:
    source = "statuspage"
    rows = doc.get("components")
    if not isinstance(rows, list):
        return unknown("'components' is not a list", source)
    words = _Words()
    components: list[VendorComponent] = []
    for row in rows:
        if not isinstance(row, dict) or row.get("group") is True:
            continue
        cid = _text(row.get("id"), 100)
        name = _text(row.get("name"), 200) or cid
        if not name:
            continue
        components.append(VendorComponent(cid or name, name, words.component(row.get("status"), name)))
    if not components:
        return unknown("no components", source)

    incidents: list[VendorIncident] = []
    for row in _dicts(doc.get("incidents")):
        incident = _statuspage_incident(row, words)
        if incident is not None:
            incidents.append(incident)

    seen = [c.status for c in components]
    seen += [_IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    status_obj = doc.get("status")
    if isinstance(status_obj, dict) and status_obj.get("indicator") is not None:
        indicator = status_obj.get("indicator")
        mapped = _IMPACT_TO_STATUS.get(indicator) if isinstance(indicator, str) else None
        if mapped is None:
            words.odd.append(f"indicator {_short(indicator)}")
        seen.append(mapped or "unknown")
    return _finish(source, components, incidents, seen, words)


def _statuspage_incident(row: dict[str, Any], words: _Words) -> VendorIncident | None:
    state = _incident_status(row.get("status"))
    if state in _CLOSED or row.get("resolved_at"):
        return None
    impact_word = row.get("impact")
    impact = impact_word if impact_word in _IMPACT_TO_STATUS else "unknown"
    if impact == "unknown":
        words.odd.append(f"impact {_short(impact_word)}")
    ids = tuple(
        _text(c.get("id") or c.get("code"), 100) for c in _dicts(row.get("components"))
    )
    return VendorIncident(
        id=_text(row.get("id"), 100),
        name=_text(row.get("name"), 300),
        status=state,
        impact=impact,
        started=_first_time(row, ("started_at", "created_at")),
        components=tuple(i for i in ids if i)[:MAX_COMPONENTS],
    )


def _incidentio(summary: dict[str, Any]) -> VendorStatus:
    source = "incidentio"
    words = _Words()
    names: dict[str, str] = {}
    for row in _dicts(summary.get("components")):
        cid = _text(row.get("id"), 100)
        if cid and cid not in names:
            names[cid] = _text(row.get("name"), 200) or cid
    if not names:
        return unknown("no components", source)

    # A component absent from affected_components is operational.
    current: dict[str, str] = {}
    for row in _dicts(summary.get("affected_components")):
        cid = _text(row.get("component_id") or row.get("id"), 100)
        if not cid:
            continue
        status = words.component(row.get("status") or row.get("current_status"), names.get(cid, cid))
        current[cid] = _worst((current.get(cid, "operational"), status))
    for row in _dicts(summary.get("in_progress_maintenances")):
        for cid in _impacted_ids(row):
            if current.get(cid, "operational") == "operational":
                current[cid] = "under_maintenance"

    components = [VendorComponent(cid, name, current.get(cid, "operational")) for cid, name in names.items()]
    incidents = [_incidentio_incident(row, words) for row in _dicts(summary.get("ongoing_incidents"))]
    incidents = [i for i in incidents if i is not None]
    # Affected ids missing from the component list (hidden ones) still count overall.
    seen = list(current.values()) + [c.status for c in components]
    seen += [_IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    return _finish(source, components, incidents, seen, words)


def _incidentio_incident(row: dict[str, Any], words: _Words) -> VendorIncident | None:
    state = _incident_status(row.get("status"))
    if state in _CLOSED:
        return None
    declared = row.get("current_worst_impact") or row.get("impact")
    if declared is not None:
        if declared in _IMPACT_TO_STATUS:
            impact = declared
        elif declared in _COMPONENT_WORDS:
            impact = _STATUS_TO_IMPACT[_COMPONENT_WORDS[declared]]
        else:
            words.odd.append(f"impact {_short(declared)}")
            impact = "unknown"
    else:
        live = [
            words.component(ci.get("status") or ci.get("current_status"), "component impact")
            for ci in _dicts(row.get("component_impacts"))
            if not ci.get("end_at")
        ]
        # No impact given at all: the incident is declared but names no severity.
        impact = _STATUS_TO_IMPACT.get(_worst(live), "unknown") if live else "none"
    started = _first_time(row, ("started_at", "created_at", "published_at"))
    if started is None:
        starts = [_time(ci.get("start_at")) for ci in _dicts(row.get("component_impacts"))]
        started = min((s for s in starts if s is not None), default=None)
    return VendorIncident(
        id=_text(row.get("id"), 100),
        name=_text(row.get("name"), 300),
        status=state,
        impact=impact,
        started=started,
        components=_impacted_ids(row)[:MAX_COMPONENTS],
    )


def _impacted_ids(row: dict[str, Any]) -> tuple[str, ...]:
    ids: list[str] = []
    for key in ("component_impacts", "affected_components", "components"):
        for item in _dicts(row.get(key)):
            cid = _text(item.get("component_id") or item.get("id"), 100)
            if cid and cid not in ids:
                ids.append(cid)
    return tuple(ids)


def _finish(source: str, components: list[VendorComponent], incidents: list[VendorIncident],
            seen: list[str], words: _Words) -> VendorStatus:
    overall = _worst(seen)
    notes = []
    if overall == "unknown":
        notes.append("unrecognised status words: " + ", ".join(dict.fromkeys(words.odd)))
    elif words.odd:
        notes.append("also unrecognised: " + ", ".join(dict.fromkeys(words.odd)))
    if len(components) > MAX_COMPONENTS:
        notes.append(f"kept {MAX_COMPONENTS} of {len(components)} components")
    return VendorStatus(
        source=source,
        overall=overall,
        components=tuple(components[:MAX_COMPONENTS]),
        incidents=tuple(incidents[:MAX_INCIDENTS]),
        detail="; ".join(notes)[:500],
    )


class _Words:
    """Maps status words, remembering the ones it did not know (for `detail`)."""

    def __init__(self) -> None:
        self.odd: list[str] = []

    def component(self, word: Any, where: str) -> str:
        status = _COMPONENT_WORDS.get(word) if isinstance(word, str) else None
        if status is None:
            self.odd.append(f"{_short(word)} ({_short(where, 60, quote=False)})")
            return "unknown"
        return status


def _worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: _RANK.get(s, _RANK["unknown"]), default="operational")


def _incident_status(word: Any) -> str:
    return _INCIDENT_WORDS.get(word, "unknown") if isinstance(word, str) else "unknown"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def _text(value: Any, limit: int) -> str:
    """Vendor text made safe to keep: a str or int, control characters removed, bounded."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    return _CONTROL.sub(" ", str(value)).strip()[:limit]


def _short(value: Any, limit: int = 40, quote: bool = True) -> str:
    text = _CONTROL.sub(" ", value if isinstance(value, str) else repr(value))[:limit]
    return repr(text) if quote and isinstance(value, str) else text


def _time(value: Any) -> float | None:
    """Epoch seconds from RFC 3339 (offset required); None for anything else."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # RFC 3339 always has an offset; a naive time is ambiguous
        return None
    ts = when.timestamp()
    return ts if math.isfinite(ts) else None


def _first_time(row: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        ts = _time(row.get(key))
        if ts is not None:
            return ts
    return None


# ------------------------------------------------------------------------- labels

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def component_label(name: str) -> str:
    """A Prometheus-safe label value for a vendor component name.

    ``[a-z0-9_]``, 1 to 64 characters, deterministic. Accents are folded
    ("Générateur" -> "generateur"); a name with no ASCII letters or digits left
    ("接口") becomes ``c_<hash>``; a name cut at 64 characters keeps a hash of
    the whole name so two long names that share a prefix stay apart.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = _NOT_SLUG.sub("_", folded).strip("_")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    if not slug:
        return "c_" + digest[:12]
    if len(slug) > MAX_LABEL:
        slug = slug[: MAX_LABEL - 9].rstrip("_") + "_" + digest[:8]
    return slug


def component_labels(components: Iterable[VendorComponent]) -> dict[str, str]:
    """component id -> label, unique within one page (``api``, ``api_2``, ...)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for component in components:
        if component.id in out:
            continue
        base = component_label(component.name)
        label, n = base, 1
        while label in used:
            n += 1
            suffix = f"_{n}"
            label = base[: MAX_LABEL - len(suffix)] + suffix
        used.add(label)
        out[component.id] = label
    return out


# ----------------------------------------------------------------- detection lead


def detection_lead(our_start: float | None, vendor: VendorStatus | None) -> float | None:
    """Earliest unresolved vendor incident start minus our outage window's start.

    Positive: we saw it first (by that many seconds). None when we have no open
    window or the vendor has no dated open incident. Maintenance incidents are not
    outages and are left out. Vendors may back-date ``started_at``, which makes the
    lead look smaller than what users experienced; that is the vendor's claim.
    """
    if our_start is None or vendor is None:
        return None
    starts = [i.started for i in vendor.incidents if i.started is not None and i.impact != "maintenance"]
    if not starts:
        return None
    return min(starts) - our_start


# ------------------------------------------------------------------------ fetching

_HEADERS = (
    ("Accept", "application/json"),
    ("User-Agent", f"aipulse/{__version__} (availability monitor; status page reader)"),
)


def new_client(ssl_context: ssl.SSLContext | None = None) -> Client:
    """The probes' HTTP client (explicit DNS, no keep-alive, verified TLS, no env
    proxies, no client-side timeout: `fetch` owns the deadline)."""
    return Client(ssl_context or verified_context(), _HEADERS[1][1])


async def fetch(http: Client, url: str, timeout: float = 10.0,
                max_bytes: int = 4 * 1024 * 1024) -> VendorStatus:
    """GET one status page under one hard deadline and parse it. Never raises
    (except CancelledError): a failure is `unknown` with the reason in `detail`."""
    trace = ProbeTrace()
    try:
        async with asyncio.timeout(timeout):
            response, body = await get(http, url, _HEADERS, trace, max_bytes)
    except TimeoutError:
        return unknown(f"fetch failed: timeout: no answer within {timeout:g}s ({trace.stage})")
    except Failure as failure:
        return unknown(f"fetch failed: {failure.reason.value}: {failure.detail[:200]}")
    return parse(body, response.headers.get("content-type") or "", response.status, response.headers)


OnUpdate = Callable[[str, VendorStatus], None]


class StatusPagePoller:
    """Polls each service's vendor status page: right away, then every `interval`.

    One asyncio task per page. Each poll has one hard deadline (`timeout`, covering
    DNS, connect, TLS, headers and body) and reads at most `max_bytes`. A task never
    raises: every failure becomes an `unknown` VendorStatus. `latest[service]` is
    ``(epoch seconds the poll finished, VendorStatus)``; `on_update` is called after
    every poll (exceptions in it are logged, not raised). One log line per change of
    a page's overall status.
    """

    def __init__(
        self,
        pages: Mapping[str, str],
        client: Client,
        interval: float = 120.0,
        timeout: float = 10.0,
        max_bytes: int = 4 * 1024 * 1024,
        on_update: OnUpdate | None = None,
    ) -> None:
        if not (interval > 0 and timeout > 0 and max_bytes > 0):
            raise ValueError("interval, timeout and max_bytes must be positive")
        self.pages = dict(pages)
        self.client = client
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.on_update = on_update
        self.latest: dict[str, tuple[float, VendorStatus]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def start(self) -> None:
        """Start one task per page (call from inside the running event loop)."""
        self._running = True
        for service in self.pages:
            self._spawn(service)

    async def stop(self) -> None:
        """Cancel every task and wait for them; safe to call twice."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await _cancel(tasks)

    async def update(self, pages: Mapping[str, str]) -> None:
        """Apply a reloaded config: pages removed or whose URL changed are stopped and
        forgotten; new ones start right away (when running). Unchanged ones keep going."""
        new = dict(pages)
        stale = [s for s, url in self.pages.items() if new.get(s) != url]
        await _cancel([self._tasks.pop(s) for s in stale if s in self._tasks])
        for service in stale:
            self.latest.pop(service, None)
        self.pages = new
        if self._running:
            for service in new:
                self._spawn(service)

    async def poll(self, service: str) -> VendorStatus:
        """Fetch one page now, record it and return it. Never raises (but CancelledError)."""
        try:
            status = await fetch(self.client, self.pages[service], self.timeout, self.max_bytes)
        except Exception as exc:  # a bug here must not kill the task
            log.exception("status page poll for %s failed", service)
            status = unknown(f"internal error: {type(exc).__name__}")
        self._record(service, status)
        return status

    def _record(self, service: str, status: VendorStatus) -> None:
        previous = self.latest.get(service)
        self.latest[service] = (time.time(), status)
        if previous is None or previous[1].overall != status.overall:
            was = previous[1].overall if previous is not None else "none"
            why = f" ({status.detail})" if status.overall == "unknown" and status.detail else ""
            log.info("vendor status of %s: %s -> %s%s", service, was, status.overall, why)
        if self.on_update is not None:
            try:
                self.on_update(service, status)
            except Exception:
                log.exception("status page on_update for %s failed", service)

    def _spawn(self, service: str) -> None:
        task = self._tasks.get(service)
        if task is None or task.done():
            self._tasks[service] = asyncio.get_running_loop().create_task(
                self._run(service), name=f"aipulse-statuspage-{service}"
            )

    async def _run(self, service: str) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.poll(service)
            due += self.interval
            now = loop.time()
            if due < now:  # the poll overran its slot: go again now, don't catch up
                due = now
            await asyncio.sleep(due - now)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:  # a cancelled task ends in CancelledError, which gather returns, not raises
        await asyncio.gather(*tasks, return_exceptions=True)
