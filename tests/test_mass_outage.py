"""A mass outage (every check of a large service failing at once) must not wedge the
daemon: each result costs the same whatever the layout, the pipeline gives the event
loop a turn between batches, the log says it in a few lines, and the daemon answers,
opens every window in time, stops on SIGTERM and closes every window after recovery,
across a restart too. (bench/mass_outage.py runs the full size: 3,000 checks in one
service, 5,000 as 500 services.)"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import start_daemon, wait_for
from test_availability import MemorySink

from monitor.announce import BURST, BURST_ALL
from monitor.config import Config, parse
from monitor.live import LiveState
from monitor.pipeline import Pipeline
from monitor.reasons import Reason
from monitor.result import ProbeResult


def layout(checks: int, services: int, url: str = "http://127.0.0.1:9/x", **defaults: Any) -> dict[str, Any]:
    per = checks // services
    return {
        "defaults": {"interval": "10s", "open_after": 3, "close_after": 2, **defaults},
        "limits": {"per_host_rate": 100_000, "max_in_flight": 2000},
        "services": {f"s{j:03d}": {"checks": {f"c{i:04d}": {"url": url} for i in range(per)}}
                     for j in range(services)},
    }


def config(checks: int, services: int) -> Config:
    return parse(yaml.safe_dump({"listen": "127.0.0.1:0", **layout(checks, services)}), "mass.yaml", env={})


def feed(pipeline: Pipeline, cfg: Config, rounds: int, t0: float = 1_000_000.0) -> float:
    """`rounds` probe rounds of every check: three failing, two good, and so on (windows
    open and close). Returns the seconds spent per result."""
    keys = [c.key for c in cfg.checks]
    n = 0
    start = time.perf_counter()
    for r in range(rounds):
        reason = Reason.HTTP_5XX if r % 5 < 3 else Reason.OK
        for i, (service, check) in enumerate(keys):
            pipeline.process(ProbeResult(service, check, t0 + 10 * r + i * 1e-4, 0.01, reason))
            n += 1
    return (time.perf_counter() - start) / n


def per_result(checks: int, services: int, repeats: int = 1) -> float:
    cfg = config(checks, services)
    pipeline = Pipeline(cfg, LiveState())
    feed(pipeline, cfg, 5)  # warm up (every tracker has its window opened and closed once)
    rounds = max(5, 5000 // checks)
    return min(feed(pipeline, cfg, rounds, t0=2_000_000.0 + 1e5 * k) for k in range(repeats))


def test_a_result_costs_the_same_in_a_service_of_30_checks_or_of_3000() -> None:
    """The service's status is kept from counts, not recomputed over its checks:
    today's main took ~14 ms per result at 3,000 checks in one service, 0.2 ms at 30."""
    small = per_result(30, 1, repeats=3)
    one_service = per_result(3000, 1)
    many_services = per_result(3000, 300)
    assert one_service < 3 * small, (small, one_service)
    assert many_services < 3 * small, (small, many_services)


async def longest_turn_waited(cfg: Config) -> tuple[float, float]:
    """All of `cfg`'s checks fail at once: (the longest another task waited for a turn
    while the pipeline processed them, how long processing all of them took)."""
    pipeline = Pipeline(cfg, LiveState(), MemorySink())
    pipeline.start()
    # As the daemon does once it has started (monitor.daemon._settle_gc): what lives now
    # is kept out of the cyclic collector's view. Without it, a full collection over
    # everything the test session has built stalls the loop for 0.2-0.4 s, pipeline or not.
    gc.collect()
    gc.freeze()
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    gaps.clear()
    start = time.perf_counter()
    for i, c in enumerate(cfg.checks):
        await pipeline.handle(ProbeResult(c.service, c.id, 1_000_000.0 + i * 1e-4, 0.01, Reason.HTTP_5XX))
    await pipeline.join()
    took = time.perf_counter() - start
    done = True
    await tick
    await pipeline.stop()
    gc.unfreeze()
    return max(gaps), took


async def test_the_consumer_gives_the_loop_a_turn_between_batches() -> None:
    """5,000 results queued at once: other tasks run many times while they are processed,
    never waiting for more than a quarter of the whole (so there were at least five
    turns; today's main ran them all in one go: a timer waited for all 5,000). The best
    of three tries: a machine busy elsewhere can stall one turn, but processing that
    does not yield fails every try. (A count of turns would depend on the machine's
    speed: the consumer slices by time.)"""
    cfg = config(5000, 500)
    tries = []
    for _ in range(3):
        longest, took = await longest_turn_waited(cfg)
        tries.append((longest, took))
        if longest < took / 4:
            break
    assert min(longest / took for longest, took in tries) < 1 / 4, tries


