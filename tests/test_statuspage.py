"""Vendor status pages: parsing (pure), label safety, detection lead, and the poller
against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from targets import in_thread, listen

from monitor.statuspage import (
    COMPONENT_STATUSES,
    MAX_COMPONENTS,
    StatusPagePoller,
    VendorComponent,
    VendorIncident,
    VendorStatus,
    component_label,
    component_labels,
    detection_lead,
    fetch,
    new_client,
    parse,
)

T = TypeVar("T")
JSON = "application/json; charset=utf-8"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --------------------------------------------------------------------------- fixtures
# Shapes follow real pages (ai-services.md 1.2 and 1.4); ids and texts are made up
# in the vendors' style.

STATUSPAGE_SUMMARY: dict[str, Any] = {
    "page": {
        "id": "tymt9n04zgry",
        "name": "Anthropic",
        "url": "https://status.claude.com",
        "time_zone": "Etc/UTC",
        "updated_at": "2025-03-02T10:15:01.123Z",
    },
    "components": [
        {
            "id": "rwppv331jlwc", "name": "claude.ai", "status": "partial_outage",
            "created_at": "2023-07-11T17:58:22.193Z", "updated_at": "2025-03-02T10:02:03.551Z",
            "position": 1, "description": None, "showcase": True, "start_date": "2023-07-11",
            "group_id": "b2p4ws0kbsmm", "page_id": "tymt9n04zgry", "group": False,
            "only_show_if_degraded": False,
        },
        {
            "id": "0qbwn08sd68x", "name": "platform.claude.com (formerly console.anthropic.com)",
            "status": "operational", "created_at": "2023-07-11T17:58:58.620Z",
            "updated_at": "2025-03-02T09:40:11.310Z", "position": 2, "description": None,
            "showcase": True, "start_date": "2023-07-11", "group_id": None,
            "page_id": "tymt9n04zgry", "group": False, "only_show_if_degraded": False,
        },
        {
            "id": "k8w3r06qmzrp", "name": "Claude API (api.anthropic.com)",
            "status": "degraded_performance", "created_at": "2023-07-11T17:59:29.880Z",
            "updated_at": "2025-03-02T10:02:03.600Z", "position": 3, "description": None,
            "showcase": True, "start_date": "2023-07-11", "group_id": None,
            "page_id": "tymt9n04zgry", "group": False, "only_show_if_degraded": False,
        },
        {
            "id": "yjjy0rzxlqm4", "name": "Claude Code", "status": "under_maintenance",
            "created_at": "2025-02-24T18:01:07.000Z", "updated_at": "2025-03-02T08:00:00.000Z",
            "position": 4, "description": "Claude Code CLI", "showcase": False,
            "start_date": "2025-02-24", "group_id": None, "page_id": "tymt9n04zgry",
            "group": False, "only_show_if_degraded": False,
        },
        {
            # A group header row: an aggregate, and deliberately worse than any real
            # component so a parser that counts it would say major_outage.
            "id": "b2p4ws0kbsmm", "name": "Claude apps", "status": "major_outage",
            "created_at": "2023-07-11T17:58:00.000Z", "updated_at": "2025-03-02T10:02:03.551Z",
            "position": 5, "description": None, "showcase": False, "start_date": None,
            "group_id": None, "page_id": "tymt9n04zgry", "group": True,
            "only_show_if_degraded": False, "components": ["rwppv331jlwc"],
        },
    ],
    "incidents": [
        {
            "id": "x1w0t6kq2r7y", "name": "Elevated errors on claude.ai", "status": "identified",
            "created_at": "2025-03-02T10:02:03.455Z", "updated_at": "2025-03-02T10:14:52.001Z",
            "monitoring_at": None, "resolved_at": None, "impact": "major",
            "shortlink": "https://stspg.io/x1w0t6kq2r7y",
            "started_at": "2025-03-02T01:55:00.000-08:00",  # back-dated, with an offset
            "page_id": "tymt9n04zgry",
            "incident_updates": [
                {
                    "id": "hc3xf2bt0m4n", "status": "identified",
                    "body": "The issue has been identified and a fix is being implemented.",
                    "incident_id": "x1w0t6kq2r7y", "created_at": "2025-03-02T10:14:52.001Z",
                    "updated_at": "2025-03-02T10:14:52.001Z", "display_at": "2025-03-02T10:14:52.001Z",
                    "affected_components": [
                        {"code": "rwppv331jlwc", "name": "claude.ai", "old_status": "degraded_performance",
                         "new_status": "partial_outage"},
                    ],
                    "deliver_notifications": True, "custom_tweet": None, "tweet_id": None,
                },
            ],
            "components": [
                {"id": "rwppv331jlwc", "name": "claude.ai", "status": "partial_outage",
                 "group_id": "b2p4ws0kbsmm", "group": False},
                {"id": "k8w3r06qmzrp", "name": "Claude API (api.anthropic.com)",
                 "status": "degraded_performance", "group_id": None, "group": False},
            ],
        },
        {
            # summary.json lists unresolved incidents only, but a stale cache can still
            # carry a resolved one: it must not count.
            "id": "old0resolved", "name": "Slow console", "status": "resolved",
            "created_at": "2025-03-01T08:00:00.000Z", "updated_at": "2025-03-01T09:00:00.000Z",
            "monitoring_at": "2025-03-01T08:30:00.000Z", "resolved_at": "2025-03-01T09:00:00.000Z",
            "impact": "critical", "shortlink": "https://stspg.io/old0resolved",
            "started_at": "2025-03-01T07:50:00.000Z", "page_id": "tymt9n04zgry",
            "incident_updates": [], "components": [],
        },
    ],
    "scheduled_maintenances": [
        {
            "id": "m7q2k9c4d1zs", "name": "Claude Code backend upgrade", "status": "in_progress",
            "created_at": "2025-03-01T12:00:00.000Z", "updated_at": "2025-03-02T08:00:00.000Z",
            "monitoring_at": None, "resolved_at": None, "impact": "maintenance",
            "shortlink": "https://stspg.io/m7q2k9c4d1zs", "started_at": "2025-03-02T08:00:00.000Z",
            "page_id": "tymt9n04zgry", "incident_updates": [],
            "scheduled_for": "2025-03-02T08:00:00.000Z", "scheduled_until": "2025-03-02T12:00:00.000Z",
            "components": [{"id": "yjjy0rzxlqm4", "name": "Claude Code", "status": "under_maintenance"}],
        },
    ],
    "status": {"indicator": "major", "description": "Partial System Outage"},
}

OPENAI_APIS = "01JMXBRMFE6N2NNT7DG6XZQ6PW"
OPENAI_CHATGPT = "01JMXBRMFE6N2NNT7DG6XZQ6PX"
OPENAI_SORA = "01JMXBRMFE6N2NNT7DG6XZQ6PY"
OPENAI_CODEX = "01JMXBRMFE6N2NNT7DG6XZQ6PZ"

INCIDENTIO_SUMMARY: dict[str, Any] = {
    "summary": {
        "id": "01JMXBRMFE00000000000000PG",
        "name": "OpenAI",
        "subpath": "openai",
        "support_url": "https://help.openai.com",
        "public_url": "https://status.openai.com",
        "components": [
            {"id": OPENAI_APIS, "name": "APIs", "status_page_id": "01JMXBRMFE00000000000000PG"},
            {"id": OPENAI_CHATGPT, "name": "ChatGPT", "status_page_id": "01JMXBRMFE00000000000000PG"},
            {"id": OPENAI_SORA, "name": "Sora", "status_page_id": "01JMXBRMFE00000000000000PG"},
            {"id": OPENAI_CODEX, "name": "Codex", "status_page_id": "01JMXBRMFE00000000000000PG"},
        ],
        "affected_components": [
            {"component_id": OPENAI_CHATGPT, "status": "full_outage"},
            {"component_id": OPENAI_APIS, "status": "degraded_performance"},
        ],
        "ongoing_incidents": [
            {
                "id": "01JXH4T9F7ZC0R4NQ9X3T2A1BC",
                "name": "Elevated error rates in ChatGPT",
                "status": "fixing",
                "published_at": "2025-06-10T07:01:12.000Z",
                "current_worst_impact": "full_outage",
                "component_impacts": [
                    {"component_id": OPENAI_CHATGPT, "status": "full_outage",
                     "start_at": "2025-06-10T06:36:00.000Z", "end_at": None},
                    {"component_id": OPENAI_APIS, "status": "degraded_performance",
                     "start_at": "2025-06-10T06:40:00.000Z", "end_at": None},
                ],
                "updates": [
                    {
                        "id": "01JXH4T9F7ZC0R4NQ9X3T2A1BD",
                        "published_at": "2025-06-10T07:01:12.000Z",
                        "message_string": "We are seeing elevated error rates in ChatGPT.",
                        "message": {"type": "doc", "content": [{"type": "paragraph", "content": [
                            {"type": "text", "text": "We are seeing elevated error rates in ChatGPT."}]}]},
                        "to_status": "investigating",
                    },
                ],
            },
        ],
        "in_progress_maintenances": [],
        "scheduled_maintenances": [],
        "structure": {
            "items": [
                {"group": {"id": "01JMXBRMFE00000000000000G1", "name": "APIs", "hidden": False,
                           "components": [{"component_id": OPENAI_APIS, "name": "APIs", "hidden": False}]}},
                {"component": {"component_id": OPENAI_CHATGPT, "name": "ChatGPT", "hidden": False}},
                {"component": {"component_id": OPENAI_SORA, "name": "Sora", "hidden": False}},
                {"component": {"component_id": OPENAI_CODEX, "name": "Codex", "hidden": False}},
            ],
        },
    },
}

HTML_SHELL = b"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>DeepSeek Service Status</title><script src="/_next/static/chunks/main.js"></script>
</head><body><div id="__next"></div></body></html>"""

