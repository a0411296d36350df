"""Google Cloud's ``status.cloud.google.com/incidents.json`` (FORMATS.md 4).

A bare array of incidents, newest first, with no overall field and no product
catalogue: a product is affected while an incident that lists it in
``affected_products`` has no ``end`` key. ``end`` is trusted over the last update's
status (2 of 157 ended incidents in a real capture still say SERVICE_DISRUPTION).
``status_impact``: SERVICE_INFORMATION (an advisory: operational), SERVICE_DISRUPTION
(degraded_performance) or SERVICE_OUTAGE (major_outage).

The components are the products the document names. With `components` in the config
(e.g. ``[Vertex Gemini API]``) only those count, and a product that no incident names
is operational: for this feed, "operational" means "no incident declared".
"""

from __future__ import annotations

from typing import Any

from monitor.vendorformats.model import (
    IMPACT_TO_STATUS,
    MAX_INCIDENTS,
    VendorComponent,
    VendorIncident,
    VendorStatus,
    Words,
    dicts,
    finish,
    text,
    timestamp,
    worst,
)

SOURCE = "gcloud"

IMPACT_WORDS = {"SERVICE_INFORMATION": "none", "SERVICE_DISRUPTION": "minor", "SERVICE_OUTAGE": "critical"}


def is_incidents(doc: Any) -> bool:
    return isinstance(doc, list) and any(isinstance(i, dict) and "affected_products" in i for i in doc[:5])


def parse_incidents(doc: list[Any], wanted: tuple[str, ...] = ()) -> VendorStatus:
    words = Words()
    wanted_keys = {w.casefold() for w in wanted}
    products: dict[str, str] = {}  # id -> title, in the document's order
    status: dict[str, list[str]] = {}
    incidents: list[VendorIncident] = []
    past: list[VendorIncident] = []
    for row in dicts(doc):
        affected = [(text(p.get("id"), 100) or text(p.get("title"), 100), text(p.get("title"), 200))
                    for p in dicts(row.get("affected_products"))]
        if wanted:
            affected = [(pid, title) for pid, title in affected if title.casefold() in wanted_keys]
            if not affected:
                continue
        for pid, title in affected:
            products.setdefault(pid, title or pid)
        word = row.get("status_impact")
        impact = IMPACT_WORDS.get(word, "unknown") if isinstance(word, str) else "unknown"
        incident = VendorIncident(
            id=text(row.get("id"), 100), name=text(row.get("external_desc"), 300), status="unknown",
            impact=impact, started=timestamp(row.get("begin")) or timestamp(row.get("created")),
            components=tuple(pid for pid, _ in affected))
        if "end" in row:  # present (even null would be odd): the incident is over
            if len(past) < MAX_INCIDENTS:
                past.append(VendorIncident(incident.id, incident.name, "resolved", impact, incident.started,
                                           incident.components, ended=timestamp(row.get("end"))))
            continue
        if impact == "unknown":
            words.odd.append(f"status_impact {word!r}")
        incidents.append(incident)
        for pid, _ in affected:
            status.setdefault(pid, []).append(IMPACT_TO_STATUS.get(impact, "unknown"))
    for name in wanted:  # asked for, named by no incident: no incident declared
        if name.casefold() not in {t.casefold() for t in products.values()}:
            products[f"product:{name}"] = name
    components = [VendorComponent(pid, title, worst(status.get(pid, ["operational"])))
                  for pid, title in products.items()]
    if not components:
        words.notes.append("no product is named by any incident in the feed")
        components = [VendorComponent("page", "Google Cloud", "operational")]
    seen = [c.status for c in components] + [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    return finish(SOURCE, components, incidents, seen, words, past)
