"""aipulse vs blackbox_exporter: CPU per HTTP probe against the same loopback nginx.

    python bench/side_by_side.py [--rate 200] [--duration 120] [--interval 15s] [--together]

* target: Debian's nginx on 127.0.0.1 (one worker, `return 200`, no keep-alive).
* blackbox_exporter: its binary with a temp config (module http_2xx), fed
  `/probe?module=http_2xx&target=...` at `--rate` per second by an asyncio client
  (keep-alive to the exporter, as Prometheus does); every probe opens a fresh
  connection to nginx (the http prober's default).
* aipulse: `aipulse run` as a daemon with N = rate x interval checks on the same
  target, the full pipeline on (phases, assertions, outage state, metrics, SQLite
  history); every probe opens a fresh connection (aipulse never keeps one). Its
  /metrics is scraped every `--scrape-every` seconds, as Prometheus would.

Only each process's own CPU is counted (user + system, /proc/<pid>/stat), over the same
measured window after a warm-up; probes are counted from their own answers
(blackbox: probe_success 1 responses; aipulse: the increase of aipulse_probes_total{reason="ok"}).
By default the two run one after the other in the same script run (no contention
between them); `--together` runs them at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BLACKBOX_CONFIG = """\
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      valid_status_codes: [200]
"""


@dataclass
class Outcome:
    name: str
    probes: int
    failed: int
    cpu: float
    seconds: float

    @property
    def per_1000(self) -> float:
        return self.cpu / self.probes * 1000 if self.probes else float("nan")

    @property
    def per_cpu_second(self) -> float:
        return self.probes / self.cpu if self.cpu else float("inf")


def parse_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


# ------------------------------------------------------------------ blackbox

async def feed_blackbox(port: int, target: str, rate: float, warmup: float, duration: float,
                        pid: int) -> Outcome:
    """Send /probe requests at `rate`; measure the exporter's CPU over [warmup, warmup+duration]."""
    url = f"http://127.0.0.1:{port}/probe"
    params = {"module": "http_2xx", "target": target}
    ok = failed = 0
    counting = False
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal ok, failed
            measured = counting
            try:
                async with session.get(url, params=params) as resp:
                    body = await resp.text()
                good = resp.status == 200 and "\nprobe_success 1" in body
            except aiohttp.ClientError:
                good = False
            if measured:
                if good:
                    ok += 1
                else:
                    failed += 1

        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        start = loop.time()
        cpu0 = t0 = None
        i = 0
        end = start + warmup + duration
        while True:
            due = start + i / rate
            if due >= end:
                break
            if cpu0 is None and due >= start + warmup:
                # Let the warm-up's probes finish before the window opens.
                await asyncio.gather(*tasks)
                counting = True
                cpu0, t0 = common.cpu_seconds(pid), time.monotonic()
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        cpu1, t1 = common.cpu_seconds(pid), time.monotonic()
    assert cpu0 is not None and t0 is not None
    return Outcome("blackbox_exporter", ok, failed, cpu1 - cpu0, t1 - t0)


@contextlib.contextmanager
def blackbox(tmp: Path):
    exe = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    if exe is None:
        sys.exit("blackbox_exporter not found: apt-get install -y prometheus-blackbox-exporter")
    conf = tmp / "blackbox.yml"
    conf.write_text(BLACKBOX_CONFIG)
    port = common.free_port()
    proc = subprocess.Popen([exe, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        common.wait_http(f"http://127.0.0.1:{port}/-/healthy", timeout=15, proc=proc)
        yield proc, port
    finally:
        common.stop(proc)


async def run_blackbox(tmp: Path, target: str, args: argparse.Namespace) -> Outcome:
    with blackbox(tmp) as (proc, port):
        return await feed_blackbox(port, target, args.rate, args.warmup, args.duration, proc.pid)


# ------------------------------------------------------------------ aipulse

async def scrape(port: int) -> str:
    # gzipped, as Prometheus asks for it (aipulse's CPU includes compressing it)
    status, body = await asyncio.to_thread(common.http_get, f"http://127.0.0.1:{port}/metrics", gzipped=True)
    assert status == 200, status
    return body.decode()


async def run_aipulse(tmp: Path, target: str, args: argparse.Namespace) -> tuple[Outcome, str]:
    interval = parse_seconds(args.interval)
    n = max(1, round(args.rate * interval))
    port = common.free_port()
    db = tmp / "aipulse.db"
    config = tmp / "aipulse.yaml"
    common.write_config(config, [target] * n, interval=args.interval, timeout="5s",
                        per_host_rate=max(20.0, args.rate * 4), max_in_flight=1000, db=db,
                        listen=f"127.0.0.1:{port}")
    proc = common.start_aipulse(config, src=args.src, loop=args.loop, log_path=tmp / "aipulse.log")
    try:
        common.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120, proc=proc)
        # Warm up over one whole interval (every check has started) plus args.warmup.
        await asyncio.sleep(interval + args.warmup)
        text0 = await scrape(port)
        cpu0, t0 = common.cpu_seconds(proc.pid), time.monotonic()
        end = t0 + args.duration
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(args.scrape_every, left))
            if end - time.monotonic() > 1:
                await scrape(port)
        text1 = await scrape(port)
        cpu1, t1 = common.cpu_seconds(proc.pid), time.monotonic()
        rss = common.status_kib(proc.pid, "VmHWM")
    finally:
        common.stop(proc)
    ok = common.metric_sum(text1, "aipulse_probes_total", 'reason="ok"') - common.metric_sum(
        text0, "aipulse_probes_total", 'reason="ok"')
    total = (common.metric_sum(text1, "aipulse_probes_total")
             - common.metric_sum(text0, "aipulse_probes_total"))
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    lag = common.bucket_diff(common.histogram(text0, "aipulse_scheduler_lag_seconds"),
                             common.histogram(text1, "aipulse_scheduler_lag_seconds"))
    note = (f"{n} checks at {args.interval}, {rows} results in SQLite, peak RSS {rss / 1024:.0f} MiB, "
            f"scheduler lag p50 {common.quantile(lag, 0.5) * 1000:.1f} ms "
            f"p99 {common.quantile(lag, 0.99) * 1000:.1f} ms")
    return Outcome("aipulse", int(ok), int(total - ok), cpu1 - cpu0, t1 - t0), note


