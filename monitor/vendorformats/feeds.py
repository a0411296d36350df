"""RSS and Atom update feeds (FORMATS.md 5), read with feedparser.

One entry per incident or maintenance, newest first, no overall status and no
component list. An entry's current state is read from, in order:

* Atlassian Statuspage ``history.atom|rss``: the content is the incident's updates,
  newest first, as ``<strong>Label</strong>``; the first label is the current state
  (a leading "THIS IS A SCHEDULED EVENT ..." banner is skipped);
* a ``Status: <word>`` line (status.x.ai, Rootly-hosted feeds);
* the entry's categories (status.x.ai tags each entry ``resolved``).

An incident is open unless its state is Resolved, Completed or Postmortem; a
maintenance is in progress while its state is In progress or Verifying; a Scheduled
one has not started. An entry whose state cannot be read counts as unknown. A feed
gives no severity unless an entry says ``Severity: <word>``; an open incident without
one is counted as degraded_performance, and the detail says so.

Entries are folded by id (status.x.ai repeats one incident once per component). A
title that starts with ``[Name]`` (status.x.ai) names the component; otherwise the
feed is its one component.
"""

from __future__ import annotations

import calendar
import dataclasses
import email.utils
import re
from typing import Any

import feedparser

from monitor.vendorformats.model import (
    CLOSED,
    IMPACT_TO_STATUS,
    VendorComponent,
    VendorIncident,
    VendorStatus,
    Words,
    finish,
    text,
    unknown,
    worst,
)

SOURCE = "feed"

# label -> (lifecycle word, kind): kind "open" | "closed" | "maintenance" | "scheduled"
LABELS = {
    "investigating": ("investigating", "open"),
    "identified": ("identified", "open"),
    "update": ("investigating", "open"),
    "monitoring": ("monitoring", "open"),
    "resolved": ("resolved", "closed"),
    "postmortem": ("postmortem", "closed"),
    "completed": ("completed", "closed"),
    "scheduled": ("scheduled", "scheduled"),
    "in progress": ("in_progress", "maintenance"),
    "verifying": ("verifying", "maintenance"),
}
SEVERITY = {"outage": "major", "major outage": "critical", "major": "major", "partial outage": "major",
            "disruption": "minor", "degraded": "minor", "degraded performance": "minor", "minor": "minor",
            "critical": "critical", "maintenance": "maintenance", "none": "none"}

_STRONG = re.compile(r"<strong>\s*([^<]{1,80}?)\s*</strong>", re.I)
_STATUS_LINE = re.compile(r"\bStatus:\s*([A-Za-z_]+(?: [A-Za-z_]+)?)", re.I)
_SEVERITY_LINE = re.compile(r"\bSeverity:\s*([A-Za-z]+(?: [A-Za-z]+)?)", re.I)
_RESOLVED_AT = re.compile(r"\bResolved:\s*([A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT)")
_COMPONENT = re.compile(r"^\[([^\]]{1,100})\]\s*")
_TAGS = re.compile(r"<[^>]+>")


def looks_like_feed(body: bytes) -> bool:
    head = body.lstrip()[:512].lower()
    if head.startswith(b"<?xml"):
        head = head[head.find(b"?>") + 2:].lstrip()
        while head.startswith(b"<!--") and b"-->" in head:
            head = head[head.find(b"-->") + 3:].lstrip()
    return head.startswith((b"<rss", b"<feed", b"<rdf:rdf"))