CLOUDFLARE_CHALLENGE = b"""<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow"></head><body><div class="main-wrapper" role="main">
<noscript><div class="h2">Enable JavaScript and cookies to continue</div></noscript></div>
<script>(function(){window._cf_chl_opt={cvId: '3',cZone: "status.mistral.ai",cType: 'managed'};
var a = document.createElement('script');a.src = '/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1';
document.getElementsByTagName('head')[0].appendChild(a);}());</script></body></html>"""


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def statuspage(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(STATUSPAGE_SUMMARY)
    doc.update(changes)
    return doc


def component(cid: str, status: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "name": name or cid, "status": status, "group": False, **extra}


# --------------------------------------------------------------------- Statuspage v2


def test_statuspage_summary_components_incidents_and_overall() -> None:
    vs = parse(body_of(STATUSPAGE_SUMMARY), JSON, 200, {})
    assert vs.source == "statuspage"
    assert vs.detail == ""
    # The group header row is skipped; everything else is kept in page order.
    assert vs.components == (
        VendorComponent("rwppv331jlwc", "claude.ai", "partial_outage"),
        VendorComponent("0qbwn08sd68x", "platform.claude.com (formerly console.anthropic.com)",
                        "operational"),
        VendorComponent("k8w3r06qmzrp", "Claude API (api.anthropic.com)", "degraded_performance"),
        VendorComponent("yjjy0rzxlqm4", "Claude Code", "under_maintenance"),
    )
    # Worst real component / open incident: partial_outage (the major_outage group row
    # and the critical but resolved incident do not count).
    assert vs.overall == "partial_outage"
    assert vs.incidents == (
        VendorIncident(
            id="x1w0t6kq2r7y", name="Elevated errors on claude.ai", status="identified", impact="major",
            started=ts("2025-03-02T09:55:00+00:00"), components=("rwppv331jlwc", "k8w3r06qmzrp"),
        ),
    )


@pytest.mark.parametrize(
    ("statuses", "impacts", "indicator", "overall"),
    [
        (["operational", "operational"], [], "none", "operational"),
        (["operational", "under_maintenance"], [], "maintenance", "under_maintenance"),
        # never solely from the indicator: the page says minor, a component is in major outage
        (["major_outage", "operational"], [], "minor", "major_outage"),
        # an open incident's impact counts even when every component still says operational
        (["operational", "operational"], ["critical"], "none", "major_outage"),
        (["operational", "operational"], ["minor"], "none", "degraded_performance"),
        (["operational", "degraded_performance"], ["major"], "minor", "partial_outage"),
        (["operational", "operational"], ["none"], "none", "operational"),
        # the indicator counts too (a component may be missing from the list)
        (["operational", "operational"], [], "critical", "major_outage"),
        (["degraded_performance", "under_maintenance"], [], None, "degraded_performance"),
    ],
)
def test_statuspage_overall_is_the_worst_of_components_incidents_and_indicator(
    statuses: list[str], impacts: list[str], indicator: str | None, overall: str
) -> None:
    doc = {
        "page": {"id": "p", "name": "P"},
        "components": [component(f"c{i}", s) for i, s in enumerate(statuses)],
        "incidents": [
            {"id": f"i{i}", "name": "x", "status": "investigating", "impact": imp, "resolved_at": None,
             "started_at": "2025-01-27T10:00:00Z", "components": []}
            for i, imp in enumerate(impacts)
        ],
    }
    if indicator is not None:
        doc["status"] = {"indicator": indicator, "description": "..."}
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.overall == overall, vs


def test_unknown_component_word_is_unknown_never_operational() -> None:
    doc = {"components": [component("a", "operational"), component("b", "degraded", name="Chat")],
           "incidents": [], "status": {"indicator": "none"}}
    vs = parse(body_of(doc), JSON, 200, {})
    assert [c.status for c in vs.components] == ["operational", "unknown"]
    assert vs.overall == "unknown"
    assert "'degraded'" in vs.detail and "Chat" in vs.detail


def test_unknown_word_does_not_hide_a_declared_outage() -> None:
    doc = {"components": [component("a", "major_outage"), component("b", 42)], "incidents": []}
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.overall == "major_outage"
    assert [c.status for c in vs.components] == ["major_outage", "unknown"]
    assert "unrecognised" in vs.detail


def test_unknown_incident_impact_and_indicator_words() -> None:
    doc = {"components": [component("a", "operational")],
           "incidents": [{"id": "i", "name": "n", "status": "investigating", "impact": "catastrophic",
                          "components": []}]}
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.overall == "unknown" and vs.incidents[0].impact == "unknown"
    assert "catastrophic" in vs.detail
    doc = {"components": [component("a", "operational")], "status": {"indicator": "purple"}}
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.overall == "unknown" and "purple" in vs.detail


def test_incident_started_from_rfc3339_with_fallbacks() -> None:
    def started(**fields: Any) -> float | None:
        doc = {"components": [component("a", "operational")],
               "incidents": [{"id": "i", "name": "n", "status": "monitoring", "impact": "minor", **fields}]}
        return parse(body_of(doc), JSON, 200, {}).incidents[0].started

    assert started(started_at="2025-01-27T10:00:00.000+08:00") == ts("2025-01-27T02:00:00+00:00")
    assert started(started_at="2025-01-27T02:00:00Z") == ts("2025-01-27T02:00:00+00:00")
    assert started(started_at=None, created_at="2025-01-27T03:00:00.5Z") == ts("2025-01-27T03:00:00.5+00:00")
    assert started(started_at="2025-01-27T02:00:00", created_at="2025-01-27T03:00:00Z") == ts(
        "2025-01-27T03:00:00+00:00")  # a naive time is not RFC 3339: fall back
    assert started(started_at="yesterday") is None
    assert started(started_at=1737943200) is None
    assert started() is None


def test_component_cap_keeps_overall_from_all_components() -> None:
    rows = [component(f"c{i}", "operational", name=f"Model {i}") for i in range(150)]
    rows[140]["status"] = "major_outage"
    vs = parse(body_of({"components": rows, "incidents": []}), JSON, 200, {})
    assert len(vs.components) == MAX_COMPONENTS
    assert vs.overall == "major_outage"
    assert "100 of 150" in vs.detail


def test_vendor_text_is_bounded_and_cleaned() -> None:
    rows = [component("a", "operational", name="API\x1b[31m\n" + "x" * 5000)]
    vs = parse(body_of({"components": rows}), JSON, 200, {})
    name = vs.components[0].name
    assert len(name) <= 200 and "\x1b" not in name and "\n" not in name


# --------------------------------------------------------------- incident.io native


def test_incidentio_native_feed() -> None:
    vs = parse(body_of(INCIDENTIO_SUMMARY), "application/json", 200, {})
    assert vs.source == "incidentio"
    assert vs.detail == ""
    assert vs.components == (
        VendorComponent(OPENAI_APIS, "APIs", "degraded_performance"),
        VendorComponent(OPENAI_CHATGPT, "ChatGPT", "major_outage"),  # full_outage
        VendorComponent(OPENAI_SORA, "Sora", "operational"),  # absent from affected_components
        VendorComponent(OPENAI_CODEX, "Codex", "operational"),
    )
    assert vs.overall == "major_outage"
    (incident,) = vs.incidents
    assert incident.status == "identified"  # "fixing"
    assert incident.impact == "critical"  # full_outage in Statuspage impact words
    assert incident.started == ts("2025-06-10T07:01:12+00:00")  # published_at
    assert incident.components == (OPENAI_CHATGPT, OPENAI_APIS)


def test_incidentio_all_operational_and_maintenance() -> None:
    doc = copy.deepcopy(INCIDENTIO_SUMMARY)
    doc["summary"]["affected_components"] = []
    doc["summary"]["ongoing_incidents"] = []
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.overall == "operational" and vs.incidents == ()
    assert {c.status for c in vs.components} == {"operational"}

    doc["summary"]["in_progress_maintenances"] = [
        {"id": "m", "name": "Sora upgrade", "status": "maintenance_in_progress",
         "component_impacts": [{"component_id": OPENAI_SORA, "status": "under_maintenance"}]}]
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.overall == "under_maintenance"
    assert [c.status for c in vs.components if c.id == OPENAI_SORA] == ["under_maintenance"]


def test_incidentio_unknown_words_are_unknown() -> None:
    doc = copy.deepcopy(INCIDENTIO_SUMMARY)
    doc["summary"]["affected_components"] = [{"component_id": OPENAI_SORA, "status": "wobbly"}]
    doc["summary"]["ongoing_incidents"] = []
    vs = parse(body_of(doc), JSON, 200, {})
    assert [c.status for c in vs.components if c.id == OPENAI_SORA] == ["unknown"]
    assert vs.overall == "unknown" and "wobbly" in vs.detail


def test_incidentio_incident_impact_from_component_impacts_and_start_fallback() -> None:
    doc = copy.deepcopy(INCIDENTIO_SUMMARY)
    (inc,) = doc["summary"]["ongoing_incidents"]
    del inc["current_worst_impact"], inc["published_at"]
    inc["component_impacts"][0]["end_at"] = "2025-06-10T06:50:00.000Z"  # that impact is over
    vs = parse(body_of(doc), JSON, 200, {})
    assert vs.incidents[0].impact == "minor"  # only the degraded APIs impact is live
    assert vs.incidents[0].started == ts("2025-06-10T06:36:00+00:00")  # earliest impact start
    inc["status"] = "resolved"
    assert parse(body_of(doc), JSON, 200, {}).incidents == ()


# ------------------------------------------------- unreadable sources are unknown


@pytest.mark.parametrize(
    ("body", "content_type", "status", "headers", "detail"),
    [
        (HTML_SHELL, "text/html; charset=utf-8", 200, {}, "HTML where JSON was expected"),
        (HTML_SHELL, "application/json", 200, {}, "HTML where JSON was expected"),  # lying header
        (body_of({"page": {}, "components": [], "incidents": []}), JSON, 200, {}, "no components"),
        (body_of({"components": [{"id": "g", "name": "G", "status": "operational", "group": True}]}),
         JSON, 200, {}, "no components"),
        (body_of({"summary": {"components": [], "affected_components": []}}), JSON, 200, {}, "no components"),
        (CLOUDFLARE_CHALLENGE, "text/html; charset=UTF-8", 403,
         {"CF-Mitigated": "challenge", "Server": "cloudflare"}, "bot challenge"),
        (CLOUDFLARE_CHALLENGE, "text/html", 403, {}, "bot challenge"),  # markers, no header
        (b'{"components": [{"id": "a", "status": "operational"', JSON, 200, {}, "malformed JSON"),
        (b"\xff\xfe\x00garbage", JSON, 200, {}, "malformed JSON"),
        (b"[" * 100_000, JSON, 200, {}, "malformed JSON"),
        (b"", JSON, 200, {}, "empty body"),
        (b"[]", JSON, 200, {}, "unrecognised shape"),
        (b'{"page": {"id": "x"}, "status": {"indicator": "none"}}', JSON, 200, {}, "unrecognised shape"),
        (body_of({"components": "all good"}), JSON, 200, {}, "not a list"),
        (body_of(STATUSPAGE_SUMMARY), JSON, 500, {}, "HTTP 500"),
        (body_of(STATUSPAGE_SUMMARY), JSON, 404, {}, "HTTP 404"),
        (b'{"error": "slow down"}', JSON, 429, {}, "HTTP 429 (rate limited)"),
    ],
)
def test_unreadable_source_is_unknown_never_operational_never_down(
    body: bytes, content_type: str, status: int, headers: dict[str, str], detail: str
) -> None:
    vs = parse(body, content_type, status, headers)
    assert vs.overall == "unknown"
    assert vs.components == () and vs.incidents == ()
    assert detail in vs.detail


# ------------------------------------------------------------------------ labels


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("claude.ai", "claude_ai"),
        ("Claude API (api.anthropic.com)", "claude_api_api_anthropic_com"),
        ("platform.claude.com (formerly console.anthropic.com)",
         "platform_claude_com_formerly_console_anthropic_com"),
        ("  Générateur d'images  ", "generateur_d_images"),
        ('API"}\n# HELP evil', "api_help_evil"),
    ],
)
def test_component_label_examples(name: str, label: str) -> None:
    assert component_label(name) == label


