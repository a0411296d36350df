"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import CheckConfig, Config, parse

T = TypeVar("T")


def make_config(checks: dict[str, dict[str, Any]], service: str = "svc", **top: Any) -> Config:
    """A real Config, parsed from YAML built from `checks` (check id -> check keys)."""
    doc = {"listen": "127.0.0.1:0", **top, "services": {service: {"checks": checks}}}
    return parse(yaml.safe_dump(doc), "test.yaml", env={})


def make_check(url: str, **keys: Any) -> CheckConfig:
    return make_config({"c": {"url": url, **keys}}).checks[0]


def one_request_check(kind: str, url: str, **keys: Any) -> CheckConfig:
    """A check of `kind` (http, flow, stream) that makes one request to `url` (a flow
    of one step named "one"; a stream GETs, format openai, unless `keys` say else).
    Every kind speaks HTTP through the same client, so every kind must meet a server
    the same way."""
    if kind == "flow":
        step = {"name": "one", "url": url, **{k: keys.pop(k) for k in ("headers", "expect", "method",
                                                                       "body", "json") if k in keys}}
        return make_config({"c": {"kind": "flow", "steps": [step], **keys}}).checks[0]
    if kind == "stream":
        keys = {"format": "openai", "method": "GET", **keys}
    return make_check(url, kind=kind, **keys)


def wait_for(fn: Callable[[], T], timeout: float = 10.0, every: float = 0.02) -> T:
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(every)


async def until(fn: Callable[[], T], timeout: float = 15.0, every: float = 0.01) -> T:
    """`wait_for` on the running event loop: await until `fn()` is truthy."""
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(every)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningDaemon:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path, location: str,
                 scheme: str = "http", verify: Any = True, auth: Any = None) -> None:
        self.proc, self.port, self.log, self.location = proc, port, log, location
        self.scheme, self.verify, self.auth = scheme, verify, auth

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str, **kw: Any) -> httpx.Response:
        kw.setdefault("verify", self.verify)
        kw.setdefault("auth", self.auth)
        return httpx.get(self.url(path), timeout=5, **kw)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, _samples: dict | None = None, **labels: str) -> float | None:
        labels.setdefault("location", self.location)
        return (_samples or self.samples()).get((name, frozenset(labels.items())))


@contextmanager
def start_daemon(config: dict[str, Any], tmp_path: Path, db: Path | None = None,
                 log_name: str = "daemon.log", cli_args: tuple[str, ...] = (), run_args: tuple[str, ...] = (),
                 preexec_fn: Callable[[], None] | None = None, **client: Any) -> Iterator[RunningDaemon]:
    """`aipulse [cli_args] run [run_args]` in a subprocess on a free port, ready when
    /readyz says so (run_args: e.g. --web.enable-lifecycle); `preexec_fn` runs in the
    child before it starts (e.g. to set resource limits)."""
    port = free_port()
    config = {"listen": f"127.0.0.1:{port}", **config}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = tmp_path / log_name
    args = [sys.executable, "-m", "monitor.cli", *cli_args, "run", "-c", str(cfg)]
    if db is not None:
        args += ["--db", str(db)]
    args += run_args
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"},
                                preexec_fn=preexec_fn)
    d = RunningDaemon(proc, port, log, str(config.get("location", "local")), **client)

    def ready() -> bool:
        try:
            return d.get("/readyz").status_code == 200
        except httpx.HTTPError:
            assert proc.poll() is None, log.read_text()
            return False

    try:
        wait_for(ready, timeout=15)
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
