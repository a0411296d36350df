"""Instatus (FORMATS.md 1): ``/summary.json`` and ``/v2|v3/components.json``.

summary.json: ``{page{name, url, status: UP|HASISSUES|UNDERMAINTENANCE},
activeIncidents[]?, activeMaintenances[]?}`` (an empty list's key is left out). No
component list: the page is its one component. ``page.status`` can lag behind open
incidents, so the overall is the worst of it, every active incident's impact and
every maintenance in progress.

components.json: ``{components[{id, name, status, group}]}``; parent groups are also
listed as components and are skipped like Statuspage's group rows.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from monitor.vendorformats.model import (
    IMPACT_TO_STATUS,
    VendorComponent,
    VendorIncident,
    VendorStatus,
    Words,
    dicts,
    finish,
    keep_components,
    page_component,
    short,
    text,
    timestamp,
    unknown,
    worst,
)

SOURCE = "instatus"

COMPONENT_WORDS = {
    "OPERATIONAL": "operational",
    "UNDERMAINTENANCE": "under_maintenance",
    "DEGRADEDPERFORMANCE": "degraded_performance",
    "PARTIALOUTAGE": "partial_outage",
    "MINOROUTAGE": "partial_outage",
    "MAJOROUTAGE": "major_outage",
}
PAGE_WORDS = {"UP": "operational", "HASISSUES": "degraded_performance",
              "UNDERMAINTENANCE": "under_maintenance"}
IMPACT_WORDS = {  # -> Statuspage impact
    "OPERATIONAL": "none",
    "DEGRADEDPERFORMANCE": "minor",
    "PARTIALOUTAGE": "major",
    "MINOROUTAGE": "major",
    "MAJOROUTAGE": "critical",
    "UNDERMAINTENANCE": "maintenance",
}
INCIDENT_WORDS = {"INVESTIGATING": "investigating", "IDENTIFIED": "identified", "MONITORING": "monitoring",
                  "RESOLVED": "resolved"}
MAINTENANCE_WORDS = {"NOTSTARTEDYET": "scheduled", "INPROGRESS": "in_progress", "COMPLETED": "completed"}


def is_summary(doc: Any) -> bool:
    page = doc.get("page") if isinstance(doc, dict) else None
    return isinstance(page, dict) and page.get("status") in PAGE_WORDS


def is_components(doc: Any) -> bool:
    """Instatus words are upper case (OPERATIONAL), Statuspage's lower case."""
    rows = dicts(doc.get("components")) if isinstance(doc, dict) else []
    return "page" not in doc and any(r.get("status") in COMPONENT_WORDS for r in rows)


def parse_summary(doc: dict[str, Any]) -> VendorStatus:
    page = doc.get("page")
    if not isinstance(page, dict):
        return unknown("no 'page' object", SOURCE)
    words = Words()
    seen = [words.component(page.get("status"), "page", PAGE_WORDS)]
    incidents: list[VendorIncident] = []
    for row in dicts(doc.get("activeIncidents")):
        state = _word(INCIDENT_WORDS, row.get("status"))
        if state == "resolved":
            continue
        if state == "unknown":
            words.odd.append(f"incident status {short(row.get('status'))}")
        impact = _word(IMPACT_WORDS, row.get("impact"))
        if impact == "unknown":
            words.odd.append(f"impact {short(row.get('impact'))}")
        incidents.append(VendorIncident(
            id=text(row.get("id"), 100) or text(row.get("url"), 100),
            name=text(row.get("name"), 300), status=state, impact=impact,
            started=_when(row.get("started")), components=()))
    for row in dicts(doc.get("activeMaintenances")):
        state = MAINTENANCE_WORDS.get(row.get("status")) if isinstance(row.get("status"), str) else None
        if state is None:
            words.odd.append(f"maintenance status {short(row.get('status'))}")
            seen.append("unknown")
        elif state == "in_progress":
            seen.append("under_maintenance")
    seen += [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    overall = worst(seen)
    words.notes.append("summary.json has no per-component list: the page is shown as one component")
    return finish(SOURCE, [page_component(page.get("name"), overall, "status page")], incidents, seen, words)


def parse_components(doc: dict[str, Any], wanted: tuple[str, ...] = ()) -> VendorStatus:
    rows = dicts(doc.get("components"))
    parents = {text(g.get("id"), 100) for r in rows if isinstance(g := r.get("group"), dict)}
    words = Words()
    components = []
    for row in rows:
        cid = text(row.get("id"), 100)
        if cid in parents:  # a group listed as a component: an aggregate of rows we read
            continue
        name = text(row.get("name"), 200) or cid
        if name:
            components.append(VendorComponent(cid or name, name,
                                              words.component(row.get("status"), name, COMPONENT_WORDS)))
    if not components:
        return unknown("no components", SOURCE)
    components, _ = keep_components(components, wanted, words)
    return finish(SOURCE, components, [], [c.status for c in components], words)


def _word(table: dict[str, str], word: Any) -> str:
    return table.get(word, "unknown") if isinstance(word, str) else "unknown"


_JS_DATE = re.compile(r"[A-Z][a-z]{2} ([A-Z][a-z]{2} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})")


def _when(value: Any) -> float | None:
    """ISO 8601 (live pages) or a JavaScript Date.toString() (the documented example:
    "Sat Jun 11 2022 18:55:50 GMT+0000 (Coordinated Universal Time)")."""
    ts = timestamp(value)
    if ts is not None or not isinstance(value, str):
        return ts
    m = _JS_DATE.match(value)
    if m is None:
        return None
    try:
        return datetime.strptime(f"{m.group(1)} {m.group(2)}", "%b %d %Y %H:%M:%S %z").timestamp()
    except ValueError:
        return None
