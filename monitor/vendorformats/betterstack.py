"""Better Stack status pages (FORMATS.md 2): ``/index.json``, JSON:API.

``data.attributes.aggregate_state`` (operational | degraded | downtime | maintenance)
is the page's own verdict; ``included[]`` holds ``status_page_resource`` records (the
components: ``public_name``, ``status``), ``status_report`` records (incidents and
maintenance: ``title, report_type, starts_at, ends_at, aggregate_state``; a report is
over when its ``aggregate_state`` is ``resolved``, as ``ends_at`` stays null on manual
reports) and ``status_update`` records (the newest ``published_at`` of a resolved
report is its end). A resource that is ``not_monitored`` has no status: it is listed
as unknown but does not make the whole page unknown.
"""

from __future__ import annotations

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
    text,
    timestamp,
    unknown,
)

SOURCE = "betterstack"

STATE_WORDS = {"operational": "operational", "degraded": "degraded_performance",
               "downtime": "major_outage", "maintenance": "under_maintenance"}
IMPACT_WORDS = {"degraded": "minor", "downtime": "major", "maintenance": "maintenance",
                "operational": "none"}


def is_index(doc: Any) -> bool:
    data = doc.get("data") if isinstance(doc, dict) else None
    attrs = data.get("attributes") if isinstance(data, dict) else None
    return isinstance(attrs, dict) and "aggregate_state" in attrs and isinstance(doc.get("included"), list)


def parse_index(doc: dict[str, Any], wanted: tuple[str, ...] = ()) -> VendorStatus:
    attrs = doc["data"]["attributes"]
    words = Words()
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for row in dicts(doc.get("included")):
        attributes = row.get("attributes")
        if isinstance(attributes, dict):
            records[(str(row.get("type")), str(row.get("id")))] = {"relationships": row.get("relationships"),
                                                                   **attributes}
    components: list[VendorComponent] = []
    unmonitored: set[str] = set()
    for (kind, rid), row in records.items():
        if kind != "status_page_resource":
            continue
        name = text(row.get("public_name"), 200) or rid
        if row.get("status") == "not_monitored":
            unmonitored.add(rid)
            components.append(VendorComponent(rid, name, "unknown"))
        else:
            status = words.component(row.get("status"), name, STATE_WORDS)
            components.append(VendorComponent(rid, name, status))
    components, kept = keep_components(components, wanted, words)
    if not components:
        return unknown("no resources", SOURCE)

    incidents: list[VendorIncident] = []
    past: list[VendorIncident] = []
    for (kind, rid), row in records.items():
        if kind != "status_report":
            continue
        affected = tuple(text(a.get("status_page_resource_id"), 100)
                         for a in dicts(row.get("affected_resources")))
        if wanted and not kept.intersection(affected):
            continue
        state = row.get("aggregate_state")
        maintenance = row.get("report_type") == "maintenance"
        if state == "resolved":
            past.append(VendorIncident(rid, text(row.get("title"), 300), "resolved",
                                       "maintenance" if maintenance else "none",
                                       timestamp(row.get("starts_at")), affected, ended=_ended(row, records)))
            continue
        impact = "maintenance" if maintenance else IMPACT_WORDS.get(state, "unknown") \
            if isinstance(state, str) else "unknown"
        if impact == "unknown":
            words.odd.append(f"report state {state!r}")
        incidents.append(VendorIncident(rid, text(row.get("title"), 300),
                                        "in_progress" if maintenance else "investigating", impact,
                                        timestamp(row.get("starts_at")), affected))

    seen = [c.status for c in components if c.id not in unmonitored]
    if not wanted:
        seen.append(words.component(attrs.get("aggregate_state"), "aggregate_state", STATE_WORDS))
    seen += [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    if unmonitored:
        words.notes.append(f"{len(unmonitored)} resource(s) not monitored by the vendor (shown as unknown)")
    return finish(SOURCE, components, incidents, seen, words, past)


def _ended(report: dict[str, Any], records: dict[tuple[str, str], dict[str, Any]]) -> float | None:
    end = timestamp(report.get("ends_at"))
    if end is not None:
        return end
    rel = report.get("relationships")
    updates = rel.get("status_updates", {}).get("data") if isinstance(rel, dict) else None
    times = [timestamp(records.get(("status_update", str(u.get("id"))), {}).get("published_at"))
             for u in dicts(updates)]
    return max((t for t in times if t is not None), default=None)