@pytest.mark.parametrize(("checks", "services"), [(3000, 1), (5000, 500)])
async def test_a_mass_outage_is_logged_in_a_few_lines_per_service(
        caplog: pytest.LogCaptureFixture, checks: int, services: int) -> None:
    """Every window is stored and published; the log has at most BURST lines of a
    service and BURST_ALL in all one by one, and one summary line per service with the
    count (today's main wrote one line per check: 3,000 lines)."""
    caplog.set_level(logging.INFO, logger="aipulse")
    cfg = config(checks, services)
    sink = MemorySink()
    pipeline = Pipeline(cfg, LiveState(), sink)
    for r in range(3):
        for i, c in enumerate(cfg.checks):
            await pipeline.handle(ProbeResult(c.service, c.id, 1_000_000.0 + 10 * r + i * 1e-4, 0.01,
                                              Reason.HTTP_5XX, detail="HTTP 503"))
    await pipeline.stop()  # writes the summaries of the period
    opened = [e for e in sink.events if type(e).__name__ == "WindowOpened" and e.window.check is not None]
    assert len(opened) == checks
    lines = [r.getMessage() for r in caplog.records]
    one_by_one = [line for line in lines if re.match(r"s\d+/c\d+: outage since", line)]
    summaries = [line for line in lines if "not logged one by one" in line]
    assert len(one_by_one) <= min(BURST * services, BURST_ALL), len(one_by_one)
    assert len(summaries) <= services
    counted = sum(int(m.group(1).replace(",", "")) for line in summaries
                  if (m := re.search(r"([\d,]+) outages began", line)))
    assert len(one_by_one) + counted == checks  # nothing unsaid: every window is in a line or a count
    assert all("http_5xx" in line for line in summaries if "outages began" in line)
    assert len(lines) < 3 * services + BURST_ALL + 10, len(lines)


# ------------------------------------------------------------------- end to end

SWITCH = r"""
import asyncio, signal, sys
status = [200]
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        body = b"ok" if status[0] == 200 else b"failing"
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (status[0], len(body), body))
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: status.__setitem__(0, 503))
    loop.add_signal_handler(signal.SIGUSR2, lambda: status.__setitem__(0, 200))
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=2048)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@dataclass
class Switch:
    """A cheap target in a process of its own (a bare asyncio server): every request
    answered at once with 200, or 503 after `fail()`, then closed."""

    proc: subprocess.Popen[str]
    port: int

    def fail(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def recover(self) -> None:
        self.proc.send_signal(signal.SIGUSR2)


@contextlib.contextmanager
def serve_switch() -> Iterator[Switch]:
    proc = subprocess.Popen([sys.executable, "-c", SWITCH], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield Switch(proc, int(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def timed(url: str, timeout: float = 30.0) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    r = httpx.get(url, timeout=timeout)
    return time.perf_counter() - start, r


def active_windows(metrics: str) -> int:
    return sum(1 for line in metrics.splitlines() if line.startswith("aipulse_outage_active{") and
               line.endswith(" 1.0"))


def probed_ok(metrics: str) -> int:
    return sum(1 for line in metrics.splitlines() if line.startswith("aipulse_probe_success{") and
               line.endswith(" 1.0"))


def stop_within(proc: Any, seconds: float) -> float:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=seconds + 10)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.returncode
    assert took < seconds, took
    return took


@pytest.mark.parametrize(("checks", "services"), [(3000, 1), (600, 60)])
def test_a_mass_outage_keeps_the_daemon_answering_and_every_window_true(
        tmp_path: Path, checks: int, services: int) -> None:
    """The issue's own layout (3,000 checks in one service at 10 s: today's main stopped
    answering /metrics while they first came up, before any failed), and many services
    at a rate as high (200/s)."""
    interval = 10.0 if services == 1 else 3.0
    db = tmp_path / "history.db"
    with serve_switch() as switch:
        cfg = layout(checks, services, url=f"http://127.0.0.1:{switch.port}/x", interval=f"{interval:g}s",
                     timeout="2s", open_after=2, close_after=2)
        with start_daemon(cfg, tmp_path, db=db) as d:
            wait_for(lambda: probed_ok(d.get("/metrics").text) == checks, timeout=2 * interval + 5)
            calm = [timed(d.url("/healthz"))[0] for _ in range(20)]

            switch.fail()
            failing_since = time.monotonic()
            health: list[float] = []
            scrapes: list[float] = []
            while True:
                took, r = timed(d.url("/metrics"))
                scrapes.append(took)
                assert r.status_code == 200
                if active_windows(r.text) == checks:
                    break
                assert time.monotonic() - failing_since < 3 * interval + 10, "windows not open in time"
                for _ in range(5):
                    took, r = timed(d.url("/healthz"))
                    health.append(took)
                    assert r.status_code == 200
                    time.sleep(0.05)
            opened_after = time.monotonic() - failing_since
            assert opened_after <= 3 * interval + 2, opened_after
            # Answering all along: no worse than a busy moment of the calm daemon.
            assert max(health) < max(1.0, 10 * max(calm)), (max(health), max(calm))
            assert max(scrapes) < 2.0 + 10 * max(calm), max(scrapes)
            stop_within(d.proc, 5.0)
        text = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in text
        assert len(re.findall(r"s\d+/c\d+: outage since", text)) <= BURST_ALL
        assert "not logged one by one" in text

        # Across a restart the windows stay open; after the recovery every one closes.
        with start_daemon(cfg, tmp_path, db=db, log_name="again.log") as d:
            wait_for(lambda: active_windows(d.get("/metrics").text) == checks, timeout=10)
            switch.recover()
            recovering_since = time.monotonic()
            wait_for(lambda: active_windows(d.get("/metrics").text) == 0, timeout=3 * interval + 10)
            assert time.monotonic() - recovering_since <= 3 * interval + 2
            stop_within(d.proc, 5.0)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT check_id, end_ts FROM windows WHERE check_id != ''").fetchall()
        services_open = conn.execute("SELECT count(*) FROM windows WHERE check_id = '' AND end_ts IS NULL")
        assert services_open.fetchone()[0] == 0
    assert len(rows) == checks and all(end is not None for _, end in rows)
