"""Live reload (SIGHUP and POST /-/reload) and the exporter-toolkit web config."""

from __future__ import annotations

import signal
import ssl
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import trustme
import yaml
from helpers import RunningDaemon, start_daemon, wait_for
from targets import Target, serve


def base_config(t: Target) -> dict[str, Any]:
    return {
        "defaults": {"interval": "200ms", "timeout": "200ms", "open_after": 2},
        "services": {"acme": {"checks": {
            "api": {"url": t.url("/switch/api")},
            "web": {"url": t.url("/ok")},
        }}},
    }


def rewrite(d: RunningDaemon, tmp_path: Path, config: dict[str, Any]) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"listen": f"127.0.0.1:{d.port}", **config}))


def open_window(d: RunningDaemon) -> dict[str, Any] | None:
    checks = {c["id"]: c for c in d.get("/api/v1/status").json()["services"][0]["checks"]}
    return checks["api"]["open_window"]


@pytest.mark.parametrize("how", ["sighup", "http"])
def test_reload_keeps_windows_drops_removed_checks_and_survives_a_broken_file(
        tmp_path: Path, how: str) -> None:
    with serve() as t:
        t.mode["api"] = "503"
        config = base_config(t)
        with start_daemon(config, tmp_path, run_args=("--web.enable-lifecycle",)) as d:
            before = wait_for(lambda: open_window(d))
            assert d.value("aipulse_probe_success", service="acme", check="web") == 1.0

            def reload() -> None:
                if how == "sighup":
                    d.proc.send_signal(signal.SIGHUP)
                else:
                    r = httpx.post(d.url("/-/reload"), timeout=5)
                    assert r.status_code == 200 and r.json() == {"status": "reloaded"}

            # 1. drop `web`, add `extra`, change nothing about `api`
            del config["services"]["acme"]["checks"]["web"]
            config["services"]["acme"]["checks"]["extra"] = {"url": t.url("/ok")}
            rewrite(d, tmp_path, config)
            reload()
            wait_for(lambda: d.value("aipulse_probe_success", service="acme", check="extra") == 1.0)
            assert d.value("aipulse_probe_success", service="acme", check="web") is None
            assert "check=\"web\"" not in d.get("/metrics").text
            after = open_window(d)
            assert after is not None and (after["start"], after["kind"]) == (before["start"], "down")
            assert d.value("aipulse_config_last_reload_successful") == 1.0

            # 2. a broken file: the running config stays, the gauge says so
            (tmp_path / "config.yaml").write_text(
                "services:\n  acme:\n    checks:\n      x: {interval: 3q}\n")
            if how == "sighup":
                d.proc.send_signal(signal.SIGHUP)
                wait_for(lambda: d.value("aipulse_config_last_reload_successful") == 0.0)
            else:
                r = httpx.post(d.url("/-/reload"), timeout=5)
                assert r.status_code == 500
                error = r.json()["error"]
                assert 'config.yaml:4: services.acme.checks.x.interval: invalid duration "3q"' in error
                assert d.value("aipulse_config_last_reload_successful") == 0.0
            assert d.value("aipulse_probe_success", service="acme", check="extra") == 1.0
            assert open_window(d)["start"] == before["start"]

            # 3. fixed again: the window still closes normally
            rewrite(d, tmp_path, config)
            reload()
            wait_for(lambda: d.value("aipulse_config_last_reload_successful") == 1.0)
            t.mode["api"] = "ok"
            wait_for(lambda: open_window(d) is None)
            [window] = d.get("/api/v1/outages", params={"check": "api"}).json()["outages"]
            assert window["start"] == before["start"] and window["end"] is not None
            assert d.proc.poll() is None
        assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_a_removed_check_with_an_open_window_has_it_closed(tmp_path: Path) -> None:
    with serve() as t:
        t.mode["api"] = "503"
        config = base_config(t)
        with start_daemon(config, tmp_path, run_args=("--web.enable-lifecycle",)) as d:
            wait_for(lambda: open_window(d))
            del config["services"]["acme"]["checks"]["api"]
            rewrite(d, tmp_path, config)
            assert httpx.post(d.url("/-/reload"), timeout=5).status_code == 200
            [window] = d.get("/api/v1/outages", params={"check": "api"}).json()["outages"]
            assert window["end"] is not None


# --- web config: basic auth and TLS ----------------------------------------------

def test_web_config_basic_auth_and_tls(tmp_path: Path, target: Target) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(tmp_path / "server.key")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "server.crt")
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    (tmp_path / "web.yml").write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
        "basic_auth_users": {"prometheus": hashed},
    }))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    config = {"web_config": "web.yml", "services": {"s": {"checks": {"c": {"url": target.url("/ok")}}}}}
    with start_daemon(config, tmp_path, scheme="https", verify=client_ctx,
                      auth=("prometheus", "s3cret-pass")) as d:
        url = f"https://127.0.0.1:{d.port}"
        for path in ("/metrics", "/api/v1/status", "/api/v1/outages", "/readyz"):
            assert httpx.get(url + path, verify=client_ctx).status_code == 401
            assert httpx.get(url + path, verify=client_ctx, auth=("prometheus", "wrong")).status_code == 401
            good = httpx.get(url + path, verify=client_ctx, auth=("prometheus", "s3cret-pass"))
            assert good.status_code == 200
        r = httpx.get(url + "/metrics", verify=client_ctx)
        assert r.headers["www-authenticate"] == 'Basic realm="aipulse"'
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
            httpx.get(f"http://127.0.0.1:{d.port}/metrics", timeout=3).raise_for_status()
