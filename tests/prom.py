"""A real Prometheus for tests: `/usr/bin/prometheus` (Debian package `prometheus`) as a
subprocess on a free loopback port, scraping one aipulse and loading rule files."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import free_port, wait_for


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is required (Debian package prometheus; .ci/run installs it)"
    return path


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """POST to /api/v1/<path>; the JSON answer, whatever its status."""
        reply = httpx.post(self.url(f"/api/v1/{path}"), data=params, timeout=10)
        return reply.json()  # type: ignore[no-any-return]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query that must succeed; its result (empty when nothing matched)."""
        answer = self.api("query", query=expr)
        assert answer.get("status") == "success", f"{expr}\n-> {answer}"
        return answer["data"]["result"]  # type: ignore[no-any-return]

    def alerts(self) -> list[dict[str, Any]]:
        return httpx.get(self.url("/api/v1/alerts"), timeout=10).json()["data"]["alerts"]  # type: ignore[no-any-return]

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@contextmanager
def start_prometheus(workdir: Path, scrape: int | Sequence[str], rule_files: Sequence[Path] = (),
                     interval: str = "1s") -> Iterator[Prometheus]:
    """Prometheus scraping `scrape` (a port on 127.0.0.1, or host:port targets) as job
    "aipulse" and evaluating rules every `interval`; rule files are copied unchanged
    into `workdir`."""
    targets = [f"127.0.0.1:{scrape}"] if isinstance(scrape, int) else list(scrape)
    workdir.mkdir(parents=True, exist_ok=True)
    for rules in rule_files:
        shutil.copyfile(rules, workdir / rules.name)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [rules.name for rules in rule_files],
        "scrape_configs": [{"job_name": "aipulse",
                            "static_configs": [{"targets": targets}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [tool("prometheus"), "--config.file=prometheus.yml", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    prom = Prometheus(proc, port, log)

    def ready() -> bool:
        assert proc.poll() is None, prom.log_tail()
        try:
            return httpx.get(prom.url("/-/ready"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=20, every=0.05)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
