"""One real daemon watching one service per status-page format: for each format, the
page it serves changes state and `aipulse_vendor_component_status` follows. Pages are
real documents from ../shared/fixtures/real/statuspage/ (source at each entry) or,
where the second state has no real document, that document with the change made here
(marked SYNTHETIC)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RunningDaemon, start_daemon, wait_for
from pages import Pages, serve_pages
from realdocs import real

JSON = "application/json"
ATOM = "application/atom+xml"


def edited(name: str, change: Callable[[Any], None]) -> bytes:
    doc = json.loads(real(name))
    change(doc)
    return json.dumps(doc).encode()


def _claude_recovered(doc: Any) -> None:  # SYNTHETIC: the Console back to operational
    for c in doc["components"]:
        c["status"] = "operational"
    doc["incidents"] = []
    doc["status"]["indicator"] = "none"


def _instatus_down(doc: Any) -> None:  # SYNTHETIC: the API row in major outage
    doc["components"][0]["status"] = "MAJOROUTAGE"


def _betterstack_down(doc: Any) -> None:  # SYNTHETIC: the Uptime resource down
    doc["data"]["attributes"]["aggregate_state"] = "downtime"
    for row in doc["included"]:
        if row["type"] == "status_page_resource" and row["id"] == "4188755":
            row["attributes"]["status"] = "downtime"


def _rootly_major(doc: Any) -> None:  # SYNTHETIC: Rootly's "major" indicator
    doc["status"]["indicator"] = "major"


INCIDENTIO_DOWN = {"summary": {  # SYNTHETIC: no real native incident.io capture exists
    "id": "p", "name": "Example",
    "components": [{"id": "c1", "name": "API"}, {"id": "c2", "name": "Chat"}],
    "affected_components": [{"component_id": "c1", "status": "full_outage"}],
    "ongoing_incidents": [], "in_progress_maintenances": [],
}}
INCIDENTIO_UP = {"summary": {**INCIDENTIO_DOWN["summary"], "affected_components": []}}

INSTATUS = "instatus-components-v3_gcore_2026-09_all-operational.json"
BETTERSTACK = "betterstack-index_betterstack_2026-09-07_operational-resolved-reports-trimmed.json"

# format -> (status_page config, component label, (doc, type, status) before, (doc, type, status) after)
CASES: dict[str, tuple[dict[str, Any], str, tuple[bytes, str, str], tuple[bytes, str, str]]] = {
    # SamofPanini/quotabar @61cd1ce4: status.claude.com summary.json 2026-10-09 (Console degraded)
    "statuspage": ({}, "claude_console_platform_claude_com",
                   (real("claude_2026-10-09_console_degraded.summary.json"), JSON, "degraded_performance"),
                   (edited("claude_2026-10-09_console_degraded.summary.json", _claude_recovered), JSON,
                    "operational")),
    "incidentio": ({}, "api", (json.dumps(INCIDENTIO_DOWN).encode(), JSON, "major_outage"),
                   (json.dumps(INCIDENTIO_UP).encode(), JSON, "operational")),
    # DevManfre/isitdown @2883400d: test/fixtures/instatus/components.json (status.gcore.com)
    "instatus": ({}, "api", (real(INSTATUS), JSON, "operational"),
                 (edited(INSTATUS, _instatus_down), JSON, "major_outage")),
    # DevManfre/isitdown @2883400d: test/fixtures/betterstack/operational.json
    "betterstack": ({}, "uptime", (real(BETTERSTACK), JSON, "operational"),
                    (edited(BETTERSTACK, _betterstack_down), JSON, "major_outage")),
    # docs.rootly.com/configuration/status-page-public-api.md (GET /api/v1/status.json)
    "rootly": ({"format": "rootly"}, "acme_status",
               (real("rootly-status_rootly-docs-example_operational.json"), JSON, "operational"),
               (edited("rootly-status_rootly-docs-example_operational.json", _rootly_major), JSON,
                "partial_outage")),
    # igarridot/GoogleCloudStatusExporter @9431c86f test/fixtures/multizone.json (Dataproc ongoing),
    # then moritalous/cloud-status-history @8ec2dc54 app/public/incidents.json (all ended, 1.3 MB)
    "gcloud": ({"format": "gcloud", "components": ["Google Cloud Dataproc"]}, "google_cloud_dataproc",
               (real("gcp-incidents_google-cloud_2021-07-30_one-ongoing-multiregion.json"), JSON,
                "degraded_performance"),
               (real("gcp-incidents_google-cloud_2022-07-03_157-incidents-all-ended.json"), JSON,
                "operational")),
    # mrshu/github-statuses @3879be50 (2022-06-14, all resolved), then @7f94a364 (2022-11-25, investigating)
    "feed": ({"format": "feed"}, "github_status_incident_history",
             (real("atom-statuspage_github_2022-06-14_all-resolved.atom"), ATOM, "operational"),
             (real("atom-statuspage_github_2022-11-25_investigating.atom"), ATOM, "degraded_performance")),
}


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningDaemon, Pages]]:
    with serve_pages() as pages:
        services: dict[str, Any] = {}
        for fmt, (spec, _, before, _) in CASES.items():
            pages.docs[f"/{fmt}"] = before[:2]
            services[fmt] = {"status_page": {"url": pages.url(f"/{fmt}"), **spec},
                             "checks": {"web": {"url": pages.url("/ok")}}}
        pages.docs["/moving/api/v2/summary.json"] = (real("iterable_2017-08-22_all_operational.summary.json"),
                                                     JSON)
        services["moving"] = {"status_page": pages.url("/moving/api/v2/summary.json"),
                              "checks": {"web": {"url": pages.url("/ok")}}}
        pages.docs["/empty"] = (b'{"page": {"id": "p"}, "components": [], "incidents": []}', JSON)
        services["empty"] = {"status_page": pages.url("/empty"), "checks": {"web": {"url": pages.url("/ok")}}}
        config = {"status_page_interval": "200ms", "defaults": {"interval": "1s", "timeout": "500ms"},
                  "services": services}
        with start_daemon(config, tmp_path_factory.mktemp("formats")) as d:
            yield d, pages


@pytest.mark.parametrize("fmt", list(CASES))
def test_a_served_page_moves_the_vendor_component_status(watched: tuple[RunningDaemon, Pages],
                                                         fmt: str) -> None:
    d, pages = watched
    _, label, before, after = CASES[fmt]

    def status_is(status: str) -> bool:
        return d.value("aipulse_vendor_component_status", service=fmt, component=label, status=status) == 1.0

    wait_for(lambda: status_is(before[2]), timeout=10)
    assert d.value("aipulse_vendor_component_status", service=fmt, component=label, status=after[2]) == 0.0
    pages.docs[f"/{fmt}"] = after[:2]
    wait_for(lambda: status_is(after[2]), timeout=10)
    assert d.value("aipulse_vendor_component_status", service=fmt, component=label, status=before[2]) == 0.0
    vendor = next(s for s in d.get("/api/v1/status").json()["services"] if s["id"] == fmt)["vendor"]
    assert vendor["source"] == fmt


def test_a_page_that_moved_to_the_site_root_is_unknown(watched: tuple[RunningDaemon, Pages]) -> None:
    d, pages = watched

    def vendor() -> dict[str, Any]:
        return next(s for s in d.get("/api/v1/status").json()["services"] if s["id"] == "moving")["vendor"]

    wait_for(lambda: vendor().get("status") == "operational", timeout=10)
    pages.moved.add("/moving/api/v2/summary.json")  # 301 to "/", which answers 200 HTML
    wait_for(lambda: vendor().get("status") == "unknown", timeout=10)
    assert vendor()["detail"].startswith("redirected to the site root (http://127.0.0.1:")
    assert d.value("aipulse_vendor_status", service="moving", status="unknown") == 1.0
    assert d.value("aipulse_vendor_status", service="moving", status="operational") == 0.0
    assert d.value("aipulse_vendor_incident_open", service="moving") is None


def test_a_page_read_as_statuspage_without_components_claims_no_incidents(
        watched: tuple[RunningDaemon, Pages]) -> None:
    """Statuspage's layout with no components cannot be read: unknown, and no claim
    that no incident is open (aipulse_vendor_incident_open is absent, not 0)."""
    d, _ = watched
    wait_for(lambda: d.value("aipulse_vendor_status", service="empty", status="unknown") == 1.0, timeout=10)
    assert d.value("aipulse_vendor_incident_open", service="empty") is None
    vendor = next(s for s in d.get("/api/v1/status").json()["services"] if s["id"] == "empty")["vendor"]
    assert (vendor["source"], vendor["detail"]) == ("statuspage", "no components")


def test_the_status_page_shows_each_format(watched: tuple[RunningDaemon, Pages], tmp_path: Path) -> None:
    d, _ = watched
    html = d.get("/").text
    for fmt in CASES:
        assert f'id="service-{fmt}"' in html
