"""The bundled config.yaml: the AI landscape on day one, and what `aipulse once` says
about it on a machine that cannot resolve any name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from monitor.config import load_file

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {  # issue 17: "cover at least"
    "openai", "anthropic", "gemini", "mistral", "deepseek", "groq", "openrouter", "cohere", "perplexity",
    "xai", "together", "fireworks", "replicate", "huggingface", "cerebras", "sambanova", "deepinfra", "ai21",
    "moonshot", "zhipu", "qwen", "nvidia", "voyage", "jina", "elevenlabs", "stability", "github-models",
}


def test_the_bundled_config_covers_the_landscape() -> None:
    cfg = load_file(ROOT / "config.yaml")
    ids = {s.id for s in cfg.services}
    assert ids >= REQUIRED
    assert sum(1 for s in cfg.services if s.status_page) >= 20
    for s in cfg.services:
        kinds = {c.id for c in s.checks}
        assert {"website", "api"} <= kinds, s.id
        assert all(c.method == "GET" and c.body is None for c in s.checks), s.id  # keyless, nothing submitted
        assert not any(v for c in s.checks for _, v in c.headers if "Bearer" in v), s.id  # no credentials
    formats = {s.status_page_spec.format for s in cfg.services if s.status_page_spec}
    assert {"auto", "rootly", "gcloud", "feed"} <= formats
    # light on vendors: one request a second per host at most, and no host asked for more
    assert cfg.per_host_rate == 1 and cfg.status_page_interval == 300
    assert min(c.interval for c in cfg.checks) >= 60
    assert not cfg.notes()


def test_once_offline_reports_every_check_as_dns(tmp_path: Path) -> None:
    """In a mount namespace whose resolv.conf points at 127.0.0.1, where no DNS server
    listens (as test_http_probe.test_dns_failure_is_dns does), every name fails to
    resolve at once: every check of the bundled config is `dns`, none is called
    anything else (not up, not timeout, not a vendor outage)."""
    cfg = load_file(ROOT / "config.yaml")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    script = (f"mount --bind {resolv} /etc/resolv.conf && "
              f"exec {sys.executable} -m monitor.cli once --json -c {ROOT / 'config.yaml'}")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cfg.checks) == 74
    assert {r["reason"] for r in results} == {"dns"}, [r for r in results if r["reason"] != "dns"]
    hosts = {(c.service, c.id): urlsplit(c.url).hostname for c in cfg.checks}
    for r in results:
        assert r["detail"].startswith(f"cannot resolve {hosts[(r['service'], r['check'])]}"), r
        assert r["success"] is False and not r["status_code"]
