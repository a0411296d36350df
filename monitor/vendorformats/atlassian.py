"""Atlassian Statuspage v2 (`/api/v2/summary.json`, also incident.io's Statuspage-
compatible shim) and the indicator-only roll-up of Rootly (`/api/v1/status.json`).

summary.json: ``{page, components[], incidents[], scheduled_maintenances[],
status{indicator}}``. ``overall`` is never read from ``status.indicator`` alone (a page
can say "minor" while a component is in major outage): it is the worst of every
component (group header rows ``group: true`` are skipped: they aggregate rows we read
anyway), every unresolved incident's impact and the indicator.

Rootly: ``{page, status{indicator: none|minor|major|maintenance}, incidents[]}`` and no
component list (docs.rootly.com/configuration/status-page-public-api); the page is
its own single component.
"""

from __future__ import annotations

from typing import Any

from monitor.vendorformats.model import (
    CLOSED,
    IMPACT_TO_STATUS,
    MAX_COMPONENTS,
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
    unknown,
    worst,
)


def parse_summary(doc: dict[str, Any], wanted: tuple[str, ...] = (),
                  source: str = "statuspage") -> VendorStatus:
    rows = doc.get("components")
    if not isinstance(rows, list):
        return unknown("'components' is not a list", source)
    words = Words()
    components: list[VendorComponent] = []
    for row in rows:
        if not isinstance(row, dict) or row.get("group") is True:
            continue
        cid = text(row.get("id"), 100)
        name = text(row.get("name"), 200) or cid
        if not name:
            continue
        components.append(VendorComponent(cid or name, name, words.component(row.get("status"), name)))
    if not components:
        return unknown("no components", source)
    components, kept = keep_components(components, wanted, words)
    incidents = _incidents(doc, words, kept if wanted else None)
    seen = [c.status for c in components]
    seen += [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    if not wanted:  # the indicator speaks for the whole page, not for the components kept
        seen += _indicator(doc, words)
    return finish(source, components, incidents, seen, words)


def parse_rollup(doc: dict[str, Any], source: str = "rootly") -> VendorStatus:
    """A page that publishes only its overall indicator and its open incidents."""
    words = Words()
    seen = _indicator(doc, words)
    if not seen:
        return unknown("no status.indicator", source)
    incidents = _incidents(doc, words, None)
    seen += [IMPACT_TO_STATUS.get(i.impact, "unknown") for i in incidents]
    page = doc.get("page")
    overall_of_page = worst(seen)
    name = page.get("name") if isinstance(page, dict) else None
    component = page_component(name, overall_of_page, "status page")
    words.notes.append("this format has no per-component list: the page's overall indicator is shown as one "
                       "component")
    return finish(source, [component], incidents, seen, words)


def _indicator(doc: dict[str, Any], words: Words) -> list[str]:
    status_obj = doc.get("status")
    if not isinstance(status_obj, dict) or status_obj.get("indicator") is None:
        return []
    indicator = status_obj.get("indicator")
    mapped = IMPACT_TO_STATUS.get(indicator) if isinstance(indicator, str) else None
    if mapped is None:
        words.odd.append(f"indicator {short(indicator)}")
    return [mapped or "unknown"]


def _incidents(doc: dict[str, Any], words: Words, kept: set[str] | None) -> list[VendorIncident]:
    """Unresolved incidents; with a component filter (`kept`), only those naming a kept
    component (an incident that names none cannot be pinned on them)."""
    out: list[VendorIncident] = []
    skipped = 0
    for row in dicts(doc.get("incidents")):
        incident = _incident(row, words)
        if incident is None:
            continue
        if kept is not None and not kept.intersection(incident.components):
            skipped += 1
            continue
        out.append(incident)
    if skipped:
        words.notes.append(f"{skipped} open incident(s) on the page name none of the components watched")
    return out


def _incident(row: dict[str, Any], words: Words) -> VendorIncident | None:
    state = incident_status(row.get("status"))
    if state in CLOSED or row.get("resolved_at"):
        return None
    impact_word = row.get("impact")
    impact = impact_word if impact_word in IMPACT_TO_STATUS else "unknown"
    if impact == "unknown":
        words.odd.append(f"impact {short(impact_word)}")
    ids = tuple(text(c.get("id") or c.get("code"), 100) for c in dicts(row.get("components")))
    return VendorIncident(
        id=text(row.get("id"), 100),
        name=text(row.get("name"), 300),
        status=state,
        impact=impact,
        started=first_time(row, ("started_at", "created_at")),
        components=tuple(i for i in ids if i)[:MAX_COMPONENTS],
    )
