"""The status words, in one place: a check's state, a service's status, a window's
severity, and how each is said to people.

    check state      up, degraded, down, unknown                  (State)
    service status   operational, degraded_performance,           (Statuspage's words,
                     partial_outage, major_outage,                 plus unknown)
                     under_maintenance, unknown
    window severity  degraded_performance (a degraded window),
                     partial_outage / major_outage (a down window: some / every
                     critical check down; a non-critical check's window is partial)

The words are contracts (DESIGN.md: metric labels, API fields, stored rows). Modules
that show them (the page, badges, messages, the demo) take their wording from here.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A check's state."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"


OPERATIONAL = "operational"
DEGRADED_PERFORMANCE = "degraded_performance"
PARTIAL_OUTAGE = "partial_outage"
MAJOR_OUTAGE = "major_outage"
UNDER_MAINTENANCE = "under_maintenance"
UNKNOWN = "unknown"
SERVICE_STATUSES = (OPERATIONAL, DEGRADED_PERFORMANCE, PARTIAL_OUTAGE, MAJOR_OUTAGE, UNDER_MAINTENANCE,
                    UNKNOWN)

# Worse is higher; maintenance and unknown are not on this scale.
RANK = {OPERATIONAL: 0, DEGRADED_PERFORMANCE: 1, PARTIAL_OUTAGE: 2, MAJOR_OUTAGE: 3}

# How each word is said: a title-case label (pages) and a short one (badges, one line).
LABELS = {
    OPERATIONAL: "Operational",
    DEGRADED_PERFORMANCE: "Degraded performance",
    PARTIAL_OUTAGE: "Partial outage",
    MAJOR_OUTAGE: "Major outage",
    UNDER_MAINTENANCE: "Under maintenance",
    UNKNOWN: "Unknown",
}
SHORT = {
    OPERATIONAL: "operational", DEGRADED_PERFORMANCE: "degraded", PARTIAL_OUTAGE: "partial outage",
    MAJOR_OUTAGE: "major outage", UNDER_MAINTENANCE: "maintenance", UNKNOWN: "unknown",
    State.UP: "up", State.DEGRADED: "degraded", State.DOWN: "down",
}


def severity_for(kind: str, critical: bool) -> str:
    """The severity of a check's window of `kind` ("down" | "degraded")."""
    if kind == "degraded":
        return DEGRADED_PERFORMANCE
    return MAJOR_OUTAGE if critical else PARTIAL_OUTAGE


def words(status: str) -> str:
    """'major_outage' -> 'major outage'."""
    return status.replace("_", " ")
