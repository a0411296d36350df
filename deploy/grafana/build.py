#!/usr/bin/env python3
"""Generate the Grafana dashboard deploy/grafana/dashboards/aipulse.json.

    python3 deploy/grafana/build.py          # write the JSON
    python3 deploy/grafana/build.py --check  # exit 1 if the committed JSON is stale

Both this script and its output are committed; tests/test_prometheus.py checks that
they agree and runs every query of the dashboard against a real Prometheus.

Every query keeps `location` (each aipulse instance probes from one place) and every
panel uses the `${datasource}` variable. Statuses and states are gauges with one series
per value (1 = current); the status panels turn the current one into a number that
value mappings name and colour.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "aipulse.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
CHECK = 'service=~"$service", check=~"$check", location=~"$location"'
SERVICE = 'service=~"$service", location=~"$location"'
LOCATION = 'location=~"$location"'

# Numbers for the Statuspage vocabulary and check states, with their names and colours.
STATUS_CODES = [
    ("unknown", -1, "text"),
    ("operational", 0, "green"),
    ("under_maintenance", 1, "blue"),
    ("degraded_performance", 2, "yellow"),
    ("partial_outage", 3, "orange"),
    ("major_outage", 4, "red"),
]
STATE_CODES = [("unknown", -1, "text"), ("up", 0, "green"), ("degraded", 1, "yellow"), ("down", 2, "red")]


def coded(metric: str, selector: str, label: str, codes: list[tuple[str, int, str]], by: str) -> str:
    """One number per series group: the code of the value whose gauge is 1."""
    arms = "\n  or ".join(f'({metric}{{{selector}, {label}="{name}"}} == 1) * {code}'
                          for name, code, _ in codes)
    return f"max by ({by}) (\n    {arms}\n)"


def mappings(codes: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    return [{"type": "value", "options": {
        str(code): {"text": name.replace("_", " "), "color": color, "index": i}
        for i, (name, code, color) in enumerate(codes)}}]


def target(ref: str, expr: str, legend: str = "", instant: bool = False,
           table: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr, "range": not instant,
                         "instant": instant, "legendFormat": legend or "__auto"}
    if table:
        t["format"] = "table"
    return t


def panel(kind: str, title: str, grid: tuple[int, int, int, int], targets: list[dict[str, Any]],
          description: str, unit: str = "", **extra: Any) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    p: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []}, "options": {},
    }
    for key, value in extra.items():
        if key == "defaults":
            defaults.update(value)
        elif key == "overrides":
            p["fieldConfig"]["overrides"] = value
        else:
            p[key] = value
    return p


def timeseries(title: str, grid: tuple[int, int, int, int], targets: list[dict[str, Any]],
               description: str, unit: str, stack: bool = False, bars: bool = False,
               **extra: Any) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
                              "fillOpacity": 60 if (stack or bars) else 10, "showPoints": "never",
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    extra.setdefault("defaults", {})["custom"] = custom
    return panel("timeseries", title, grid, targets, description, unit,
                 options={"legend": {"displayMode": "table", "placement": "right",
                                     "calcs": ["mean", "max"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}}, **extra)


def state_timeline(title: str, grid: tuple[int, int, int, int], targets: list[dict[str, Any]],
                   description: str, codes: list[tuple[str, int, str]]) -> dict[str, Any]:
    return panel("state-timeline", title, grid, targets, description,
                 defaults={"mappings": mappings(codes), "color": {"mode": "thresholds"},
                           "thresholds": {"mode": "absolute", "steps": [{"color": "text", "value": None}]},
                           "custom": {"fillOpacity": 80, "lineWidth": 0}},
                 options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                          "alignValue": "left", "legend": {"showLegend": False},
                          "tooltip": {"mode": "single"}})


def quantiles(metric: str, selector: str, by: str, qs: tuple[float, ...],
              legend: str) -> list[dict[str, Any]]:
    return [target(chr(ord("A") + i),
                   f"histogram_quantile({q}, sum by (le, {by}) "
                   f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
                   f"p{round(q * 100)} {legend}")
            for i, q in enumerate(qs)]


def panels() -> list[dict[str, Any]]:
    service_status = coded("aipulse_service_status", SERVICE, "status", STATUS_CODES, "service, location")
    vendor_status = coded("aipulse_vendor_status", SERVICE, "status", STATUS_CODES, "service, location")
    check_state = coded("aipulse_check_state", CHECK, "state", STATE_CODES, "service, check, location")
    down_since = (f"max by (service, check, location) (aipulse_outage_last_start_timestamp_seconds{{{CHECK}}}"
                  f"\n  and on (service, check, location) aipulse_outage_active{{{CHECK}}} == 1)")
    per_check = "{{service}} {{check}} ({{location}})"
    return [
        panel("stat", "Service status", (0, 0, 12, 6),
              [target("A", service_status, "{{service}} ({{location}})", instant=True)],
              "Each service as aipulse sees it from each location, in the Statuspage vocabulary.",
              defaults={"mappings": mappings(STATUS_CODES),
                        "color": {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": [{"color": "text", "value": None}]}},
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                       "justifyMode": "center", "orientation": "auto"}),
        panel("table", "Open outages", (12, 0, 12, 6),
              [target("A", f"{down_since} * 1000", instant=True, table=True),
               target("B", f"time() - {down_since}", instant=True, table=True)],
              "Checks in an outage window now: since the first failed probe, and for how long.",
              transformations=[
                  {"id": "merge", "options": {}},
                  {"id": "organize", "options": {
                      "excludeByName": {"Time": True},
                      "renameByName": {"Value #A": "down since", "Value #B": "for"},
                      "indexByName": {"service": 0, "check": 1, "location": 2,
                                      "Value #A": 3, "Value #B": 4}}},
              ],
              overrides=[
                  {"matcher": {"id": "byName", "options": "down since"},
                   "properties": [{"id": "unit", "value": "dateTimeAsIso"}]},
                  {"matcher": {"id": "byName", "options": "for"},
                   "properties": [{"id": "unit", "value": "s"}]},
              ],
              options={"showHeader": True, "footer": {"show": False}}),
        state_timeline("Outage timeline", (0, 6, 24, 8),
                       [target("A", check_state, per_check)],
                       "State of each check: up, degraded (slower than max_latency), down (an outage "
                       "window is open) or unknown (bot wall, monitoring gap, monitor offline).",
                       STATE_CODES),
        panel("table", "Availability", (0, 14, 12, 8),
              [target(ref, f'max by (service, check, location) (aipulse_availability_ratio{{{CHECK}, '
                           f'window="{window}"}})', instant=True, table=True)
               for ref, window in (("A", "24h"), ("B", "7d"), ("C", "30d"))],
              "Time up / time observed per check; unknown time and maintenance are left out, "
              "degraded time counts as up.",
              unit="percentunit",
              defaults={"decimals": 3, "color": {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": [
                            {"color": "red", "value": None}, {"color": "orange", "value": 0.99},
                            {"color": "green", "value": 0.999}]},
                        "custom": {"cellOptions": {"type": "color-text"}}},
              transformations=[
                  {"id": "merge", "options": {}},
                  {"id": "organize", "options": {
                      "excludeByName": {"Time": True},
                      "renameByName": {"Value #A": "24h", "Value #B": "7d", "Value #C": "30d"},
                      "indexByName": {"service": 0, "check": 1, "location": 2,
                                      "Value #A": 3, "Value #B": 4, "Value #C": 5}}},
              ],
              options={"showHeader": True, "footer": {"show": False},
                       "sortBy": [{"displayName": "24h", "desc": False}]}),
        state_timeline("Our view vs the vendor's", (12, 14, 12, 8),
                       [target("A", service_status, "{{service}} ({{location}}): aipulse"),
                        target("B", vendor_status, "{{service}} ({{location}}): vendor page")],
                       "Our own status of each service next to what the vendor's status page "
                       "said at the same time (services with a status_page only).",
                       STATUS_CODES),
        timeseries("Latency by phase ($location)", (0, 22, 24, 8),
                   [target("A", "avg by (phase) (avg_over_time(aipulse_probe_phase_seconds"
                                f"{{{CHECK}}}[$__rate_interval]))", "{{phase}}")],
                   "Where a probe's time goes (resolve, connect, tls, processing, transfer), "
                   "averaged over the selected checks, one panel per location.",
                   "s", stack=True, repeat="location", repeatDirection="h", maxPerRow=3),
        timeseries("Failures by reason", (0, 30, 12, 8),
                   [target("A", "sum by (service, check, location, reason) (increase(aipulse_probes_total"
                                f'{{{CHECK}, reason!="ok"}}[$__rate_interval]))',
                           "{{service}} {{check}} {{reason}} ({{location}})")],
                   "Failed probes by reason (blocked: a bot wall, neither up nor down).",
                   "short", bars=True, stack=True),
        timeseries("Time to first token", (12, 30, 12, 8),
                   quantiles("aipulse_probe_ttft_seconds", CHECK, "service, check, location",
                             (0.5, 0.95), per_check),
                   "Stream checks: from sending the request to the first content token.", "s"),
        timeseries("Probe duration", (0, 38, 12, 8),
                   quantiles("aipulse_probe_duration_seconds", CHECK, "service, check, location",
                             (0.5, 0.95), per_check),
                   "Whole probes, DNS to the last body byte.", "s"),
        timeseries("Scheduler lag", (12, 38, 12, 8),
                   [*quantiles("aipulse_scheduler_lag_seconds", LOCATION, "instance, location",
                               (0.5, 0.99), "lag {{instance}} ({{location}})"),
                    target("C", "sum by (instance, location) (increase("
                                f"aipulse_scheduler_missed_intervals_total{{{LOCATION}}}[$__rate_interval]))",
                           "missed intervals {{instance}} ({{location}})")],
                   "How late probes start after their due time, and intervals skipped because a "
                   "probe overran. Should stay near zero.",
                   "s",
                   overrides=[{"matcher": {"id": "byFrameRefID", "options": "C"},
                               "properties": [{"id": "unit", "value": "short"},
                                              {"id": "custom.axisPlacement", "value": "right"},
                                              {"id": "custom.drawStyle", "value": "bars"}]}]),
    ]


def variable(name: str, label: str, metric: str) -> dict[str, Any]:
    query = f"label_values({metric}, {name})"
    return {"type": "query", "name": name, "label": label, "datasource": DS,
            "query": query, "definition": query,
            "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
            "hide": 0, "regex": ""}


def dashboard() -> dict[str, Any]:
    ps = panels()
    for i, p in enumerate(ps, start=1):
        p["id"] = i
    return {
        "uid": "aipulse",
        "title": "aipulse: AI service availability",
        "description": "Independent availability of AI services, from aipulse probes.",
        "tags": ["aipulse", "availability"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
             "current": {}, "options": [], "hide": 0, "refresh": 1, "regex": "", "includeAll": False,
             "multi": False},
            variable("location", "Location", "aipulse_build_info"),
            variable("service", "Service", f"aipulse_service_status{{{LOCATION}}}"),
            variable("check", "Check", f"aipulse_check_state{{{SERVICE}}}"),
        ]},
        "panels": ps,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
