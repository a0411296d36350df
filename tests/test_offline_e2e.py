"""Never green when blind, end to end: `aipulse run` against real local servers.

* The bundled config with no DNS (a mount namespace whose resolv.conf points at a
  port where nothing listens): page, API and metrics say unknown / offline, nothing
  is green, in Chromium too.
* Local canaries and services switched off and on: offline and back, no window.
* Every host of one vendor refusing connections while the canaries answer: windows.
* A restart logs no "monitor offline" line; a config that watches nothing says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import RunningDaemon, free_port, start_daemon, wait_for
from prometheus_client.registry import CollectorRegistry
from test_page import ARTIFACTS, Dom, chromium, png_size

from monitor import server
from monitor.live import LiveState
from monitor.outage import OutageWindow, WindowClosed, WindowOpened
from monitor.store import Store
from monitor.webconfig import WebConfig

REPO = Path(__file__).resolve().parent.parent
FAST = {"interval": "200ms", "timeout": "150ms", "open_after": 3, "close_after": 2}


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Switchable:
    """A real HTTP server on host:port that can be switched off (connections refused)
    and on again on the same address."""

    def __init__(self, host: str) -> None:
        with socket.socket() as s:
            s.bind((host, 0))
            self.host, self.port = host, s.getsockname()[1]
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def on(self) -> None:
        self._server = ThreadingHTTPServer((self.host, self.port), _Ok)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def off(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def switchables(*hosts: str) -> Iterator[list[Switchable]]:
    servers = [Switchable(h) for h in hosts]
    for s in servers:
        s.on()
    try:
        yield servers
    finally:
        for s in servers:
            s.off()


def status(d: RunningDaemon) -> dict[str, Any]:
    return d.get("/api/v1/status").json()  # type: ignore[no-any-return]


def states(d: RunningDaemon) -> dict[str, str]:
    out = {}
    for s in status(d)["services"]:
        out[s["id"]] = s["status"]
        out.update({f"{s['id']}/{c['id']}": c["state"] for c in s["checks"]})
    return out


def green_on_the_page(html: str) -> list[str]:
    """Every element of the page that is coloured operational (green)."""
    dom = Dom(html)
    return [f"{t} {a}" for t, a, _ in dom.elements
            if a.get("data-status") == "operational" or a.get("data-state") == "up"]


def assert_blind(d: RunningDaemon, services: list[str]) -> None:
    """Offline: the API, the metrics and the page say unknown / offline; nothing green."""
    st = status(d)
    assert st["monitor_offline"] is True
    assert {s["id"]: s["status"] for s in st["services"]} == dict.fromkeys(services, "unknown")
    assert {c["state"] for s in st["services"] for c in s["checks"]} == {"unknown"}
    samples = d.samples()
    assert d.value("aipulse_monitor_offline", samples) == 1.0
    for sid in services:
        assert d.value("aipulse_service_status", samples, service=sid, status="unknown") == 1.0
        assert d.value("aipulse_service_status", samples, service=sid, status="operational") == 0.0
    html = d.get("/").text
    assert green_on_the_page(html) == []
    assert "All services operational" not in html
    assert "The monitor itself is offline" in html
    assert f"Status unknown: {len(services)} of {len(services)} services cannot be seen" in html


def test_the_bundled_config_without_dns_is_unknown_and_offline_nothing_green(tmp_path: Path) -> None:
    """The issue's case: every host unresolvable. The bundled services and canaries,
    probed every second (instead of every minute) so that the test is quick."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert len(config["connectivity"]["targets"]) >= 3  # documented defaults, not a test's own
    port = free_port()
    config.update(listen=f"127.0.0.1:{port}", storage={"path": str(tmp_path / "aipulse.db")})
    config["defaults"].update(interval="1s", timeout="800ms")
    config["connectivity"].update(interval="1s", timeout="800ms")
    services = sorted(config["services"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    log = tmp_path / "daemon.log"
    script = (f"mount --bind {resolv} /etc/resolv.conf && "
              f"exec {sys.executable} -m monitor.cli run -c {tmp_path / 'config.yaml'}")
    with log.open("w") as out:
        proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"})
    d = RunningDaemon(proc, port, log, "local")
    try:
        def offline() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return bool(status(d)["monitor_offline"]) and set(states(d).values()) == {"unknown"}
            except httpx.HTTPError:
                return False

        wait_for(offline, timeout=30, every=0.2)
        assert_blind(d, services)
        assert d.get("/api/v1/outages").json() == {"outages": [], "truncated": False}
        text = log.read_text()
        assert "monitor offline since" in text and "every connectivity canary fails" in text, text
        shot_and_check(d, tmp_path, "status-page-offline.png", services)
    finally:
        proc.terminate()
        proc.wait(10)


def shot_and_check(d: RunningDaemon, tmp_path: Path, name: str, services: list[str]) -> None:
    """The page in headless Chromium: a screenshot (tests/artifacts/), and its DOM
    has no green and one grey banner."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", d.url("/"))
    assert png_size(shot.read_bytes()) == (1280, 1600)
    html = chromium(tmp_path, "--dump-dom", d.url("/"))
    assert green_on_the_page(html) == []
    dom = Dom(html)
    [banner] = [a for a in dom.find("p") if a.get("class") == "banner"]
    assert banner["data-status"] == "unknown" and banner["data-unknown"] == str(len(services))
    assert {a["data-status"] for a in dom.find("section") if a.get("data-service")} == {"unknown"}


def test_offline_and_back_with_local_canaries_opens_no_window(tmp_path: Path) -> None:
    """Two services, a URL canary and a TCP canary, all on loopback. Switched off
    together (our network gone): offline, unknown, no window however long; switched
    on again: operational, the gap closed, still no window."""
    with switchables("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5") as (a, b, c1, c2):
        config = {
            "defaults": FAST,
            "connectivity": [c1.url("/generate_204"), f"{c2.host}:{c2.port}"],
            "services": {
                "alpha": {"checks": {"api": {"url": a.url("/api")}, "web": {"url": a.url("/")}}},
                "beta": {"checks": {"api": {"url": b.url("/api")}}},
            },
        }
        with start_daemon(config, tmp_path) as d:
            wait_for(lambda: states(d) == {"alpha": "operational", "alpha/api": "up", "alpha/web": "up",
                                           "beta": "operational", "beta/api": "up"}, timeout=15)
            assert d.value("aipulse_monitor_offline") == 0.0
            for s in (a, b, c1, c2):
                s.off()
            wait_for(lambda: status(d)["monitor_offline"] and set(states(d).values()) == {"unknown"},
                     timeout=15)
            assert_blind(d, ["alpha", "beta"])
            # 15 intervals offline, 5 times open_after: still no window
            n = d.value("aipulse_probes_total", service="alpha", check="api", reason="connect") or 0
            wait_for(lambda: (d.value("aipulse_probes_total", service="alpha", check="api",
                                      reason="connect") or 0) >= n + 15, timeout=20)
            assert set(states(d).values()) == {"unknown"}
            assert d.get("/api/v1/outages").json()["outages"] == []
            for s in (a, b, c1, c2):
                s.on()
            wait_for(lambda: states(d) == {"alpha": "operational", "alpha/api": "up", "alpha/web": "up",
                                           "beta": "operational", "beta/api": "up"}, timeout=15)
            assert status(d)["monitor_offline"] is False and d.value("aipulse_monitor_offline") == 0.0
            assert d.get("/api/v1/outages").json()["outages"] == []
            text = d.log.read_text()
        assert text.count("monitor offline since") == 1 and text.count("monitor back online") == 1, text
        assert "is unknown" not in text  # one line for the whole monitor, not one per check or service


def test_one_vendor_refusing_connections_while_the_canaries_answer_opens_windows(tmp_path: Path) -> None:
    """Every host of the config is one vendor's (two hosts) and refuses connections.
    Without canaries that was taken for our own network and no window ever opened;
    the canaries answer, so it is the vendor's outage."""
    with switchables("127.0.0.6", "127.0.0.7", "127.0.0.8") as (api, web, canary):
        config = {
            "defaults": FAST,
            "connectivity": [canary.url("/")],
            "services": {"vendor": {"checks": {"api": {"url": api.url("/models")},
                                               "web": {"url": web.url("/")}}}},
        }
        with start_daemon(config, tmp_path) as d:
            wait_for(lambda: states(d).get("vendor") == "operational", timeout=15)
            api.off()
            web.off()
            wait_for(lambda: states(d) == {"vendor": "major_outage", "vendor/api": "down",
                                           "vendor/web": "down"}, timeout=15)
            windows = d.get("/api/v1/outages").json()["outages"]
            got = {(w["check"], w["kind"], w["reason"] if w["check"] else w["severity"]) for w in windows}
            assert got == {("api", "down", "connect"), ("web", "down", "connect"),
                           (None, "down", "major_outage")}
            assert status(d)["monitor_offline"] is False and d.value("aipulse_monitor_offline") == 0.0


def test_a_restart_logs_no_false_offline_line(tmp_path: Path) -> None:
    with switchables("127.0.0.9") as (t,):
        config = {"defaults": FAST, "services": {"s": {"checks": {"c": {"url": t.url("/")}}}}}
        db = tmp_path / "history.db"
        for n in (1, 2):
            with start_daemon(config, tmp_path, db=db, log_name=f"run{n}.log") as d:
                wait_for(lambda: states(d).get("s/c") == "up", timeout=15)
                d.proc.terminate()
                assert d.proc.wait(10) == 0
        text = (tmp_path / "run2.log").read_text()
    assert "monitor offline since" not in text, text
    assert "not running from" in text, text


def test_a_config_whose_every_check_is_skipped_is_an_error_and_not_ready(tmp_path: Path) -> None:
    """A misspelt variable skips its check; when none is left, check-config names each
    and exits 1, and a daemon started anyway is not ready and says why."""
    config = {"services": {"openai": {"checks": {
        "api": {"url": "http://127.0.0.1:9/", "headers": {"Authorization": "Bearer ${OPENAI_API_KYE}"}},
        "chat": {"url": "http://127.0.0.1:9/?key=${OPENAI_KEY}"}}}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KYE", "OPENAI_KEY")}
    out = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "-c", str(path)],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 1, out
    assert "skipping openai/api: it needs ${OPENAI_API_KYE}" in out.stderr
    assert "skipping openai/chat: it needs ${OPENAI_KEY}" in out.stderr
    assert "no check left to run (2 skipped)" in out.stderr
    port = free_port()
    config["listen"] = f"127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "daemon.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "-c", str(path)], cwd=tmp_path,
                                stdout=sink, stderr=subprocess.STDOUT, env=env)
    d = RunningDaemon(proc, port, log, "local")
    try:
        def answered() -> httpx.Response | None:
            assert proc.poll() is None, log.read_text()
            try:
                return d.get("/healthz")
            except httpx.HTTPError:
                return None

        wait_for(answered, timeout=15)
        ready = wait_for(lambda: "started" in log.read_text() and d.get("/readyz"), timeout=15)
        assert ready.status_code == 503
        assert ready.text == "not ready: no active checks (2 skipped for a missing key)\n"
        assert d.value("aipulse_checks_skipped") == 2.0
        assert "no active check (2 skipped)" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("limit", [1, 2])
def test_outages_say_when_more_matched_than_the_limit(tmp_path: Path, limit: int) -> None:
    """Three windows: --limit and ?limit= cut at the newest N and say so (never a silent
    cut); with room for all they say truncated: false."""
    db = tmp_path / "history.db"
    now = time.time()

    async def fill_and_ask() -> list[dict[str, Any]]:
        store = Store(str(db), 86400.0)
        store.open(since=now - 86400)
        for i in range(3):
            w = OutageWindow("acme", "api", "down", now - 3000 + 600 * i, reason="timeout",
                             severity="major_outage")
            await store.write([WindowOpened(w), WindowClosed(dataclasses.replace(w, end=w.start + 60))])
        await store.close()

        async def reload() -> str | None:
            return None

        runner = await server.start(server.make_app(LiveState(), CollectorRegistry(), str(db), reload,
                                                    WebConfig()), "127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port(runner)}") as c:
                return [(await c.get("/api/v1/outages", params=q)).json()
                        for q in ({"limit": str(limit)}, {"limit": "3"}, {})]
        finally:
            await runner.cleanup()

    cut, exact, default = asyncio.run(fill_and_ask())
    assert cut["truncated"] is True and len(cut["outages"]) == limit
    assert [w["start"] for w in cut["outages"]] == [w["start"] for w in exact["outages"]][:limit]  # newest
    assert exact["truncated"] is False and len(exact["outages"]) == 3
    assert default["truncated"] is False and len(default["outages"]) == 3

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "monitor.cli", "outages", "--db", str(db), *args],
                              capture_output=True, text=True, timeout=30)

    as_json = json.loads(cli("--json", "--limit", str(limit)).stdout)
    assert as_json["truncated"] is True and len(as_json["outages"]) == limit
    assert json.loads(cli("--json").stdout)["truncated"] is False
    table = cli("--limit", str(limit)).stdout.splitlines()
    assert len([ln for ln in table if ln.startswith("acme")]) == limit
    assert table[-1] == (f"truncated: more than {limit} windows matched; these are the newest {limit} "
                         "(--limit N for more, --since or --service for fewer)")
    assert not any(ln.startswith("truncated") for ln in cli().stdout.splitlines())
    bad = cli("--limit", "0")
    assert bad.returncode == 2 and "--limit: must be at least 1, got 0" in bad.stderr
