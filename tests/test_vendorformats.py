"""Every status-page format aipulse reads, on real documents (at least two per format,
in different states, where real ones exist) plus clearly labelled synthetic ones where
they do not. Each real document's source is in ../shared/fixtures/real/SOURCES.md and
repeated at the test. Pure parsing: no sockets here (the daemon tests are in
test_vendor_formats_e2e.py)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import feedparser
import pytest
from realdocs import real

from monitor.vendorformats import PageSpec, detect, parse
from monitor.vendorformats.model import VendorComponent

JSON = "application/json"
ATOM = "application/atom+xml"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def read(name: str, spec: PageSpec | None = None, content_type: str = JSON) -> Any:
    return parse(real(name), content_type, 200, {}, spec=spec)


def statuses(vs: Any) -> dict[str, str]:
    return {c.name: c.status for c in vs.components}


# ------------------------------------------------------------ Atlassian Statuspage v2


def test_statuspage_claude_console_degraded_with_an_incident() -> None:
    # SamofPanini/quotabar @61cd1ce4: status.claude.com summary.json, 2026-10-09
    vs = read("claude_2026-10-09_console_degraded.summary.json")
    assert vs.source == "statuspage" and vs.detail == ""
    assert statuses(vs)["Claude Console (platform.claude.com)"] == "degraded_performance"
    assert statuses(vs)["Claude API (api.anthropic.com)"] == "operational"
    (incident,) = vs.incidents
    assert (incident.name, incident.status, incident.impact) == (
        "Elevated errors on platform.claude.com", "monitoring", "major")
    assert incident.components == ("0qbwn08sd68x",)
    # the page's indicator says minor; the open incident's impact is major: the worst counts
    assert vs.overall == "partial_outage"


def test_statuspage_iterable_all_operational() -> None:
    # bosun-monitor/bosun @0a9f9848: cmd/scollector/collectors/iterable_test.go allOKAnswer
    vs = read("iterable_2017-08-22_all_operational.summary.json")
    assert vs.overall == "operational" and vs.incidents == ()
    assert len(vs.components) >= 5 and set(statuses(vs).values()) == {"operational"}


def test_statuspage_cloudamqp_maintenance_in_progress() -> None:
    # amureki/statuscheck @b67715c1: tests/test_services/test_data/cloudamqp_maintenance.json
    vs = read("statuspage-summary_cloudamqp_2020-07_maintenance-in-progress.json")
    assert vs.overall == "under_maintenance"
    assert statuses(vs)["Shared servers"] == "under_maintenance"


def test_statuspage_twilio_degraded_with_two_open_incidents() -> None:
    # amureki/statuscheck @b67715c1: tests/test_services/test_data/twilio_incident.json
    vs = read("statuspage-summary_twilio_2020-07_degraded-incidents-scheduled.json")
    assert vs.overall == "degraded_performance"
    assert len(vs.incidents) == 2 and {i.status for i in vs.incidents} == {"investigating", "monitoring"}
    # six rows say degraded_performance; two of them are group headers (PROGRAMMABLE
    # MESSAGING, CARRIER NETWORK), aggregates of rows that are read anyway
    assert sum(1 for s in statuses(vs).values() if s == "degraded_performance") == 4
    assert "PROGRAMMABLE MESSAGING" not in statuses(vs)


def test_statuspage_components_filter_on_github() -> None:
    # sergeyshevch/statuspage-exporter @eec47cbb: example.json (githubstatus.com, 2022-11-25)
    whole = read("github_2022-11-25_packages_incident.summary.json")
    assert whole.overall == "partial_outage" and statuses(whole)["Packages"] == "partial_outage"
    url = "https://www.githubstatus.com/api/v2/summary.json"
    copilot = read("github_2022-11-25_packages_incident.summary.json", PageSpec(url, components=("copilot",)))
    # only Copilot speaks for the service: the Packages incident names no Copilot component
    assert copilot.components == (VendorComponent("pjmpxvq2cmr2", "Copilot", "operational"),)
    assert copilot.overall == "operational" and copilot.incidents == ()
    assert "1 open incident(s) on the page name none of the components watched" in copilot.detail
    packages = read("github_2022-11-25_packages_incident.summary.json",
                    PageSpec(url, components=("Packages",)))
    assert packages.overall == "partial_outage" and len(packages.incidents) == 1
    gone = read("github_2022-11-25_packages_incident.summary.json", PageSpec(url, components=("Models",)))
    assert gone.overall == "unknown" and "component 'Models' is not on the page" in gone.detail


# ------------------------------------------------------------------------ incident.io


def test_incidentio_shim_openai_operational() -> None:
    # SamofPanini/quotabar @61cd1ce4: status.openai.com /api/v2/summary.json (incident.io shim),
    # 25 components, two named Login, no `incidents` key at all
    vs = read("openai_2026-10-09_incidentio_shim_operational.summary.json")
    assert vs.source == "statuspage" and vs.overall == "operational"
    assert len(vs.components) == 25 and vs.incidents == ()
    assert [c.name for c in vs.components].count("Login") == 2


def test_incidentio_widget_api_documented_example() -> None:
    # neondatabase/website content/docs/introduction/status.md (updatedOn 2025-03-05): the
    # documented incident.io Widget API answer. The only real widget document there is.
    vs = read("neon_incidentio_widget_api_example.json")
    assert vs.source == "incidentio" and vs.overall == "operational"
    assert vs.components == (
        VendorComponent("page", "AWS - Europe (Frankfurt) - eu-central-1", "operational"),)


def test_incidentio_widget_synthetic_open_incident() -> None:
    # SYNTHETIC (no real widget document with an incident exists in the fixtures): the
    # documented layout with one ongoing incident of declared impact.
    doc = json.loads(real("neon_incidentio_widget_api_example.json"))
    doc["ongoing_incidents"] = [{"id": "01J0000000000000000000000A", "name": "Elevated API errors",
                                 "status": "identified", "current_worst_impact": "partial_outage"}]
    vs = parse(json.dumps(doc).encode(), JSON, 200, {})
    assert vs.overall == "partial_outage" and vs.incidents[0].impact == "major"


# ------------------------------------------------------------------------- Instatus


def test_instatus_summary_gcore_up_with_scheduled_maintenances() -> None:
    # DevManfre/isitdown @2883400d: test/fixtures/instatus/operational.json (status.gcore.com)
    vs = read("instatus-summary_gcore_2026-09_up-maintenances-scheduled.json")
    assert vs.source == "instatus" and vs.overall == "operational"  # not started yet: no effect
    assert vs.components == (VendorComponent("page", "Gcore", "operational"),)


def test_instatus_summary_demo_two_open_incidents() -> None:
    # DevManfre/isitdown @6180d47c: test/fixtures/instatus/incident.json (instatus.instatus.com)
    vs = read("instatus-summary_instatus-demo_2025-10_hasissues-two-open.json")
    assert vs.overall == "partial_outage"  # PARTIALOUTAGE is the worse of the two
    assert [(i.name, i.impact) for i in vs.incidents] == [("partial", "major"), ("degraded", "minor")]
    assert vs.incidents[0].started == ts("2023-12-13T14:58:14.917+00:00")


def test_instatus_summary_documented_example_with_js_dates() -> None:
    # instatus.com/help/api/public-data, "Example response": dates as JavaScript Date strings
    vs = read("instatus-summary_instatus-docs-example_hasissues-incident-maintenance.json")
    assert vs.overall == "major_outage"
    (incident,) = vs.incidents
    assert incident.impact == "critical" and incident.started == ts("2022-06-11T18:55:50+00:00")


def test_instatus_components_gcore_skips_groups() -> None:
    # DevManfre/isitdown @2883400d: test/fixtures/instatus/components.json (/v3/components.json)
    vs = read("instatus-components-v3_gcore_2026-09_all-operational.json")
    assert vs.source == "instatus" and vs.overall == "operational"
    # "Gcore Systems", "CDN" and "Global services" are parents of other rows
    assert sorted(c.name for c in vs.components) == ["API", "API Documentation", "Advanced Analytics"]


def test_instatus_components_synthetic_major_outage() -> None:
    # SYNTHETIC: the Gcore components document with one row changed to MAJOROUTAGE
    doc = json.loads(real("instatus-components-v3_gcore_2026-09_all-operational.json"))
    doc["components"][0]["status"] = "MAJOROUTAGE"
    vs = parse(json.dumps(doc).encode(), JSON, 200, {})
    assert vs.overall == "major_outage" and statuses(vs)["API"] == "major_outage"


# ---------------------------------------------------------------------- Better Stack


BETTERSTACK = "betterstack-index_betterstack_2026-09-07_operational-resolved-reports-trimmed.json"


def test_betterstack_operational_with_resolved_reports() -> None:
    # DevManfre/isitdown @2883400d: test/fixtures/betterstack/operational.json
    # (status.betterstack.com /index.json, trimmed by its recorder). The only real Better
    # Stack document in the fixtures.
    vs = read(BETTERSTACK)
    assert vs.source == "betterstack" and vs.overall == "operational"
    assert statuses(vs) == {"Better Stack": "operational", "Uptime": "operational",
                            "Uptime backend processing health": "unknown"}  # not_monitored
    assert "1 resource(s) not monitored" in vs.detail
    assert vs.incidents == ()
    assert [(p.name, p.ended) for p in vs.past][:1] == [
        ("Delayed data processing in the Europe region", ts("2026-09-06T19:13:00+00:00"))]


def test_betterstack_synthetic_downtime_with_an_open_report() -> None:
    # SYNTHETIC: the real document with one resource down and its first report reopened
    doc = json.loads(real(BETTERSTACK))
    doc["data"]["attributes"]["aggregate_state"] = "downtime"
    for row in doc["included"]:
        if row["type"] == "status_page_resource" and row["id"] == "4188755":
            row["attributes"]["status"] = "downtime"
        if row["type"] == "status_report" and row["id"] == "1050825":
            row["attributes"]["aggregate_state"] = "downtime"
    vs = parse(json.dumps(doc).encode(), JSON, 200, {})
    assert vs.overall == "major_outage" and statuses(vs)["Uptime"] == "major_outage"
    assert [(i.id, i.impact) for i in vs.incidents] == [("1050825", "major")]


# ---------------------------------------------------------------------------- Rootly


def test_rootly_documented_operational() -> None:
    # docs.rootly.com/configuration/status-page-public-api.md: GET /api/v1/status.json response.
    # The only real Rootly document (no live capture exists).
    vs = read("rootly-status_rootly-docs-example_operational.json",
              PageSpec("https://status.example.com/api/v1/status.json", "rootly"))
    assert vs.source == "rootly" and vs.overall == "operational"
    assert vs.components == (VendorComponent("page", "Acme Status", "operational"),)
    assert detect(json.loads(real("rootly-status_rootly-docs-example_operational.json"))) == "rootly"


@pytest.mark.parametrize(("indicator", "overall"), [("maintenance", "under_maintenance"),
                                                    ("major", "partial_outage"), ("purple", "unknown")])
def test_rootly_synthetic_indicators(indicator: str, overall: str) -> None:
    # SYNTHETIC: the documented layout with another indicator (Rootly's words: none, minor,
    # major, maintenance) and one open incident that declares no impact
    doc = json.loads(real("rootly-status_rootly-docs-example_operational.json"))
    doc["status"]["indicator"] = indicator
    doc["incidents"] = [{"id": "inc-1", "name": "API latency", "status": "identified", "impact": "none",
                         "started_at": "2026-03-19T11:40:00Z"}]
    vs = parse(json.dumps(doc).encode(), JSON, 200, {},
               spec=PageSpec("https://x/api/v1/status.json", "rootly"))
    assert vs.overall == overall
    assert vs.incidents[0].started == ts("2026-03-19T11:40:00+00:00")


# ---------------------------------------------------------------------- Google Cloud


def test_gcloud_all_ended_is_operational_and_lists_the_past() -> None:
    # moritalous/cloud-status-history @8ec2dc54: app/public/incidents.json (157 incidents, all ended)
    vs = read("gcp-incidents_google-cloud_2022-07-03_157-incidents-all-ended.json")
    assert vs.source == "gcloud" and vs.overall == "operational" and vs.incidents == ()
    assert len(vs.components) == 60 and set(statuses(vs).values()) == {"operational"}
    newest = vs.past[0]
    assert (newest.name, newest.ended) == ("[Google BigQuery] Lower throughput from the Read API",
                                          ts("2022-07-01T19:25:45+00:00"))


def test_gcloud_two_ongoing_in_europe_west2() -> None:
    # igarridot/GoogleCloudStatusExporter @b844e441: test/fixtures/low_severity_incident.json
    vs = read("gcp-incidents_google-cloud_2022-07-19_two-ongoing-europe-west2.json")
    assert vs.overall == "degraded_performance"  # SERVICE_DISRUPTION; the other is SERVICE_INFORMATION
    assert sorted(i.impact for i in vs.incidents) == ["minor", "none"]
    assert statuses(vs)["Google Compute Engine"] == "degraded_performance"


def test_gcloud_product_filter() -> None:
    # igarridot/GoogleCloudStatusExporter @9431c86f: test/fixtures/multizone.json (Dataproc, ongoing)
    url = "https://status.cloud.google.com/incidents.json"
    dataproc = read("gcp-incidents_google-cloud_2021-07-30_one-ongoing-multiregion.json",
                    PageSpec(url, "gcloud", ("Google Cloud Dataproc",)))
    assert dataproc.overall == "degraded_performance" and len(dataproc.incidents) == 1
    gemini = read("gcp-incidents_google-cloud_2021-07-30_one-ongoing-multiregion.json",
                  PageSpec(url, "gcloud", ("Vertex Gemini API",)))
    # no incident names it: for this feed that is "no incident declared"
    assert gemini.overall == "operational" and gemini.incidents == ()
    assert statuses(gemini) == {"Vertex Gemini API": "operational"}


# ---------------------------------------------------------------------- RSS / Atom


def test_atom_github_all_resolved() -> None:
    # mrshu/github-statuses @3879be50: github-status-history.atom (fetched 2022-06-14)
    vs = read("atom-statuspage_github_2022-06-14_all-resolved.atom", content_type=ATOM)
    assert vs.source == "feed" and vs.overall == "operational" and vs.incidents == ()
    # 25 entries, each one's latest label Resolved (incidents) or Completed (maintenance)
    assert len(vs.past) == 25 and {p.status for p in vs.past} == {"resolved", "completed"}


def test_atom_github_investigating() -> None:
    # mrshu/github-statuses @7f94a364: github-status-history.atom (fetched 2022-11-25)
    vs = read("atom-statuspage_github_2022-11-25_investigating.atom", content_type=ATOM)
    (incident,) = vs.incidents
    assert (incident.name, incident.status) == ("Incident with Copilot", "investigating")
    assert vs.overall == "degraded_performance"  # the feed states no severity, and says so
    assert "states no severity" in vs.detail


def test_atom_github_maintenance_scheduled_and_in_progress() -> None:
    # mrshu/github-statuses @5e7b0b64 (2022-10-04, a future maintenance on top) and
    # @05807259 (2023-02-09, 'Planned maintenance on GitHub Package Registry' in progress)
    scheduled = read("atom-statuspage_github_2022-10-04_maintenance-scheduled.atom", content_type=ATOM)
    assert scheduled.overall == "operational" and scheduled.incidents == ()
    running = read("atom-statuspage_github_2023-02-09_maintenance-in-progress.atom", content_type=ATOM)
    assert running.overall == "under_maintenance"
    assert [(i.name, i.status, i.impact) for i in running.incidents] == [
        ("Planned maintenance on GitHub Package Registry", "in_progress", "maintenance")]


def test_rss_parse_history_resolved_and_postmortem() -> None:
    # gabrielrinaldi/Status-iOS @2ab8fed5: history.rss (status.parse.com, 2014-01-09)
    vs = read("rss-statuspage_parse_2014-01-09_history-resolved-postmortem.rss",
              content_type="application/rss+xml")
    assert vs.overall == "operational" and vs.incidents == ()
    assert {"resolved", "postmortem"} <= {p.status for p in vs.past}


XAI_LIKE = b"""<?xml version="1.0" encoding="UTF-8" ?>
<rss version="2.0"><channel><title>Example System Status</title><link>https://status.example</link>
<description>Incident history.</description>
<item><title>[Global (api.example)] Elevated error rate</title><guid isPermaLink="false">INC1</guid>
<description><![CDATA[<h3>Status: INVESTIGATING</h3><p>Severity: outage</p>]]></description>
<pubDate>Tue, 22 Sep 2026 01:02:42 GMT</pubDate><category>outage</category></item>
<item><title>[Chat app] Elevated error rate</title><guid isPermaLink="false">INC1</guid>
<description><![CDATA[<h3>Status: INVESTIGATING</h3><p>Severity: outage</p>]]></description>
<pubDate>Tue, 22 Sep 2026 01:02:42 GMT</pubDate></item>
<item><title>[Voice] Voice degraded</title><guid isPermaLink="false">INC0</guid>
<description><![CDATA[<h3>Status: RESOLVED</h3><p>Severity: disruption</p>
<p>Resolved: Tue, 06 Oct 2026 20:03:29 GMT</p>]]></description>
<pubDate>Tue, 06 Oct 2026 20:03:18 GMT</pubDate><category>resolved</category></item>
</channel></rss>"""


def test_feed_synthetic_status_lines_and_component_prefixes() -> None:
    # SYNTHETIC, in the layout of status.x.ai/feed.xml (a `Status:` line, a `Severity:` line,
    # one item per component with a shared guid); no real capture is in the fixtures.
    vs = parse(XAI_LIKE, "application/rss+xml", 200, {})
    assert statuses(vs) == {"Global (api.example)": "partial_outage", "Chat app": "partial_outage",
                            "Voice": "operational"}
    (incident,) = vs.incidents  # folded by guid, on both components
    assert (incident.status, incident.impact) == ("investigating", "major")
    assert incident.components == ("feed:Global (api.example)", "feed:Chat app")
    assert vs.past[0].ended == ts("2026-10-06T20:03:29+00:00")
    only = parse(XAI_LIKE, "application/rss+xml", 200, {},
                 spec=PageSpec("https://status.example/feed.xml", "feed", ("Voice",)))
    assert only.overall == "operational" and only.incidents == ()


def test_feed_checked_with_feedparser_itself() -> None:
    """The feed fixtures are what feedparser calls Atom 1.0 / RSS 2.0 (no bozo)."""
    atom = feedparser.parse(real("atom-statuspage_github_2022-11-25_investigating.atom"))
    assert atom.version == "atom10" and not atom.bozo


# ------------------------------------------------------- moved pages, wrong formats


def test_redirect_to_the_site_root_is_a_moved_page() -> None:
    body = b"<!doctype html><html><body>Welcome to JetBrains AI</body></html>"
    vs = parse(body, "text/html", 200, {}, final_url="https://status.jetbrains.ai/",
               spec=PageSpec("https://status.jetbrains.ai/api/v2/summary.json"))
    assert vs.overall == "unknown"
    assert vs.detail == ("redirected to the site root (https://status.jetbrains.ai/): the page may have "
                         "moved; HTML where JSON was expected")
    # even a root that answers JSON: it is not the page that was asked for
    vs = parse(b'{"components": []}', JSON, 200, {}, final_url="https://status.example/",
               spec=PageSpec("https://status.example/api/v2/summary.json"))
    assert vs.overall == "unknown" and vs.detail.startswith("redirected to the site root")
    # a redirect to another path is not a move to the root
    vs = parse(real("iterable_2017-08-22_all_operational.summary.json"), JSON, 200, {},
               final_url="https://status.example/api/v2/summary.json?x=1",
               spec=PageSpec("https://status.example/summary.json"))
    assert vs.overall == "operational"


@pytest.mark.parametrize(("name", "fmt", "detail"), [
    ("iterable_2017-08-22_all_operational.summary.json", "instatus", "not a instatus document"),
    ("iterable_2017-08-22_all_operational.summary.json", "feed", "not an RSS or Atom feed"),
    ("atom-statuspage_github_2022-06-14_all-resolved.atom", "statuspage", "HTML where JSON was expected"),
    ("gcp-incidents_google-cloud_2021-07-30_one-ongoing-multiregion.json", "betterstack",
     "not a betterstack document"),
])
def test_a_named_format_that_does_not_fit_is_unknown(name: str, fmt: str, detail: str) -> None:
    vs = read(name, PageSpec("https://status.example/x", fmt))
    assert vs.overall == "unknown" and detail in vs.detail


def test_other_formats_are_not_mistaken_for_a_known_one() -> None:
    # Slack (amureki/statuscheck @e8a80f80) and Status.io (amureki/statuscheck @b67715c1)
    # documents: formats aipulse does not read are unknown, never operational
    for name in ("slack-status-current_slack_2020-07-30_two-active-incidents.json",
                 "statusio-public_docker_2020-07-16_partial-disruption.json"):
        vs = read(name)
        assert vs.overall == "unknown" and "unrecognised shape" in vs.detail
