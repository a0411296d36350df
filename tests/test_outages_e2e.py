"""Outage windows end to end: a real daemon, a real target driven through a timeline,
the SQLite history, /api/v1/outages, webhooks and a restart in the middle of an outage."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import RunningDaemon, start_daemon, wait_for
from targets import Target, serve

from monitor.store import query_windows
from monitor.units import parse_time


def until_hits(target: Target, route: str, n: int) -> None:
    """Wait until `route` has been hit n more times."""
    start = target.hits.get(route, 0)
    wait_for(lambda: target.hits.get(route, 0) >= start + n, timeout=10)


def api_windows(d: RunningDaemon, **query: str) -> list[dict[str, Any]]:
    r = d.get("/api/v1/outages", params=query)
    assert r.status_code == 200, r.text
    return r.json()["outages"]


def check_config(url: str, webhook: str | None = None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "defaults": {"interval": "1s", "timeout": "800ms", "open_after": 3, "close_after": 2},
        "services": {"acme": {"title": "Acme AI", "checks": {
            "api": {"url": url, "expect": {"max_latency": "300ms"}, **extra},
        }}},
    }
    if webhook:
        config["notify"] = {"webhooks": [{"url": webhook, "retry_initial": "50ms", "timeout": "2s"}]}
    return config


def test_scripted_timeline_gives_the_right_windows(tmp_path: Path) -> None:
    """up, hard down 20 s, up, one failed probe, a 5xx burst shorter than open_after,
    a slow period, up: exactly one down window and one degraded window, each within
    one interval of the truth; nothing for the blip or the burst. The webhook receiver
    refuses every first attempt and still gets exactly one open and one close."""
    db = tmp_path / "history.db"
    with serve() as t:
        t.mode["hook"] = "fail-first"
        cfg = check_config(t.url("/switch/api"), webhook=t.url("/hook"))
        with start_daemon(cfg, tmp_path, db=db) as d:
            until_hits(t, "switch/api", 3)  # up
            down_at = time.time()
            t.mode["api"] = "503"
            time.sleep(10)  # the scenario itself: 20 s of hard downtime, half 503s ...
            t.mode["api"] = "hang"  # ... and half timeouts
            time.sleep(10)
            up_at = time.time()
            t.mode["api"] = "ok"
            until_hits(t, "switch/api", 4)
            t.mode["api"] = "500"  # a single failed probe
            until_hits(t, "switch/api", 1)
            t.mode["api"] = "ok"
            until_hits(t, "switch/api", 3)
            t.mode["api"] = "502"  # a burst of two, shorter than open_after
            until_hits(t, "switch/api", 2)
            t.mode["api"] = "ok"
            until_hits(t, "switch/api", 3)
            slow_at = time.time()
            t.mode["api"] = "slow0.5"  # slower than max_latency: degraded, not down
            until_hits(t, "switch/api", 6)
            fast_at = time.time()
            t.mode["api"] = "ok"
            wait_for(lambda: len([w for w in api_windows(d, check="api") if w["end"]]) == 2, timeout=15)

            served = api_windows(d, service="acme", check="api")
            stored = query_windows(str(db), service="acme", check="api")
            assert [w["start"] for w in served] == [_iso(w.start) for w in stored]
            assert [(w["kind"], w["check"]) for w in served] == [("degraded", "api"), ("down", "api")]
            degraded, down = served
            # start within one interval of the switch (back-dated to the first failure),
            # end within one interval of the recovery (the first good probe)
            # (a probe already in flight when the mode flips sees the new mode: its start
            # time may precede the flip by its own latency)
            assert down_at - 0.5 <= _t(down["start"]) <= down_at + 1.5
            assert up_at - 0.5 <= _t(down["end"]) <= up_at + 1.5
            assert down["duration_seconds"] == pytest.approx(20, abs=2)
            assert down["reason"] in ("overloaded", "timeout") and down["severity"] == "major_outage"
            assert slow_at - 0.5 <= _t(degraded["start"]) <= slow_at + 1.5
            assert fast_at - 1.5 <= _t(degraded["end"]) <= fast_at + 1.5
            assert degraded["severity"] == "degraded_performance"
            # the service-level view has the same two windows
            service_level = [w for w in api_windows(d, service="acme") if w["check"] is None]
            assert [w["kind"] for w in service_level] == ["degraded", "down"]

            wait_for(lambda: len(t.hooks) >= 8, timeout=15)
            time.sleep(0.3)  # let any (wrong) duplicate arrive before counting
            per_window = Counter((h["service"], h["check"], h["kind"], h["start"], h["event"])
                                 for h in t.hooks)
            assert len(per_window) == 8  # 2 check + 2 service windows, each opened and closed
            assert set(per_window.values()) == {1}
            assert t.hook_attempts >= 16  # every first attempt was refused and retried


def test_restart_in_the_middle_of_an_outage(tmp_path: Path) -> None:
    """Stop the daemon during an outage and start it again: the same window continues
    and closes; the time it was not running is unknown, not up."""
    db = tmp_path / "history.db"
    with serve() as t:
        t.mode["api"] = "503"
        cfg = check_config(t.url("/switch/api"))
        with start_daemon(cfg, tmp_path, db=db) as d:
            window = wait_for(lambda: _status_check(d)["open_window"], timeout=15)
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(timeout=5) == 0
        stopped = time.time()
        time.sleep(3)  # the daemon is not running: a monitoring gap of ~3 s
        with start_daemon(cfg, tmp_path, db=db, log_name="daemon2.log") as d:
            restarted = time.time()
            resumed = _status_check(d)["open_window"]
            assert (resumed["start"], resumed["kind"], resumed["end"]) == (window["start"], "down", None)
            until_hits(t, "switch/api", 2)
            t.mode["api"] = "ok"
            closed = wait_for(lambda: [w for w in api_windows(d, check="api") if w["end"]], timeout=15)
            assert len(closed) == 1 and len(api_windows(d, check="api")) == 1
            assert closed[0]["start"] == window["start"]  # the same window, not a new one
            assert _t(closed[0]["end"]) > restarted

            with sqlite3.connect(db) as conn:
                gaps = conn.execute("SELECT start_ts, end_ts, cause FROM gaps").fetchall()
                first_seen = conn.execute("SELECT first_seen FROM checks").fetchone()[0]
            [(gap_start, gap_end, cause)] = gaps
            assert cause == "not_running"
            assert stopped - 1 <= gap_start <= stopped and restarted - 2 <= gap_end <= restarted

            # Availability by hand: observed = lifetime - gap; down = window - gap.
            check = wait_for(lambda: _fresh_status(d, after=_t(closed[0]["end"])))
            now = _t(check["availability_as_of"])
            gap = gap_end - gap_start
            observed = (now - first_seen) - gap
            down = (_t(closed[0]["end"]) - _t(closed[0]["start"])) - gap
            expected = 1 - down / observed
            assert check["availability"]["1h"] == pytest.approx(expected, abs=0.001)
            # counting the gap as up or as down would give a clearly different figure
            assert abs(expected - (1 - down / (observed + gap))) > 0.01
            assert abs(expected - (1 - (down + gap) / (observed + gap))) > 0.01


def test_outages_api_rejects_bad_queries(tmp_path: Path, target: Target) -> None:
    with start_daemon(check_config(target.url("/ok")), tmp_path) as d:
        for query, message in [
            ({"since": "yesterday"}, 'since: invalid time "yesterday"'),
            ({"until": "2025-13-01T00:00:00Z"}, "until: invalid time"),
            ({"since": "2025-01-28T00:00:00"}, "has no timezone"),
            ({"since": "1h", "until": "2h"}, "since is after until"),
            ({"limit": "many"}, 'limit: not a number: "many"'),
            ({"limit": "0"}, "limit: must be between 1 and 1000"),
            ({"servce": "acme"}, "unknown query parameter: servce"),
        ]:
            r = d.get("/api/v1/outages", params=query)
            assert r.status_code == 400, query
            assert r.headers["content-type"].startswith("application/json")
            assert message in r.json()["error"], (query, r.json())
        assert d.get("/api/v1/outages", params={"since": "7d"}).json() == {"outages": [], "truncated": False}


def test_cli_outages_reads_the_database_while_the_daemon_runs(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with serve() as t:
        t.mode["api"] = "503"
        with start_daemon(check_config(t.url("/switch/api")), tmp_path, db=db) as d:
            wait_for(lambda: _status_check(d)["open_window"], timeout=15)
            out = subprocess.run([sys.executable, "-m", "monitor.cli", "outages", "--db", str(db), "--json"],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)["outages"]
            assert {(r["check"], r["kind"], r["end"]) for r in rows} == {("api", "down", None),
                                                                       (None, "down", None)}
            table = subprocess.run([sys.executable, "-m", "monitor.cli", "outages", "--db", str(db),
                                    "--service", "acme", "--since", "1h"],
                                   capture_output=True, text=True, timeout=30)
            lines = table.stdout.splitlines()
            assert lines[0].split() == ["SERVICE", "CHECK", "KIND", "SEVERITY", "START", "END",
                                        "DURATION", "REASON"]
            assert any(ln.split()[:3] == ["acme", "api", "down"] and " open " in ln for ln in lines[1:])
            status = d.get("/api/v1/status").json()
            assert status["services"][0]["status"] == "major_outage"
            assert status["services"][0]["checks"][0]["state"] == "down"


def _status_check(d: RunningDaemon) -> dict[str, Any]:
    return d.get("/api/v1/status").json()["services"][0]["checks"][0]


def _fresh_status(d: RunningDaemon, after: float) -> dict[str, Any] | None:
    check = _status_check(d)
    as_of = check.get("availability_as_of")
    return check if as_of and _t(as_of) > after else None


def _t(text: str) -> float:
    return parse_time(text, 0)


def _iso(t: float) -> str:
    from monitor.units import rfc3339
    return rfc3339(t) or ""
