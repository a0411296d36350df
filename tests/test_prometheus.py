"""deploy/prometheus and deploy/grafana against the real promtool and a real Prometheus.

promtool checks the config and the rules and runs alerts_test.yml. Then aipulse probes
local targets, a real Prometheus scrapes it every second with an unchanged copy of
alerts.yml, and its HTTP API shows that every query of the Grafana dashboard runs, that
the main panels have data, and that the outage alerts fire when a target goes down.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import start_daemon, wait_for
from prom import Prometheus, start_prometheus, tool
from targets import serve

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "aipulse.json"
DS = {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("args", [
    ("check", "config", "prometheus.yml"),
    ("check", "rules", "alerts.yml"),
    ("test", "rules", "alerts_test.yml"),
], ids=lambda args: " ".join(args))
def test_promtool(args: tuple[str, ...]) -> None:
    proc = subprocess.run([tool("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def test_dashboard_json_is_what_build_py_generates() -> None:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA_DIR / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert DASHBOARD.read_text() == build.render(), "run python3 deploy/grafana/build.py"


def test_dashboard_panels_use_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("service", "check", "location"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DS
        assert variables[name]["definition"].startswith("label_values(")
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]


# -- end to end ------------------------------------------------------------------------

ALL = {"service": ".*", "check": ".*", "location": ".*"}
GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables, as Grafana would fill them in; an unknown one fails."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: {**GRAFANA_VARS, **values}[m.group(1)], expr)


def panel_exprs(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def check_variable_queries(prom: Prometheus, dashboard: dict[str, Any],
                           expected: dict[str, set[str]]) -> None:
    """label_values(selector, label) of each template variable finds the real values."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
        assert m, variable["definition"]
        selector, label = substitute(m.group(1), ALL), m.group(2)
        answer = httpx.get(prom.url(f"/api/v1/label/{label}/values"), params={"match[]": selector},
                           timeout=10).json()
        assert answer["status"] == "success", answer
        assert expected[label] <= set(answer["data"]), (variable["definition"], answer)


def test_rules_and_dashboard_on_a_real_prometheus(tmp_path: Path) -> None:
    dashboard = load_dashboard()
    exprs = panel_exprs(dashboard)
    with serve() as target:
        config = {
            "location": "e2e",
            "defaults": {"interval": "500ms", "timeout": "450ms", "open_after": 2, "close_after": 2},
            "services": {
                "alpha": {"status_page": target.url("/api/v2/summary.json"), "checks": {
                    "website": {"url": target.url("/switch/alpha-website")},
                    "api": {"url": target.url("/switch/alpha-api")},
                }},
                "beta": {"checks": {
                    "website": {"url": target.url("/switch/beta-website")},
                    "api": {"url": target.url("/switch/beta-api")},
                }},
            },
        }
        (tmp_path / "aipulse").mkdir()
        with start_daemon(config, tmp_path / "aipulse") as daemon, \
                start_prometheus(tmp_path / "prometheus", daemon.port,
                                 [PROMETHEUS_DIR / "alerts.yml"]) as prom:
            # Prometheus needs a few seconds for its first scrape: meanwhile alpha's API
            # goes down (partial outage: its website stays up).
            target.mode["alpha-api"] = "503"
            try:
                wait_for(lambda: len(prom.query('aipulse_service_status{location="e2e"}')) == 12,
                         timeout=20, every=0.2)

                # (a) Every query of the dashboard parses and runs, for "All" and for one
                # selected service, check and location.
                check_variable_queries(prom, dashboard, {"location": {"e2e"}, "service": {"alpha", "beta"},
                                                         "check": {"website", "api"}})
                one = {"service": "alpha", "check": "api", "location": "e2e"}
                for panel in exprs.values():
                    for expr in panel:
                        prom.query(substitute(expr, ALL))
                        prom.query(substitute(expr, one))

                # (b) The main panels have data (failures by reason once the new error
                # counter has two samples).
                def has_data(title: str) -> bool:
                    return all(prom.query(substitute(expr, ALL)) for expr in exprs[title])

                for title in ("Service status", "Availability", "Latency by phase ($location)",
                              "Outage timeline", "Our view vs the vendor's", "Probe duration",
                              "Scheduler lag", "Failures by reason", "Open outages"):
                    wait_for(lambda title=title: has_data(title), timeout=15, every=0.2)
                failures = prom.query(substitute(exprs["Failures by reason"][0], ALL))
                assert ("alpha", "api", "overloaded") in {
                    (s["metric"]["service"], s["metric"]["check"], s["metric"]["reason"]) for s in failures}
                statuses = prom.query(substitute(exprs["Service status"][0], ALL))
                assert {(s["metric"]["service"], s["metric"]["location"], s["value"][1])
                        for s in statuses} == {("alpha", "e2e", "3"), ("beta", "e2e", "0")}

                # (c) The outage alerts: pending first, firing after the production `for:`.
                def active(state: str) -> dict[tuple[str, str | None], dict[str, Any]]:
                    return {(a["labels"]["alertname"], a["labels"].get("service")): a
                            for a in prom.alerts() if a["state"] == state}

                pending = wait_for(lambda: active("pending"), timeout=10, every=0.2)
                assert ("AipulseServiceOutage", "alpha") in pending, pending
                wanted = {("AipulseServiceOutage", "alpha"), ("AipulseCheckDown", "alpha"),
                          ("AipulseErrorBudgetBurn", "alpha")}

                def all_firing() -> dict[tuple[str, str | None], dict[str, Any]] | None:
                    firing = active("firing")
                    return firing if wanted <= firing.keys() else None

                alerts = wait_for(all_firing, timeout=60, every=0.5)
            except AssertionError:
                print(prom.log_tail())
                print(daemon.log.read_text()[-3000:])
                raise
            outage = alerts["AipulseServiceOutage", "alpha"]
            assert outage["labels"] == {"alertname": "AipulseServiceOutage", "service": "alpha",
                                        "location": "e2e", "severity": "warning"}
            assert re.fullmatch(r"alpha as seen from e2e: partial_outage since 20\d\d-\d\d-\d\d "
                                r"\d\d:\d\d:\d\d \+0000 UTC \(the first failed probe\)\. Down: api\.",
                                outage["annotations"]["description"]), outage["annotations"]
            for name in ("AipulseCheckDown", "AipulseErrorBudgetBurn"):
                labels = alerts[name, "alpha"]["labels"]
                assert (labels["check"], labels["location"]) == ("api", "e2e"), labels
            everything = prom.alerts()
            assert not [a for a in everything if a["labels"].get("service") == "beta"], everything
            assert "AipulseServiceMajorOutage" not in {a["labels"]["alertname"] for a in everything}