def test_component_label_bounds() -> None:
    long_a, long_b = "model " * 30 + "alpha", "model " * 30 + "beta"
    assert len(component_label(long_a)) == 64 and len(component_label(long_b)) == 64
    assert component_label(long_a) != component_label(long_b)
    cjk = component_label("接口服务")
    assert cjk.startswith("c_") and cjk != component_label("网页对话")
    assert component_label("").startswith("c_")


@given(st.text(max_size=300))
def test_component_label_is_always_a_bounded_slug(name: str) -> None:
    label = component_label(name)
    assert 1 <= len(label) <= 64
    assert all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in label)
    assert label == component_label(name)


def test_component_labels_are_unique_per_page() -> None:
    names = ["Claude API", "claude-api", "CLAUDE API!", "x" * 100, "x" * 100]
    comps = [VendorComponent(str(n), name, "operational") for n, name in enumerate(names, 1)]
    labels = component_labels(comps)
    assert labels["1"] == "claude_api" and labels["2"] == "claude_api_2" and labels["3"] == "claude_api_3"
    assert len(set(labels.values())) == 5
    assert all(len(v) <= 64 for v in labels.values())


def test_component_statuses_cover_every_parse_result() -> None:
    vs = parse(body_of(STATUSPAGE_SUMMARY), JSON, 200, {})
    assert {c.status for c in vs.components} <= set(COMPONENT_STATUSES)


