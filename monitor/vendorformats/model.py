"""What a vendor's status page says, in one vocabulary, and the helpers every format
parser shares (reference: ai-services.md 1.2-1.4, shared/fixtures/real/statuspage/FORMATS.md).

Everything is normalised to the Statuspage component vocabulary (`STATUSES`) plus
``unknown``. ``overall`` is the worst of what the page says, ordered ``operational <
under_maintenance < unknown < degraded_performance < partial_outage < major_outage``:
one unreadable word can stop us claiming "operational" but cannot hide a declared
outage elsewhere on the page. Vendor text is bounded and stripped of control
characters before it is kept (`text`); it reaches Prometheus only through
`monitor.statuspage.component_label`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The Statuspage component vocabulary, best to worst, then "unknown": the values of
# aipulse_vendor_component_status{status} (one series per value).
STATUSES = ("operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage")
COMPONENT_STATUSES = (*STATUSES, "unknown")

MAX_COMPONENTS = 100  # per page; more would be a label-cardinality hazard
MAX_INCIDENTS = 50  # Statuspage itself lists at most 50

RANK = {
    "operational": 0,
    "under_maintenance": 1,
    "unknown": 2,
    "degraded_performance": 3,
    "partial_outage": 4,
    "major_outage": 5,
}

# Component status words of Statuspage and incident.io (full_outage is incident.io's
# major_outage). Anything else is "unknown", never "operational".
COMPONENT_WORDS = {
    "operational": "operational",
    "degraded_performance": "degraded_performance",
    "partial_outage": "partial_outage",
    "major_outage": "major_outage",
    "full_outage": "major_outage",
    "under_maintenance": "under_maintenance",
}

# Statuspage incident impact / status.indicator -> component vocabulary.
IMPACT_TO_STATUS = {
    "none": "operational",
    "minor": "degraded_performance",
    "major": "partial_outage",
    "critical": "major_outage",
    "maintenance": "under_maintenance",
}
STATUS_TO_IMPACT = {v: k for k, v in IMPACT_TO_STATUS.items()}

# Incident lifecycle words, normalised to Statuspage's (incident.io's "fixing" is
# Statuspage's "identified").
INCIDENT_WORDS = {
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
CLOSED = frozenset({"resolved", "postmortem", "completed"})


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
    ended: float | None = None  # resolved incidents (VendorStatus.past) only, when the page says


@dataclass(frozen=True, slots=True)
class VendorStatus:
    source: str  # the format read (vendorformats.FORMATS), or "unknown"
    overall: str  # one of COMPONENT_STATUSES
    components: tuple[VendorComponent, ...] = ()
    incidents: tuple[VendorIncident, ...] = ()  # unresolved only
    detail: str = ""  # why unknown (or a note, e.g. components left out); never a label
    past: tuple[VendorIncident, ...] = ()  # resolved incidents the document lists (feeds, GCP, Better Stack)

    @property
    def known(self) -> bool:
        return self.overall != "unknown"

    @property
    def readable(self) -> bool:
        """The document was understood (its incidents can be believed), even if a word
        in it was not: every parse that read a page keeps at least one component, and
        an unreadable page (`unknown()`) has none."""
        return bool(self.components)


def unknown(detail: str, source: str = "unknown") -> VendorStatus:
    return VendorStatus(source=source, overall="unknown", detail=detail)


class Words:
    """Maps status words, remembering the ones it did not know (for `detail`)."""

    def __init__(self) -> None:
        self.odd: list[str] = []
        self.notes: list[str] = []  # format-specific remarks that are not errors

    def component(self, word: Any, where: str, table: dict[str, str] = COMPONENT_WORDS) -> str:
        status = table.get(word) if isinstance(word, str) else None
        if status is None:
            self.odd.append(f"{short(word)} ({short(where, 60, quote=False)})")
            return "unknown"
        return status


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: RANK.get(s, RANK["unknown"]), default="operational")


def incident_status(word: Any) -> str:
    return INCIDENT_WORDS.get(word, "unknown") if isinstance(word, str) else "unknown"


def dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def text(value: Any, limit: int) -> str:
    """Vendor text made safe to keep: a str or int, control characters removed, bounded."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    return _CONTROL.sub(" ", str(value)).strip()[:limit]


def short(value: Any, limit: int = 40, quote: bool = True) -> str:
    shown = _CONTROL.sub(" ", value if isinstance(value, str) else repr(value))[:limit]
    return repr(shown) if quote and isinstance(value, str) else shown


def timestamp(value: Any) -> float | None:
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


def first_time(row: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        ts = timestamp(row.get(key))
        if ts is not None:
            return ts
    return None


def page_component(name: Any, overall: str, fallback: str) -> VendorComponent:
    """The one component of a format that has no per-component list (Rootly, Instatus
    summary, feeds, the incident.io widget): the page itself, carrying its overall."""
    label = text(name, 200) or fallback
    return VendorComponent("page", label, overall)


def keep_components(components: list[VendorComponent], wanted: tuple[str, ...],
                    words: Words) -> tuple[list[VendorComponent], set[str]]:
    """Only the components named in `wanted` (case-insensitive, in the config's order);
    a name that is not on the page is kept as `unknown` and said in the detail. Returns
    them and the ids kept."""
    if not wanted:
        return components, {c.id for c in components}
    by_name: dict[str, list[VendorComponent]] = {}
    for c in components:
        by_name.setdefault(c.name.casefold(), []).append(c)
    kept: list[VendorComponent] = []
    for name in wanted:
        found = by_name.get(name.casefold())
        if found:
            kept.extend(found)
        else:
            words.notes.append(f"component {short(name)} is not on the page (renamed or removed?)")
            kept.append(VendorComponent(f"missing:{name}", name, "unknown"))
    return kept, {c.id for c in kept}


def finish(source: str, components: list[VendorComponent], incidents: list[VendorIncident],
           seen: list[str], words: Words, past: Iterable[VendorIncident] = ()) -> VendorStatus:
    overall = worst(seen)
    notes = []
    if overall == "unknown" and words.odd:
        notes.append("unrecognised status words: " + ", ".join(dict.fromkeys(words.odd)))
    elif words.odd:
        notes.append("also unrecognised: " + ", ".join(dict.fromkeys(words.odd)))
    notes += list(dict.fromkeys(words.notes))
    if len(components) > MAX_COMPONENTS:
        notes.append(f"kept {MAX_COMPONENTS} of {len(components)} components")
    return VendorStatus(
        source=source,
        overall=overall,
        components=tuple(components[:MAX_COMPONENTS]),
        incidents=tuple(incidents[:MAX_INCIDENTS]),
        detail="; ".join(notes)[:500],
        past=tuple(past)[:MAX_INCIDENTS],
    )
