"""Staying on time under abuse (issue 15): the daemon against four kinds of load, each
on a fresh daemon, with control checks (20 at 1 s, timeout 800 ms, on a host of their
own) that should not notice.

  rate       `--checks` (2,000) checks at 10 s on one host: 200 probes/s asked of a
             host limited to 20/s (per_host_rate), so ~2,000 probes wait all the time
  slow-host  200 checks at 10 s (timeout 10 s) on a host that accepts and never
             answers, with max_in_flight 50: the hanging host would hold every slot
  page       5,000 checks in 500 services at 60 s on 10 hosts; 4 clients reload `/`
             back to back (gzip, as browsers ask) for the measured window
  readers    the same 5,000 checks; 20 clients ask for `/` uncompressed and never read

`page` and `readers` first measure `--calm` seconds without the readers; then each
scenario measures `--duration` seconds of abuse. Reported: the daemon's CPU (% of one core), /healthz time
(every 100 ms, fresh connection: p50/p99/max), /metrics time (every 2 s, gzipped),
and the control checks' probes (ok / timed out / expected); `page` adds pages served,
`readers` the daemon's RSS before, while they wait, and after they left.

    .venv/bin/python bench/abuse.py                       # every scenario, 20 s each
    .venv/bin/python bench/abuse.py page readers --duration 30
    .venv/bin/python bench/abuse.py --src /path/to/old/checkout     # before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CONTROL = 20  # control checks, 1 s interval


def config_text(port: int, db: Path, control: str, services: list[tuple[str, list[str], str, str]],
                max_in_flight: int = 1000) -> str:
    """services: (id, urls, interval, timeout); plus the control service on `control`."""
    lines = [f"listen: 127.0.0.1:{port}", "location: bench", "storage:", f"  path: {db}",
             "limits:", f"  max_in_flight: {max_in_flight}", "  per_host_rate: 20", "services:",
             "  control:", "    checks:"]
    for i in range(CONTROL):
        lines += [f"      ok{i}:", f"        url: {control}/ok{i}", "        interval: 1s",
                  "        timeout: 800ms"]
    for sid, urls, interval, timeout in services:
        lines += [f"  {sid}:", "    checks:"]
        for i, url in enumerate(urls):
            lines += [f"      c{i}:", f"        url: {url}", f"        interval: {interval}",
                      f"        timeout: {timeout}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def hanging_host(host: str) -> Iterator[int]:
    """A TCP server on `host` that accepts and never answers (in a thread)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    async def start() -> None:
        server = await asyncio.start_server(hold, host, 0, backlog=4096)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()),
                              daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)


