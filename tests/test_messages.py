"""Notification text (pure): what a person reads when a service goes down and comes back."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from monitor.grouping import Digest
from monitor.messages import ServiceInfo, plain, render
from monitor.outage import OutageWindow
from monitor.statuspage import VendorIncident, VendorStatus

T0 = dt.datetime(2025, 1, 27, 13, 33, tzinfo=dt.UTC).timestamp()
API = OutageWindow("deepseek", "api", "down", T0, reason="overloaded", severity="major_outage")
WEB = OutageWindow("deepseek", "website", "down", T0 + 30, reason="http_5xx", severity="major_outage")
INFO = ServiceInfo("DeepSeek", status="major_outage", location="fra1",
                   link="https://status.example.org/services/deepseek")


def test_opening_names_service_surfaces_since_reasons_vendor_and_link() -> None:
    vendor = VendorStatus("statuspage", "degraded_performance", incidents=(
        VendorIncident("x1", "Elevated API errors", "investigating", "major", T0 + 600, ()),))
    m = render(Digest("deepseek", opened=(API, WEB)), replace(INFO, vendor=vendor))
    assert m.title == "DeepSeek: api, website down"
    assert m.level == "failure"
    assert m.body == (
        "**Down** since 2025-01-27 13:33:00 UTC:\n"
        "\n"
        "- api: overloaded, since 2025-01-27 13:33:00 UTC\n"
        "- website: http_5xx, since 2025-01-27 13:33:30 UTC\n"
        "\n"
        "DeepSeek as aipulse sees it from fra1: major outage.\n"
        "DeepSeek's own status page says degraded performance; incident “Elevated API errors” "
        "(investigating).\n"
        "\n"
        "https://status.example.org/services/deepseek\n"
    )


def test_closing_says_how_long_it_lasted() -> None:
    back = replace(API, end=T0 + 72 * 60)
    m = render(Digest("deepseek", closed=(back,)), replace(INFO, status="operational"))
    assert m.title == "DeepSeek: api back up after 1h 12m"
    assert m.level == "success"
    assert "- api: down for 1h 12m (2025-01-27 13:33:00 UTC to 2025-01-27 14:45:00 UTC, overloaded)" in m.body
    assert "DeepSeek as aipulse sees it from fra1: operational." in m.body


def test_a_mass_outage_is_counted_not_listed() -> None:
    windows = tuple(replace(WEB, check=f"c{i:04d}") for i in range(1000))
    m = render(Digest("deepseek", opened=windows), INFO)
    assert m.title == "DeepSeek: 1000 checks down"
    assert m.body.count("\n- c") == 10
    assert "- … and 990 more (http_5xx: 990)" in m.body
    assert m.windows == 1000


def test_a_check_now_down_again_is_told_as_down_not_recovered() -> None:
    slow = OutageWindow("deepseek", "api", "degraded", T0 - 60, end=T0, reason="ok")
    m = render(Digest("deepseek", opened=(API,), closed=(slow,)), INFO)
    assert m.title == "DeepSeek: api down"
    assert "Back up" not in m.body


def test_degraded_and_removed() -> None:
    slow = OutageWindow("deepseek", "api", "degraded", T0, reason="ok", severity="degraded_performance")
    m = render(Digest("deepseek", opened=(slow,)), INFO)
    assert (m.title, m.level) == ("DeepSeek: api degraded", "warning")
    gone = render(Digest("deepseek", removed=(replace(API, end=T0 + 60),)), INFO)
    assert gone.title == "DeepSeek: api no longer monitored"
    assert "removed from the config" in gone.body


def test_vendor_unknown_and_no_status_page() -> None:
    m = render(Digest("deepseek", opened=(API,)), replace(INFO, vendor=VendorStatus("unknown", "unknown")))
    assert "DeepSeek's own status page could not be read." in m.body
    m = render(Digest("deepseek", opened=(API,)), replace(INFO, link=None, status=None))
    assert "status page" not in m.body and "https://" not in m.body
    assert "Seen from fra1." in m.body


def test_vendor_text_cannot_inject_markup_or_links() -> None:
    hostile = "<img src=x onerror=alert(1)> [click](https://evil.example) `code`\nnext line"
    vendor = VendorStatus("statuspage", "major_outage", incidents=(
        VendorIncident("x", hostile, "identified", "critical", None, ()),))
    m = render(Digest("deepseek", opened=(API,)), replace(INFO, vendor=vendor))
    line = next(li for li in m.body.splitlines() if "own status page" in li)
    for bad in "<>[]`":
        assert bad not in line
    assert "next line" in line  # one line
    assert plain("x" * 500, 20) == "x" * 19 + "…"
