"""Vendor status-page formats: one parser per format, and `parse()`, which tells them
apart (or takes the format the config names) and recognises a page that moved.

    format        what it reads                                         module
    statuspage    Atlassian Statuspage v2 /api/v2/summary.json, and     atlassian
                  incident.io's Statuspage-compatible shim
    incidentio    incident.io native /proxy/<host>, and its widget API  incidentio
    instatus      Instatus /summary.json and /v2|v3/components.json     instatus
    betterstack   Better Stack /index.json                              betterstack
    rootly        Rootly /api/v1/status.json (indicator + incidents)    atlassian
    gcloud        Google Cloud status.cloud.google.com/incidents.json   gcloud
    feed          RSS / Atom update feeds (feedparser)                  feeds

`parse()` is pure and never raises on vendor input. An unreadable source is unknown,
never operational and never down: a bot challenge, a non-2xx answer, a redirect to
the site root (the page moved; the old URL lands on the vendor's home page), HTML
where a document was expected, malformed JSON, an unrecognised shape, no components.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from monitor.reasons import is_challenge
from monitor.vendorformats import atlassian, betterstack, feeds, gcloud, incidentio, instatus
from monitor.vendorformats.model import VendorStatus, unknown

FORMATS = ("auto", "statuspage", "incidentio", "instatus", "betterstack", "rootly", "gcloud", "feed")


@dataclass(frozen=True, slots=True)
class PageSpec:
    """One configured status page (`status_page:` of a service)."""

    url: str
    format: str = "auto"  # one of FORMATS
    components: tuple[str, ...] = ()  # only these components count (names, case-insensitive)
    max_bytes: int | None = None  # body ceiling; None: the poller's


_REASON_WORDS = {429: "rate limited", 503: "overloaded", 404: "not found", 410: "gone"}


def parse(body: bytes, content_type: str, status: int, headers: Mapping[str, str],
          final_url: str | None = None, spec: PageSpec | None = None) -> VendorStatus:
    """Read one status-page answer. `final_url` is where redirects ended; `spec` the
    page as configured (its URL, format and component filter). Pure; never raises."""
    spec = spec or PageSpec("")
    hdrs = {name.lower(): value for name, value in headers.items()}  # whatever mapping we were given
    if is_challenge(status, hdrs, body):
        return unknown(f"bot challenge (HTTP {status})")
    if not 200 <= status < 300:
        return unknown(f"HTTP {status} ({_REASON_WORDS.get(status, 'not a 2xx answer')})")
    stripped = body.lstrip()
    expected = "a feed" if spec.format == "feed" else "JSON"
    moved = _moved_to_root(spec.url, final_url)
    if moved is not None:
        html = stripped[:1] == b"<" and not feeds.looks_like_feed(body)
        also = f"; HTML where {expected} was expected" if html else ""
        return unknown(f"redirected to the site root ({moved}): the page may have moved{also}")
    if spec.format in ("auto", "feed") and feeds.looks_like_feed(body):
        return feeds.parse_feed(body, spec.components)
    if "html" in content_type.lower() or stripped[:1] == b"<":
        return unknown(f"HTML where {expected} was expected (the page may have moved)")
    if spec.format == "feed":
        return unknown("not an RSS or Atom feed", "feed")
    if not stripped:
        return unknown("empty body")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return unknown("malformed JSON")
    return _dispatch(doc, spec)


def _dispatch(doc: Any, spec: PageSpec) -> VendorStatus:
    fmt, wanted = spec.format, spec.components
    if fmt == "auto":
        fmt = detect(doc)
        if fmt is None:
            return unknown("JSON of an unrecognised shape (not one of the status-page formats aipulse reads: "
                           "Statuspage v2, incident.io, Instatus, Better Stack, Rootly, Google Cloud)")
    is_dict = isinstance(doc, dict)
    if fmt == "statuspage" and is_dict and "components" in doc:
        return atlassian.parse_summary(doc, wanted)
    if fmt == "incidentio" and is_dict and isinstance(doc.get("summary"), dict):
        return incidentio.parse_native(doc["summary"], wanted)
    if fmt == "incidentio" and is_dict and isinstance(doc.get("ongoing_incidents"), list):
        return incidentio.parse_widget(doc)
    if fmt == "instatus" and instatus.is_summary(doc):
        return instatus.parse_summary(doc)
    if fmt == "instatus" and instatus.is_components(doc):
        return instatus.parse_components(doc, wanted)
    if fmt == "betterstack" and betterstack.is_index(doc):
        return betterstack.parse_index(doc, wanted)
    if fmt == "rootly" and is_dict and isinstance(doc.get("status"), dict):
        return atlassian.parse_rollup(doc, "rootly")
    if fmt == "gcloud" and isinstance(doc, list):
        return gcloud.parse_incidents(doc, wanted)
    return unknown(f"not a {fmt} document (the page may have changed format)", fmt)


def detect(doc: Any) -> str | None:
    """The format of a JSON document, or None."""
    if isinstance(doc, list):
        return "gcloud" if gcloud.is_incidents(doc) else None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("summary"), dict):
        return "incidentio"
    if "page_title" in doc and isinstance(doc.get("ongoing_incidents"), list):
        return "incidentio"
    if instatus.is_summary(doc):
        return "instatus"
    if betterstack.is_index(doc):
        return "betterstack"
    if "components" in doc:
        return "instatus" if instatus.is_components(doc) else "statuspage"
    status = doc.get("status")
    if isinstance(status, dict) and "indicator" in status and isinstance(doc.get("incidents"), list):
        return "rootly"  # Statuspage's layout without components: Rootly's status.json
    return None


def _moved_to_root(asked: str, final: str | None) -> str | None:
    """`final` when a request for a path ended at a site root (a provider move: the old
    host redirects everything to its home page, without the path)."""
    if not asked or not final or final == asked:
        return None
    try:
        a, f = urlsplit(asked), urlsplit(final)
    except ValueError:
        return None
    if a.path not in ("", "/") and f.path in ("", "/") and not f.query:
        return final
    return None
