"""incident.io, read natively (ai-services.md 1.4; FORMATS.md 6).

* ``<base>/proxy/<host>`` -> ``{"summary": {components[], affected_components[],
  ongoing_incidents[], in_progress_maintenances[], ...}}``. A component absent from
  ``affected_components`` is operational; ``full_outage`` is Statuspage's
  ``major_outage``.
* The Widget API ``<base>/api/v1/summary`` -> ``{page_title, page_url,
  ongoing_incidents[], in_progress_maintenances[], scheduled_maintenances[]}``: no
  component list, so the page is its one component.

incident.io's Statuspage-compatible shim (``/api/v2/summary.json``) has the
Statuspage shape and is read by `monitor.vendorformats.atlassian`.
"""

from __future__ import annotations

from typing import Any

from monitor.vendorformats.model import (
    CLOSED,
    COMPONENT_WORDS,
    IMPACT_TO_STATUS,
    MAX_COMPONENTS,
    STATUS_TO_IMPACT,
    VendorComponent,
    VendorIncident,
    VendorStatus,
    Words,
    dicts,
    finish,
    first_time,
    incident_status,
    keep_components,
    page_component,
    short,
    text,
    timestamp,
    unknown,
    worst,
)

SOURCE = "incidentio"


def parse_native(summary: dict[str, Any], wanted: tuple[str, ...] = ()) -> VendorStatus:
    words = Words()
    names: dict[str, str] = {}
    for row in dicts(summary.get("components")):
        cid = text(row.get("id"), 100)
        if cid and cid not in names:
            names[cid] = text(row.get("name"), 200) or cid
    if not names:
        return unknown("no components", SOURCE)

    current: dict[str, str] = {}
    for row in dicts(summary.get("affected_components")):
        cid = text(row.get("component_id") or row.get("id"), 100)
        if not cid:
            continue
        status = words.component(row.get("status") or row.get("current_status"), names.get(cid, cid))
        current[cid] = worst((current.get(cid, "operational"), status))
    for row in dicts(summary.get("in_progress_maintenances")):
        for cid in _impacted_ids(row):
            if current.get(cid, "operational") == "operational":
                current[cid] = "under_maintenance"

    components = [VendorComponent(cid, name, current.get(cid, "operational")) for cid, name in names.items()]
    components, kept = keep_components(components, wanted, words)
    incidents = [i for row in dicts(summary.get("ongoing_incidents"))
                 if (i := _incident(row, words)) is not None]
    if wanted:
        incidents = [i for i in incidents if kept.intersection(i.components)]
        seen = [c.status for c in components]
    else:  # affected ids missing from the component list (hidden ones) still count overall
        seen = list(current.values()) + [c.status for c in components]
    seen += [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    return finish(SOURCE, components, incidents, seen, words)


def parse_widget(doc: dict[str, Any]) -> VendorStatus:
    words = Words()
    incidents = [i for row in dicts(doc.get("ongoing_incidents")) if (i := _incident(row, words)) is not None]
    seen = [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    if dicts(doc.get("in_progress_maintenances")):
        seen.append("under_maintenance")
    overall = worst(seen)
    words.notes.append("the widget API has no per-component list: the page is shown as one component")
    return finish(SOURCE, [page_component(doc.get("page_title"), overall, "status page")], incidents, seen,
                  words)


def _incident(row: dict[str, Any], words: Words) -> VendorIncident | None:
    state = incident_status(row.get("status"))
    if state in CLOSED:
        return None
    declared = row.get("current_worst_impact") or row.get("impact")
    if declared is not None:
        if declared in IMPACT_TO_STATUS:
            impact = declared
        elif declared in COMPONENT_WORDS:
            impact = STATUS_TO_IMPACT[COMPONENT_WORDS[declared]]
        else:
            words.odd.append(f"impact {short(declared)}")
            impact = "unknown"
    else:
        live = [
            words.component(ci.get("status") or ci.get("current_status"), "component impact")
            for ci in dicts(row.get("component_impacts"))
            if not ci.get("end_at")
        ]
        # No impact given at all: the incident is declared but names no severity.
        impact = STATUS_TO_IMPACT.get(worst(live), "unknown") if live else "none"
    started = first_time(row, ("started_at", "created_at", "published_at"))
    if started is None:
        starts = [timestamp(ci.get("start_at")) for ci in dicts(row.get("component_impacts"))]
        started = min((s for s in starts if s is not None), default=None)
    return VendorIncident(
        id=text(row.get("id"), 100),
        name=text(row.get("name"), 300),
        status=state,
        impact=impact,
        started=started,
        components=_impacted_ids(row)[:MAX_COMPONENTS],
    )


def _impacted_ids(row: dict[str, Any]) -> tuple[str, ...]:
    ids: list[str] = []
    for key in ("component_impacts", "affected_components", "components"):
        for item in dicts(row.get(key)):
            cid = text(item.get("component_id") or item.get("id"), 100)
            if cid and cid not in ids:
                ids.append(cid)
    return tuple(ids)
