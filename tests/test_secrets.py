"""A known secret, given through the environment and a systemd credential file and used
in a header, a URL, a flow body and a webhook, never leaves the process: not in a log
line, an error, an API response, a metric or the history database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import start_daemon, wait_for
from targets import Target

ENV_SECRET = "sk-env-8c1f4e2a9b7d"
FILE_SECRET = "sk-file-3e9a7c5d1f0b"


def test_secrets_never_leave_the_process(tmp_path: Path, target: Target,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "flow.key").write_text(FILE_SECRET + "\n")
    monkeypatch.setenv("AIPULSE_TEST_KEY", ENV_SECRET)  # inherited by the daemon
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = {
        "location": "secret-lab",
        "defaults": {"interval": "300ms", "timeout": "300ms", "open_after": 1},
        "notify": {"webhooks": [{"url": target.url("/hook"), "secret": "${AIPULSE_TEST_KEY}",
                                 "retry_initial": "10ms"}]},
        "services": {"acme": {"checks": {
            # the target echoes our headers back; the failed assertion quotes them
            "echo": {"url": target.url("/echo-headers"),
                     "headers": {"Authorization": "Bearer ${AIPULSE_TEST_KEY}"},
                     "expect": {"json": {"$.Authorization": "something else"}}},
            "query": {"url": "http://127.0.0.1:1/v1/models?key=${AIPULSE_TEST_KEY}"},
            "login": {"kind": "flow", "steps": [
                {"name": "login", "method": "POST", "url": target.url("/login"),
                 "json": {"user": "probe", "password": "${file:flow.key}"},
                 "expect": {"status": [200]}},
            ]},
        }}},
    }
    with start_daemon(config, tmp_path, db=tmp_path / "h.db") as d:
        wait_for(lambda: (d.value("aipulse_probes_total", service="acme", check="login",
                                  reason="http_4xx") or 0) >= 2)
        wait_for(lambda: any(h.get("service") == "acme" for h in target.hooks))
        status = d.get("/api/v1/status").text
        outages = d.get("/api/v1/outages").text
        metrics = d.get("/metrics").text
        # the assertion failure names the header value: redacted, not dropped silently
        echo = d.get("/api/v1/status").json()["services"][0]["checks"][0]["last_result"]
        assert echo["detail"] == 'JSONPath $.Authorization is "<redacted>", expected "something else"'
    log = (tmp_path / "daemon.log").read_text()
    history = (tmp_path / "h.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("h.db-*"))

    # A config error that quotes the value (an invalid URL built from the secret)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"services": {"s": {"checks": {
        "c": {"url": "ftp://${AIPULSE_TEST_KEY}.example/"}}}}}))
    check = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "-c", str(bad)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    assert "invalid URL" in check.stderr and "<redacted>" in check.stderr
    once = subprocess.run([sys.executable, "-m", "monitor.cli", "once", "--json", "-c",
                           str(tmp_path / "config.yaml")], capture_output=True, text=True, timeout=60)

    webhooks = repr(target.hooks)
    for where, text in [("log", log), ("status API", status), ("outages API", outages),
                        ("metrics", metrics), ("check-config", check.stdout + check.stderr),
                        ("once", once.stdout + once.stderr), ("webhook payloads", webhooks)]:
        assert ENV_SECRET not in text, where
        assert FILE_SECRET not in text, where
    assert ENV_SECRET.encode() not in history and FILE_SECRET.encode() not in history
    assert "acme" in metrics and "echo" in status  # the outputs were real, not empty