class Watch:
    """/healthz every 100 ms and /metrics every 2 s, in threads, until stopped."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.healthz: list[float] = []
        self.metrics: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=("/healthz", 0.1, self.healthz, False)),
                         threading.Thread(target=self._poll, args=("/metrics", 2.0, self.metrics, True))]

    def _poll(self, path: str, every: float, out: list[float], gzipped: bool) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            with contextlib.suppress(OSError):
                common.http_get(self.base + path, timeout=60, gzipped=gzipped)
            out.append(time.perf_counter() - t0)
            self._stop.wait(max(0.0, every - (time.perf_counter() - t0)))

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def _control(text: str, reason: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("aipulse_probes_total{") and 'service="control"' in line
                and f'reason="{reason}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def control(base: str) -> tuple[float, float]:
    _, body = common.http_get(base + "/metrics", timeout=60, gzipped=True)
    text = body.decode()
    return _control(text, "ok"), _control(text, "timeout")


def measure(proc_pid: int, base: str, seconds: float) -> dict[str, Any]:
    ok0, to0 = control(base)
    cpu0, t0 = common.cpu_seconds(proc_pid), time.monotonic()
    with Watch(base) as watch:
        time.sleep(seconds)
    wall = time.monotonic() - t0
    cpu = common.cpu_seconds(proc_pid) - cpu0
    ok1, to1 = control(base)
    h = watch.healthz or [float("nan")]
    m = watch.metrics or [float("nan")]
    return {"cpu_percent": 100 * cpu / wall, "healthz_p50": statistics.median(h),
            "healthz_p99": common.percentile(h, 0.99), "healthz_max": max(h),
            "metrics_p50": statistics.median(m), "metrics_max": max(m),
            "control_ok": ok1 - ok0, "control_timeouts": to1 - to0, "control_expected": CONTROL * wall}


def row(name: str, r: dict[str, Any]) -> str:
    return (f"{name:7} CPU {r['cpu_percent']:5.1f} %  /healthz p50 {r['healthz_p50'] * 1000:6.1f} ms, "
            f"p99 {r['healthz_p99'] * 1000:7.1f} ms, max {r['healthz_max'] * 1000:7.1f} ms  /metrics p50 "
            f"{r['metrics_p50'] * 1000:6.1f} ms, max {r['metrics_max'] * 1000:7.1f} ms  control: "
            f"{r['control_ok']:.0f} ok, {r['control_timeouts']:.0f} timed out of "
            f"~{r['control_expected']:.0f}")


@contextlib.contextmanager
def daemon(tmp: Path, text: str, port: int, args: argparse.Namespace, warmup: float) -> Iterator[Any]:
    (tmp / "config.yaml").write_text(text)
    log = tmp / "daemon.log"
    proc = common.start_aipulse(tmp / "config.yaml", src=args.src, loop=args.loop, log_path=log)
    base = f"http://127.0.0.1:{port}"
    try:
        common.wait_http(base + "/readyz", timeout=120, proc=proc)
        time.sleep(warmup)
        yield proc, base
    finally:
        common.stop(proc)


def rss_mib(pid: int) -> float:
    return common.status_kib(pid, "VmRSS") / 1024


def readers_reloading(base: str, n: int, stop: threading.Event, times: list[float]) -> list[threading.Thread]:
    """`n` clients asking for `/` back to back, gzip accepted as browsers do; the body
    is read but not inflated (a browser does that on its own machine, not on ours)."""
    def reload() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            with contextlib.suppress(OSError), urllib.request.urlopen(urllib.request.Request(
                    base + "/", headers={"Accept-Encoding": "gzip"}), timeout=120) as resp:
                resp.read()
            times.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=reload, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def scenario(name: str, args: argparse.Namespace, target: common.Target, hang_port: int, tmp: Path) -> None:
    port = common.free_port()
    (host, tport), (chost, cport) = target.addresses[0], target.addresses[1]
    spread = [h for h, _ in target.addresses[2:]]
    control_url = f"http://{chost}:{cport}"
    db = tmp / f"{name}.db"
    if name == "rate":
        services = [(f"s{i:03d}", [f"http://{host}:{tport}/r{i}-{j}" for j in range(10)], "10s", "5s")
                    for i in range(args.checks // 10)]
        text, warmup = config_text(port, db, control_url, services), 11.0
    elif name == "slow-host":  # 20 probes/s (within the rate), each hanging for 10 s
        services = [(f"s{i:03d}", [f"http://127.0.0.2:{hang_port}/h{i}-{j}" for j in range(10)], "10s", "10s")
                    for i in range(20)]
        text, warmup = config_text(port, db, control_url, services, max_in_flight=50), 11.0
    else:  # 8.3 probes/s on each of 10 hosts: within the rate
        services = [(f"s{i:03d}", [f"http://{spread[i % len(spread)]}:{tport}/p{i}-{j}" for j in range(10)],
                     "60s", "5s") for i in range(500)]
        text, warmup = config_text(port, db, control_url, services), 10.0
    with daemon(tmp, text, port, args, warmup) as (proc, base):
        if name in ("page", "readers"):  # the others are abused by their config, from the start
            print(row("calm", measure(proc.pid, base, args.calm)), flush=True)
        if name == "page":
            stop = threading.Event()
            times: list[float] = []
            threads = readers_reloading(base, 4, stop, times)
            loaded = measure(proc.pid, base, args.duration)
            stop.set()
            for t in threads:
                t.join(120)
            print(row("abused", loaded))
            print(f"        pages served {len(times)} ({len(times) / args.duration:.1f}/s), page time p50 "
                  f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
        elif name == "readers":
            _, page = common.http_get(base + "/", timeout=120)  # built once: its own memory is not theirs
            before = rss_mib(proc.pid)
            socks = []
            for _ in range(20):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET / HTTP/1.1\r\nHost: aipulse\r\n\r\n")
                socks.append(s)
            for s in socks:  # each has been answered: what the daemon holds for it, it holds now
                s.settimeout(120)
                s.recv(1, socket.MSG_PEEK)
            during = rss_mib(proc.pid)
            loaded = measure(proc.pid, base, args.duration)
            print(row("abused", loaded))
            for s in socks:
                s.close()
            time.sleep(5)
            after = rss_mib(proc.pid)
            print(f"        RSS {before:.0f} MiB before, {during:.0f} MiB with 20 readers waiting "
                  f"(+{during - before:.0f}), {after:.0f} MiB 5 s after they left (+{after - before:.0f}); "
                  f"the page is {len(page) / 1e6:.1f} MB uncompressed")
        else:
            loaded = measure(proc.pid, base, args.duration)
            print(row("abused", loaded))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=["rate", "slow-host", "page", "readers"],
                   help="rate, slow-host, page, readers (default: all)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of abuse (default 20)")
    p.add_argument("--calm", type=float, default=10.0, help="seconds measured before it (default 10)")
    p.add_argument("--checks", type=int, default=2000, help="checks on the one host of `rate`")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None)
    p.add_argument("--src", default=None, help="run the aipulse of another checkout (before/after)")
    p.add_argument("--max-load", type=float, default=None)
    args = p.parse_args()
    if args.max_load is not None:
        common.wait_for_load(args.max_load, 600)
    print(common.machine())
    tport = common.free_port()
    with tempfile.TemporaryDirectory(prefix="aipulse-abuse-") as tmp_dir, \
            common.target([("127.0.0.1", tport), ("127.0.0.4", tport),
                           *((f"127.0.0.{i}", tport) for i in range(10, 20))]) as target, \
            hanging_host("127.0.0.2") as hang_port:
        for name in args.scenarios:
            src = f" (--src {args.src})" if args.src else ""
            print(f"\n== {name}{src}, load average {common.loadavg():.2f}", flush=True)
            sub = Path(tmp_dir) / name
            sub.mkdir()
            scenario(name, args, target, hang_port, sub)


if __name__ == "__main__":
    main()