# ---------------------------------------------------------------- detection lead


def _with_incidents(*starts: float | None, impact: str = "major") -> VendorStatus:
    incidents = tuple(VendorIncident(f"i{n}", "x", "investigating", impact, s, ())
                      for n, s in enumerate(starts))
    return VendorStatus("statuspage", "partial_outage", (), incidents, "")


def test_detection_lead_signs() -> None:
    ours = 1_000_000.0
    assert detection_lead(ours, _with_incidents(ours + 900)) == 900  # we saw it 15 min first
    assert detection_lead(ours, _with_incidents(ours - 120)) == -120  # the vendor was first
    assert detection_lead(ours, _with_incidents(ours + 900, ours + 60, None)) == 60  # earliest counts
    assert detection_lead(None, _with_incidents(ours)) is None
    assert detection_lead(ours, _with_incidents()) is None
    assert detection_lead(ours, _with_incidents(None)) is None
    assert detection_lead(ours, None) is None
    assert detection_lead(ours, _with_incidents(ours + 5, impact="maintenance")) is None


def test_detection_lead_from_a_parsed_page() -> None:
    vs = parse(body_of(STATUSPAGE_SUMMARY), JSON, 200, {})
    our_start = ts("2025-03-02T09:40:00+00:00")
    assert detection_lead(our_start, vs) == 15 * 60


