"""The real daemon as a user runs it: `aipulse run` in a subprocess, scraped over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import RunningDaemon, start_daemon, wait_for
from targets import Target

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def daemon(tmp_path: Path, target: Target) -> Iterator[RunningDaemon]:
    config = {
        "location": "test-lab",
        "defaults": {"interval": "200ms", "timeout": "200ms"},
        "services": {
            "acme": {"title": "Acme AI", "checks": {
                "website": {"url": target.url("/ok"), "expect": {"body_contains": "hello"}},
                "api": {"url": target.url("/status/500")},
                "hang": {"url": target.url("/hang")},
                "tls": {"url": target.url("/ok", tls=True)},  # untrusted CA -> tls, expiry known
            }},
        },
    }
    with start_daemon(config, tmp_path) as d:
        yield d


def test_metrics_report_each_check(daemon: RunningDaemon) -> None:
    wait_for(lambda: (daemon.value("aipulse_probes_total", service="acme", check="api", reason="http_5xx")
                      or 0) >= 2)
    assert daemon.value("aipulse_probe_success", service="acme", check="website") == 1.0
    assert daemon.value("aipulse_probe_success", service="acme", check="api") == 0.0
    assert daemon.value("aipulse_probe_http_status_code", service="acme", check="api") == 500.0
    assert daemon.value("aipulse_probe_http_status_code", service="acme", check="website") == 200.0
    wait_for(lambda: daemon.value("aipulse_probes_total", service="acme", check="hang", reason="timeout"))
    assert daemon.value("aipulse_probe_success", service="acme", check="hang") == 0.0
    expiry = wait_for(lambda: daemon.value("aipulse_probe_tls_cert_expiry_timestamp_seconds",
                                           service="acme", check="tls"))
    assert expiry > time.time() + 365 * 86400  # trustme certificates last for centuries
    connect = daemon.value("aipulse_probe_phase_seconds", service="acme", check="website", phase="connect")
    assert connect is not None and 0 < connect < 1
    one = daemon.samples()  # count and buckets from the same scrape
    count = daemon.value("aipulse_probe_duration_seconds_count", one, service="acme", check="website")
    inf = daemon.value("aipulse_probe_duration_seconds_bucket", one, service="acme", check="website",
                       le="+Inf")
    assert count is not None and count >= 1 and inf == count
    assert daemon.value("aipulse_build_info", version=_version()) == 1.0
    assert daemon.value("aipulse_config_last_reload_successful") == 1.0
    lag_count = daemon.value("aipulse_scheduler_lag_seconds_count")
    assert lag_count is not None and lag_count >= 4


def _version() -> str:
    from monitor import __version__
    return __version__


def test_promtool_check_metrics_is_silent(daemon: RunningDaemon) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus; .ci/run installs it)"
    wait_for(lambda: daemon.value("aipulse_probe_tls_cert_expiry_timestamp_seconds", service="acme",
                                  check="tls"))
    text = daemon.get("/metrics").text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_openmetrics_when_asked(daemon: RunningDaemon) -> None:
    r = daemon.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    assert "aipulse_probes_total{" in r.text
    plain = daemon.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")


def test_metrics_are_gzipped_when_asked(daemon: RunningDaemon) -> None:
    zipped = daemon.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.num_bytes_downloaded < len(zipped.content) / 3  # httpx inflated it
    assert "aipulse_probes_total{" in zipped.text
    plain = daemon.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(plain.content)


def test_health_ready_and_unknown_paths(daemon: RunningDaemon) -> None:
    assert daemon.get("/healthz").status_code == 200
    assert daemon.get("/readyz").status_code == 200
    assert daemon.get("/nope").status_code == 404


def test_sigterm_stops_cleanly_within_five_seconds(daemon: RunningDaemon) -> None:
    wait_for(lambda: daemon.value("aipulse_probes_total", service="acme", check="hang", reason="timeout"))
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 5
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert "stopping" in log


def test_logs_one_line_per_change_not_per_probe(daemon: RunningDaemon) -> None:
    wait_for(lambda: (daemon.value("aipulse_probes_total", service="acme", check="api", reason="http_5xx")
                      or 0) >= 5)
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=5) == 0
    lines = [ln for ln in daemon.log.read_text().splitlines() if "acme/api" in ln]
    assert len(lines) == 1, lines
    assert "WARNING aipulse: acme/api: outage since " in lines[0]
    assert lines[0].endswith("(http_5xx)")


def test_listen_port_in_use_is_a_clear_error(tmp_path: Path, daemon: RunningDaemon) -> None:
    cfg = tmp_path / "other.yaml"
    cfg.write_text("services:\n  s:\n    checks:\n      c: {url: 'http://127.0.0.1:1/'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "run", "-c", str(cfg), "--listen", f"127.0.0.1:{daemon.port}"],
        capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 1
    assert "cannot start:" in proc.stderr and "address already in use" in proc.stderr


def test_the_event_loop_is_chosen_by_aipulse_loop(daemon: RunningDaemon, tmp_path: Path) -> None:
    started = [ln for ln in daemon.log.read_text().splitlines() if "aipulse started" in ln]
    assert started and started[0].endswith("(asyncio)"), started  # the default, uvloop installed or not
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("services:\n  s:\n    checks:\n      c: {url: 'http://127.0.0.1:1/'}\n")
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=20, env={**os.environ, "AIPULSE_LOOP": "tokio"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'AIPULSE_LOOP: invalid "tokio" (use asyncio, uvloop)'


# --- CLI commands that do not start the daemon ----------------------------------

def aipulse(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


def test_check_config_accepts_the_bundled_config() -> None:
    proc = aipulse("check-config", "-c", str(ROOT / "config.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{ROOT / 'config.yaml'}: ok (27 services, 22 with a status page, "
                                   "74 checks, 4 connectivity canaries)")


def test_the_bundled_inference_checks_are_ready_to_enable() -> None:
    """Deleting the "#| " prefixes in config.yaml enables one stream check per vendor;
    without the API keys they are skipped, not failed."""
    from monitor.config import parse
    text = (ROOT / "config.yaml").read_text().replace("#| ", "")
    keys = {f"{v}_API_KEY": "k" for v in
            ("DEEPSEEK", "OPENAI", "ANTHROPIC", "GEMINI", "MISTRAL", "GROQ", "OPENROUTER", "COHERE",
             "PERPLEXITY", "XAI", "TOGETHER", "FIREWORKS", "CEREBRAS", "SAMBANOVA", "DEEPINFRA", "AI21",
             "MOONSHOT", "ZHIPUAI", "DASHSCOPE", "NVIDIA")} | {"HF_TOKEN": "k", "GITHUB_TOKEN": "k"}
    cfg = parse(text, "config.yaml", env=keys)
    streams = [c for c in cfg.checks if c.kind == "stream"]
    # every service with a text-streaming API; not the embeddings, speech and image ones
    no_text_stream = {"replicate", "voyage", "jina", "elevenlabs", "stability"}
    assert sorted(c.service for c in streams) == sorted(s.id for s in cfg.services
                                                        if s.id not in no_text_stream)
    assert {c.format for c in streams} == {"openai", "anthropic", "gemini"}
    assert all(c.method == "POST" and c.body and c.expect.max_ttft for c in streams)
    assert not cfg.skipped
    keyless = parse(text, "config.yaml", env={})
    assert len(keyless.checks) == 74 and len(keyless.skipped) == 22


def test_check_config_uses_config_yaml_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "services:\n  s:\n    checks:\n      c:\n        url: http://x/\n        interval: 30q\n")
    proc = aipulse("check-config", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        'config.yaml:6: services.s.checks.c.interval: invalid duration "30q" '
        "(use e.g. 500ms, 30s, 5m, 1h, 7d)"
    )


def test_once_prints_a_table_and_fails_when_a_check_fails(tmp_path: Path, target: Target) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"services": {"s": {"checks": {
        "good": {"url": target.url("/ok")}, "bad": {"url": target.url("/status/503")}}}}}))
    proc = aipulse("once", "-c", str(cfg))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "CHECK", "RESULT", "HTTP", "TIME", "DETAIL"]
    rows = {ln.split()[1]: ln.split() for ln in lines[1:]}
    assert rows["good"][2:4] == ["ok", "200"]
    assert rows["bad"][2:4] == ["overloaded", "503"]


def test_once_json_and_exit_zero_when_all_pass(tmp_path: Path, target: Target) -> None:
    cfg = tmp_path / "c.yaml"
    checks = {"good": {"url": target.url("/redirect/2")}}
    cfg.write_text(yaml.safe_dump({"services": {"s": {"checks": checks}}}))
    proc = aipulse("once", "--json", "-c", str(cfg))
    assert proc.returncode == 0, proc.stdout
    import json
    [result] = json.loads(proc.stdout)
    got = (result["service"], result["check"], result["reason"], result["redirects"])
    assert got == ("s", "good", "ok", 2)


def test_version() -> None:
    proc = aipulse("--version")
    assert proc.stdout.strip() == f"aipulse {_version()}"
