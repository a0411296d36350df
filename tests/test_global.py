"""Several locations, one of them sharded, joined by a real Prometheus: the global view.

Four `aipulse run` processes on loopback: fra, iad split into `--shard 1/2` and
`--shard 2/2` (one config file for both), and sgp. Each location is its own deployment
with its own config: same services and check ids everywhere, but every check of a
location probes its own route of one local target (`/switch/<location>-<service>-<check>`),
so a check can fail for all locations or for one only. One Prometheus scrapes all four
every second and evaluates deploy/prometheus/global.yml unchanged; its HTTP API shows

* each check probed exactly once per location (iad's shards split its checks without
  overlap or gaps, and the target sees iad's routes no more often than fra's);
* a check down for all three locations, and one down for two: down globally
  (aipulse:locations_down 3 and 2), AipulseGlobalOutage active (pending: it fires after
  its `for: 1m`, which global_test.yml covers with promtool);
* a check cut off for one location only: locations_down 1, no global outage, and
  AipulseLocationDisagrees (for: 10m) names that location.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import free_port, wait_for
from prom import Prometheus, start_prometheus, tool
from targets import Target, serve

from monitor.shard import shard_of

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GLOBAL_RULES = PROMETHEUS_DIR / "global.yml"

LOCATIONS = ("fra", "iad", "sgp")
CHECKS = {"deepseek": ("website", "api", "login"), "openai": ("website", "api")}
ALL = {(service, check) for service, checks in CHECKS.items() for check in checks}
# name, location, shard
INSTANCES = (("fra", "fra", None), ("iad-1", "iad", "1/2"), ("iad-2", "iad", "2/2"), ("sgp", "sgp", None))


# -- the files in deploy/prometheus -------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("check", "rules", "global.yml"),
    ("test", "rules", "global_test.yml"),
    ("check", "config", "federation.yml"),
    ("check", "config", "remote_write.yml"),
], ids=lambda args: " ".join(args))
def test_promtool(args: tuple[str, ...]) -> None:
    proc = subprocess.run([tool("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_federation_keeps_the_labels_of_aipulse_series() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "federation.yml").read_text())
    assert config["rule_files"] == ["global.yml"]
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/federate" and job["honor_labels"] is True
    assert '{__name__=~"aipulse_.*"}' in job["params"]["match[]"]


def test_remote_write_names_its_location() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "remote_write.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["external_labels"]["location"]
    [target] = config["remote_write"]
    assert target["url"].endswith("/api/v1/push")
    [keep] = target["write_relabel_configs"]
    assert keep["action"] == "keep" and "aipulse_.*" in keep["regex"]


# -- end to end: four instances, three locations, one Prometheus ----------------------------

def location_config(location: str, target: Target) -> dict[str, Any]:
    return {
        "location": location,
        "defaults": {"interval": "400ms", "timeout": "350ms", "open_after": 2, "close_after": 2},
        "services": {service: {"checks": {
            check: {"url": target.url(f"/switch/{location}-{service}-{check}")} for check in checks}}
            for service, checks in CHECKS.items()},
    }


@dataclass
class Instance:
    name: str
    location: str
    shard: str | None
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def start_instances(tmp_path: Path, target: Target) -> Iterator[dict[str, Instance]]:
    """All four daemons at once, not waiting for them (see `wait_ready`); each
    location's config is written once and shared by its instances, which differ only
    in --listen, --db and --shard."""
    for location in LOCATIONS:
        (tmp_path / f"{location}.yaml").write_text(yaml.safe_dump(location_config(location, target)))
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    instances: dict[str, Instance] = {}
    try:
        for name, location, shard in INSTANCES:
            workdir = tmp_path / name
            workdir.mkdir()
            port = free_port()
            args = [sys.executable, "-m", "monitor.cli", "run", "-c", str(tmp_path / f"{location}.yaml"),
                    "--listen", f"127.0.0.1:{port}", "--db", str(workdir / "aipulse.db")]
            if shard:
                args += ["--shard", shard]
            log = workdir / "daemon.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
            instances[name] = Instance(name, location, shard, port, proc, log)
        yield instances
    finally:
        for i in instances.values():
            i.proc.terminate()
        for i in instances.values():
            try:
                i.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                i.proc.kill()
                i.proc.wait()


def wait_ready(instances: dict[str, Instance]) -> None:
    def ready(i: Instance) -> bool:
        assert i.proc.poll() is None, i.log.read_text()
        try:
            return httpx.get(f"http://{i.address}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(lambda: all(ready(i) for i in instances.values()), timeout=15, every=0.05)


def by_check(prom: Prometheus, expr: str) -> dict[tuple[str, str], float]:
    """{(service, check): value} of an expression aggregated by service and check."""
    return {(s["metric"]["service"], s["metric"]["check"]): float(s["value"][1]) for s in prom.query(expr)}


def per_location(prom: Prometheus, expr: str) -> dict[tuple[str, str, str], float]:
    """{(service, check, location): value} of an expression aggregated by those."""
    return {(s["metric"]["service"], s["metric"]["check"], s["metric"]["location"]): float(s["value"][1])
            for s in prom.query(expr)}


def active_alerts(prom: Prometheus, name: str) -> dict[tuple[str, ...], dict[str, Any]]:
    return {(a["labels"]["service"], a["labels"]["check"], *([a["labels"]["location"]]
                                                             if "location" in a["labels"] else [])): a
            for a in prom.alerts() if a["labels"]["alertname"] == name}


def rule_expr(name: str) -> str:
    for group in yaml.safe_load(GLOBAL_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return str(rule["expr"])
    raise KeyError(name)


def test_locations_shards_and_the_global_view(tmp_path: Path) -> None:
    with ExitStack() as stack:
        target = stack.enter_context(serve())
        instances = stack.enter_context(start_instances(tmp_path, target))
        # Prometheus starts while the daemons do (its first scrape comes a few seconds
        # after it is ready, when service discovery first hands over the targets).
        prom = stack.enter_context(start_prometheus(
            tmp_path / "prometheus", [i.address for i in instances.values()], [GLOBAL_RULES]))
        wait_ready(instances)
        try:
            # -- every check probed exactly once per location ----------------------------
            expected = {(s, c, loc) for s, c in ALL for loc in LOCATIONS}

            def probed_once() -> bool:
                counts = per_location(prom, "count by (service, check, location) (aipulse_probe_success)")
                return counts.keys() == expected and set(counts.values()) == {1.0}

            wait_for(probed_once, timeout=20, every=0.2)
            # aipulse_check_state exists for every configured check, probed or not: one
            # series per state and check in each location, so no shard holds another's.
            states = per_location(prom, "count by (service, check, location) (aipulse_check_state)")
            assert states == dict.fromkeys(expected, 4.0)
            # iad's two shards split its checks as shard_of says: no overlap, no gap.
            for name in ("iad-1", "iad-2"):
                i = instances[name]
                index = int(i.shard.split("/")[0])  # type: ignore[union-attr]
                mine = {(r["metric"]["service"], r["metric"]["check"])
                        for r in prom.query(f'aipulse_check_state{{instance="{i.address}",state="up"}}')}
                assert mine == {(s, c) for s, c in ALL if shard_of(s, c, 2) == index}, (name, mine)
                assert mine and mine != ALL
            hits_before = dict(target.hits)
            counted_from = time.monotonic()

            wait_for(lambda: by_check(prom, "aipulse:locations_reporting") == dict.fromkeys(ALL, 3.0),
                     timeout=10, every=0.2)
            assert by_check(prom, "aipulse:locations_down") == dict.fromkeys(ALL, 0.0)
            assert by_check(prom, "aipulse:check_down_globally") == dict.fromkeys(ALL, 0.0)

            # -- faults ------------------------------------------------------------------
            # deepseek api fails for every location, deepseek login for fra and iad (a
            # quorum of 2), openai website for sgp only.
            for location in LOCATIONS:
                target.mode[f"{location}-deepseek-api"] = "503"
            for location in ("fra", "iad"):
                target.mode[f"{location}-deepseek-login"] = "503"
            target.mode["sgp-openai-website"] = "503"
            down = {("deepseek", "api"): 3.0, ("deepseek", "login"): 2.0, ("openai", "website"): 1.0}
            wait_for(lambda: by_check(prom, "aipulse:locations_down") == {**dict.fromkeys(ALL, 0.0), **down},
                     timeout=15, every=0.2)
            assert by_check(prom, "aipulse:check_down_globally") == {
                **dict.fromkeys(ALL, 0.0), ("deepseek", "api"): 1.0, ("deepseek", "login"): 1.0}

            # The quorum alert is active (pending until its `for: 1m`) for the two
            # checks a quorum sees down, not for the one only sgp sees down.
            def outages() -> dict[tuple[str, ...], tuple[str, float]]:
                return {k: (a["state"], float(a["value"]))
                        for k, a in active_alerts(prom, "AipulseGlobalOutage").items()}

            wait_for(lambda: outages() == {("deepseek", "api"): ("pending", 3.0),
                                           ("deepseek", "login"): ("pending", 2.0)}, timeout=10, every=0.2)
            # The lone location: the alert (pending for its 10 minutes) and its
            # expression name sgp, and nothing for the checks a quorum sees down.
            disagree = wait_for(lambda: (a := active_alerts(prom, "AipulseLocationDisagrees")).keys() == {
                ("openai", "website", "sgp")} and a, timeout=10, every=0.2)
            assert disagree["openai", "website", "sgp"]["state"] == "pending"
            assert per_location(prom, rule_expr("AipulseLocationDisagrees")) == {
                ("openai", "website", "sgp"): 1.0}
            # ... and over a few more evaluations, still no global outage for it.
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                assert ("openai", "website") not in active_alerts(prom, "AipulseGlobalOutage")
                time.sleep(0.25)

            # The target saw iad's routes as often as fra's and sgp's: one probe per
            # interval per location, however many instances the location has (twice
            # as many if both of iad's shards probed a check).
            expected_probes = (time.monotonic() - counted_from) / 0.4
            for service, check in ALL:
                probes = {loc: target.hits.get(f"switch/{loc}-{service}-{check}", 0)
                          - hits_before.get(f"switch/{loc}-{service}-{check}", 0) for loc in LOCATIONS}
                middle = sorted(probes.values())[1]
                assert all(0.6 * middle <= n <= 1.5 * middle for n in probes.values()), (
                    service, check, probes)
                assert 0.5 * expected_probes < middle < 1.3 * expected_probes, (probes, expected_probes)
        except AssertionError:
            print(prom.log_tail())
            for i in instances.values():
                print(f"--- {i.name}\n{i.log.read_text()[-2000:]}")
            raise
    for i in instances.values():
        assert "Traceback" not in i.log.read_text(), i.name