# ------------------------------------------------------------------ main

def report(outcomes: list[Outcome], rate: float) -> None:
    print(f"\n{'':18} {'probes':>7} {'failed':>6} {'window s':>8} {'CPU s':>7} "
          f"{'CPU %':>6} {'CPU s/1000 probes':>17} {'probes/CPU-s':>12}")
    for o in outcomes:
        print(f"{o.name:18} {o.probes:7d} {o.failed:6d} {o.seconds:8.1f} {o.cpu:7.2f} "
              f"{o.cpu / o.seconds * 100:6.1f} {o.per_1000:17.3f} {o.per_cpu_second:12.0f}")
    by = {o.name: o for o in outcomes}
    ratio = by["aipulse"].per_cpu_second / by["blackbox_exporter"].per_cpu_second
    print(f"\nratio (probes per CPU-second, aipulse / blackbox_exporter): {ratio:.2f}"
          f"   (target >= 1.0, goal 2.0) at {rate:g} probes/s")


async def amain(args: argparse.Namespace) -> None:
    print(f"machine: {common.machine()}")
    if args.max_load:
        load = common.wait_for_load(args.max_load, timeout=600)
        print(f"load average (1 min) at start: {load:.2f}")
    port = common.free_port()
    with tempfile.TemporaryDirectory(prefix="aipulse-bench-") as tmpdir, \
            common.target([("127.0.0.1", port)], workers=args.nginx_workers) as tgt:
        tmp = Path(tmpdir)
        url = f"http://127.0.0.1:{port}/"
        checks = round(args.rate * parse_seconds(args.interval))
        print(f"target: {tgt.kind} at {url}; rate {args.rate:g} probes/s, measured window "
              f"{args.duration:g} s after warm-up; aipulse: {checks} checks at {args.interval}, "
              f"/metrics scraped every {args.scrape_every:g} s")
        ngx0 = common.tree_cpu_seconds(tgt.pid)
        if args.together:
            bb, (ap, note) = await asyncio.gather(run_blackbox(tmp, url, args),
                                                  run_aipulse(tmp, url, args))
        else:
            bb = await run_blackbox(tmp, url, args)
            ap, note = await run_aipulse(tmp, url, args)
        ngx = common.tree_cpu_seconds(tgt.pid) - ngx0
    print(f"aipulse: {note}")
    print(f"nginx (not counted): {ngx:.2f} CPU s over the run; load average at end {common.loadavg():.2f}")
    report([bb, ap], args.rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="probes per second for each (default 200)")
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds (default 120)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    p.add_argument("--interval", default="15s",
                   help="aipulse check interval; checks = rate x interval (default 15s)")
    p.add_argument("--scrape-every", type=float, default=15.0,
                   help="seconds between scrapes of aipulse's /metrics (default 15)")
    p.add_argument("--together", action="store_true", help="run both at the same time")
    p.add_argument("--nginx-workers", type=int, default=1)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None,
                   help="event loop of the daemon (AIPULSE_LOOP; default: uvloop when installed)")
    p.add_argument("--src", default=None,
                   help="run the aipulse of this checkout instead of the installed one (before/after)")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 10 min) for the 1-minute load average to drop below this")
    args = p.parse_args()
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