# ------------------------------------------------------------ poller, real server


@dataclass
class Page:
    """The local status page: tests flip `mode`."""

    mode: str = "statuspage"
    port: int = 0
    hits: int = 0
    hung: list[float] = field(default_factory=list)

    def url(self, path: str = "/api/v2/summary.json") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _app(page: Page) -> web.Application:
    async def summary(request: web.Request) -> web.StreamResponse:
        page.hits += 1
        mode = page.mode
        if mode == "statuspage":
            return web.json_response(STATUSPAGE_SUMMARY)
        if mode == "gzip":
            return web.Response(body=gzip.compress(body_of(INCIDENTIO_SUMMARY)),
                                headers={"Content-Type": JSON, "Content-Encoding": "gzip"})
        if mode == "html":
            return web.Response(body=HTML_SHELL, content_type="text/html")
        if mode == "challenge":
            return web.Response(status=403, body=CLOUDFLARE_CHALLENGE, content_type="text/html",
                                headers={"cf-mitigated": "challenge"})
        if mode == "moved":  # a provider move: 301 to the site root, without the path
            raise web.HTTPMovedPermanently("/")
        if mode == "hang":
            page.hung.append(time.monotonic())
            await asyncio.sleep(60)
        if mode == "endless":
            response = web.StreamResponse(headers={"Content-Type": JSON})
            await response.prepare(request)
            await response.write(b'{"components": [')
            chunk = b'{"id": "a", "name": "A", "status": "operational"},' * 1000
            while True:
                await response.write(chunk)
        raise web.HTTPInternalServerError()

    async def root(request: web.Request) -> web.Response:
        return web.Response(body=HTML_SHELL, content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/v2/summary.json", summary)
    app.router.add_get("/proxy/status.example.com", summary)
    app.router.add_get("/", root)
    return app


@contextmanager
def serve_page() -> Iterator[Page]:
    """The page app on 127.0.0.1 in its own thread and event loop."""
    page = Page()
    runner = web.AppRunner(_app(page), access_log=None, shutdown_timeout=0.1)

    async def start() -> None:
        await runner.setup()
        page.port = await listen(runner)

    with in_thread(start, runner.cleanup, "status-page"):
        yield page


@pytest.fixture
def page() -> Iterator[Page]:
    with serve_page() as p:
        yield p


async def until(fn: Callable[[], T], timeout: float = 3.0) -> T:
    """Await until `fn()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.01)
    return value


def polled_after(poller: StatusPagePoller, service: str, since: float,
                 check: Callable[[VendorStatus], bool]) -> Callable[[], VendorStatus | None]:
    def probe() -> VendorStatus | None:
        entry = poller.latest.get(service)
        if entry is not None and entry[0] > since and check(entry[1]):
            return entry[1]
        return None
    return probe


async def test_poller_follows_the_page_through_json_html_hang_and_endless_body(
    page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aipulse.statuspage")
    updates: list[tuple[str, VendorStatus]] = []
    client = new_client()
    poller = StatusPagePoller({"anthropic": page.url()}, client, interval=0.1, timeout=0.3,
                              max_bytes=256 * 1024, on_update=lambda s, v: updates.append((s, v)))
    poller.start()
    try:
        # 1. JSON: read and parsed; polled again every interval
        vs = await until(lambda: poller.latest.get("anthropic"))
        assert vs[1].overall == "partial_outage" and vs[1].source == "statuspage"
        assert len(vs[1].components) == 4 and len(vs[1].incidents) == 1
        first = vs[0]
        await until(lambda: poller.latest["anthropic"][0] > first)
        assert poller.latest["anthropic"][1] == vs[1]

        # 2. HTML with 200: unknown, not operational
        t = time.time()
        page.mode = "html"
        vs = await until(polled_after(poller, "anthropic", t, lambda v: "HTML" in v.detail))
        assert vs.overall == "unknown" and vs.components == ()

        # 3. hangs past the timeout: unknown after ~timeout, and the loop keeps running
        t = time.time()
        page.mode = "hang"
        await until(lambda: page.hung)
        began = time.monotonic()
        lateness = 0.0
        while time.monotonic() - began < 0.25:  # inside the hung poll
            t0 = time.monotonic()
            await asyncio.sleep(0.02)
            lateness = max(lateness, time.monotonic() - t0 - 0.02)
        assert lateness < 0.15  # a blocked loop would be late by most of the 0.3 s timeout
        vs = await until(polled_after(poller, "anthropic", t, lambda v: "timeout" in v.detail))
        assert time.monotonic() - page.hung[0] < 0.3 + 0.5
        assert vs.overall == "unknown"
        assert vs.detail == "fetch failed: timeout: no answer within 0.3s (waiting for response headers)"

        # 4. an endless body: stopped at max_bytes
        t = time.time()
        page.mode = "endless"
        vs = await until(polled_after(poller, "anthropic", t, lambda v: "body_too_large" in v.detail))
        assert vs.overall == "unknown"
        assert vs.detail == "fetch failed: body_too_large: body larger than 262144 bytes"

        # 5. back to JSON: recovers
        t = time.time()
        page.mode = "statuspage"
        vs = await until(polled_after(poller, "anthropic", t, lambda v: v.overall != "unknown"))
        assert vs.overall == "partial_outage"
    finally:
        await poller.stop()
    assert all(s == "anthropic" for s, _ in updates) and len(updates) >= 6
    changes = [r.getMessage() for r in caplog.records if r.name == "aipulse.statuspage"]
    assert changes == [
        "vendor status of anthropic: none -> partial_outage",
        "vendor status of anthropic: partial_outage -> unknown "
        "(HTML where JSON was expected (the page may have moved))",
        "vendor status of anthropic: unknown -> partial_outage",
    ]


async def test_fetch_challenge_redirect_gzip_and_connect_refused(page: Page) -> None:
    client = new_client()
    page.mode = "challenge"
    vs = await fetch(client, page.url(), timeout=2)
    assert vs.overall == "unknown" and vs.detail.startswith("bot challenge")

    page.mode = "moved"  # 301 to "/", which is HTML: "moved", not healthy
    vs = await fetch(client, page.url(), timeout=2)
    assert vs.overall == "unknown" and "HTML where JSON was expected" in vs.detail

    page.mode = "gzip"
    vs = await fetch(client, page.url("/proxy/status.example.com"), timeout=2)
    assert vs.source == "incidentio" and vs.overall == "major_outage"

    page.mode = "boom"
    vs = await fetch(client, page.url(), timeout=2)
    assert vs.overall == "unknown" and vs.detail.startswith("HTTP 500")

    with serve_page() as gone:
        closed_url = gone.url()
    vs = await fetch(client, closed_url, timeout=2)
    assert vs.overall == "unknown" and vs.detail.startswith("fetch failed: connect:")


async def test_poller_polls_at_once_updates_pages_and_stops_mid_poll(page: Page) -> None:
    def broken_callback(service: str, status: VendorStatus) -> None:
        raise RuntimeError("consumer bug")

    client = new_client()
    # A long interval: the first poll still happens right away.
    poller = StatusPagePoller({"a": page.url()}, client, interval=60, timeout=5,
                              on_update=broken_callback)
    poller.start()
    try:
        await until(lambda: poller.latest.get("a"))
        assert poller.latest["a"][1].overall == "partial_outage"  # the callback's error was contained

        await poller.update({"a": page.url(), "b": page.url("/proxy/status.example.com")})
        await until(lambda: poller.latest.get("b"))
        await poller.update({"b": page.url("/proxy/status.example.com")})
        assert "a" not in poller.latest and set(poller.pages) == {"b"}

        page.mode = "hang"
        await poller.update({"b": page.url("/proxy/status.example.com"), "c": page.url()})
        await until(lambda: page.hung)
    finally:
        t0 = time.monotonic()
        await poller.stop()
        assert time.monotonic() - t0 < 1.0  # cancelled mid-poll, not waited out
    await poller.stop()  # idempotent


def test_poller_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        StatusPagePoller({}, client=None, interval=0)  # type: ignore[arg-type]
