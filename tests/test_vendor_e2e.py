"""The vendor's own status page beside ours, through a real daemon: components and
incidents on /metrics and /api/v1/status, and how much earlier we saw the outage."""

from __future__ import annotations

from pathlib import Path

from helpers import start_daemon, wait_for
from targets import serve

from monitor.units import parse_time, rfc3339


def test_vendor_view_and_detection_lead(tmp_path: Path) -> None:
    with serve() as t:
        t.mode["api"] = "503"
        config = {
            "status_page_interval": "200ms",
            "defaults": {"interval": "200ms", "timeout": "200ms", "open_after": 2},
            "services": {"acme": {"status_page": t.url("/api/v2/summary.json"),
                                  "checks": {"api": {"url": t.url("/switch/api")}}}},
        }
        with start_daemon(config, tmp_path) as d:
            ours = wait_for(lambda: d.get("/api/v1/status").json()["services"][0]["open_window"])
            vendor = wait_for(lambda: d.get("/api/v1/status").json()["services"][0]["vendor"]
                              .get("components"))
            assert {c["name"]: c["status"] for c in vendor} == {"API (api.acme.example)": "operational",
                                                                "Website": "operational"}
            assert d.value("aipulse_vendor_incident_open", service="acme", location="local") == 0.0
            # the vendor acknowledges it 90 s after our window started (back-dated by them)
            ours_start = parse_time(ours["start"], 0)
            t.mode["incident_started"] = rfc3339(ours_start + 90)
            wait_for(lambda: d.value("aipulse_vendor_incident_open", service="acme", location="local"))
            lead = wait_for(lambda: d.value("aipulse_detection_lead_seconds", service="acme",
                                            location="local"))
            assert abs(lead - 90) < 0.01
            assert d.value("aipulse_vendor_component_status", service="acme",
                           component="api_api_acme_example", status="major_outage", location="local") == 1.0
            assert d.value("aipulse_vendor_status", service="acme", status="major_outage",
                           location="local") == 1.0
            view = d.get("/api/v1/status").json()["services"][0]["vendor"]
            assert view["status"] == "major_outage" and view["detection_lead_seconds"] == lead
            assert view["incidents"][0]["name"] == "Elevated errors on the API"
            # the page moves and answers HTML: unknown, never operational, never down
            t.mode["statuspage"] = "html"
            wait_for(lambda: d.value("aipulse_vendor_status", service="acme", status="unknown",
                                     location="local") == 1.0)
            assert d.value("aipulse_vendor_incident_open", service="acme", location="local") is None
            assert "HTML" in d.get("/api/v1/status").json()["services"][0]["vendor"]["detail"]