def parse_feed(body: bytes, wanted: tuple[str, ...] = ()) -> VendorStatus:
    feed = feedparser.parse(body)
    version = getattr(feed, "version", "")
    if not version:
        return unknown("not an RSS or Atom feed", SOURCE)
    words = Words()
    wanted_keys = {w.casefold() for w in wanted}
    components: dict[str, str] = {}  # component name -> status
    found: dict[str, VendorIncident] = {}  # entry id -> incident (open or past), newest entry first
    unread = 0
    no_severity: set[str] = set()
    title_of_feed = text(feed.feed.get("title"), 200) or "status feed"
    for entry in feed.entries:
        title = text(entry.get("title"), 300)
        match = _COMPONENT.match(title)
        component = match.group(1).strip() if match else title_of_feed
        if wanted and component.casefold() not in wanted_keys:
            continue
        components.setdefault(component, "operational")
        eid = text(entry.get("id") or entry.get("link") or title, 200)
        html = _content(entry)
        state = _state(entry, html)
        if state is None:
            unread += 1
            components[component] = worst((components[component], "unknown"))
            continue
        lifecycle, kind = state
        if kind == "scheduled":
            continue
        incident = found.get(eid)
        if incident is None:  # the first (newest) entry of this id describes it
            started = _epoch(dict.get(entry, "published_parsed")) or _epoch(dict.get(entry, "updated_parsed"))
            name = _COMPONENT.sub("", title) or title
            impact = _severity(html)
            ended = None
            if kind == "closed":
                resolved = _RESOLVED_AT.search(html)
                ended = _rfc822(resolved.group(1)) if resolved else _epoch(dict.get(entry, "updated_parsed"))
                impact = impact or "none"
            elif kind == "maintenance":
                impact = "maintenance"
            elif impact is None:
                impact = "minor"
                no_severity.add(eid)
            incident = VendorIncident(eid, name, lifecycle, impact, started, (), ended)
        if kind != "closed":
            status = IMPACT_TO_STATUS.get(incident.impact, "unknown")
            components[component] = worst((components[component], status))
        if _cid(component) not in incident.components:
            incident = dataclasses.replace(incident, components=(*incident.components, _cid(component)))
        found[eid] = incident
    if not components:
        components[title_of_feed] = "operational"
    if unread:
        words.notes.append(f"the state of {unread} entr{'y' if unread == 1 else 'ies'} could not be read")
    if no_severity:
        words.notes.append("the feed states no severity: its open incidents are shown as "
                           "degraded_performance")
    for name in wanted:
        if name.casefold() not in {c.casefold() for c in components}:
            components[name] = "operational"  # no entry names it: nothing declared
    rows = [VendorComponent(_cid(name), name, status) for name, status in components.items()]
    incidents = [i for i in found.values() if i.ended is None and i.status not in CLOSED]
    past = [i for i in found.values() if i not in incidents]
    return finish(SOURCE, rows, incidents, [c.status for c in rows], words, past)


def _cid(component: str) -> str:
    return f"feed:{component}"[:100]


def _rfc822(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _content(entry: Any) -> str:
    parts = [c.get("value", "") for c in entry.get("content", []) if isinstance(c, dict)]
    parts.append(entry.get("summary", "") or "")
    return "\n".join(p for p in parts if isinstance(p, str))


def _state(entry: Any, html: str) -> tuple[str, str] | None:
    for label in _STRONG.findall(html):
        key = label.strip().lower()
        if key.startswith("this is a scheduled event"):
            continue
        if key in LABELS:
            return LABELS[key]
        break  # Statuspage's first label is the state; anything else is not this layout
    m = _STATUS_LINE.search(_TAGS.sub(" ", html))
    if m is not None:
        words = m.group(1).lower().replace("_", " ").split()
        for key in (" ".join(words[:2]), words[0]):  # "In progress", "RESOLVED"
            if key in LABELS:
                return LABELS[key]
    for tag in entry.get("tags", []) or []:
        key = str(tag.get("term", "")).strip().lower()
        if key in LABELS:
            return LABELS[key]
    return None


def _severity(html: str) -> str | None:
    m = _SEVERITY_LINE.search(_TAGS.sub(" ", html))
    if m is None:
        return None
    words = m.group(1).lower().split()
    return SEVERITY.get(" ".join(words[:2])) or SEVERITY.get(words[0])


def _epoch(parsed: Any) -> float | None:
    try:
        return float(calendar.timegm(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError):
        return None

