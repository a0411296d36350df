"""What the per-host limiter costs when probes wait on one host: asyncio-throttle
(what aipulse used until issue 15) against aiolimiter (what it uses now).

In-process, no network: N checks against one host, each a task that waits its due
time like the scheduler does, then goes through the limiter around a stand-in probe
(`await asyncio.sleep(0)`). Meanwhile a ticker asks the loop for a 10 ms sleep over
and over; how late it wakes is what every other task of the daemon (a probe's
timeout, /metrics, /healthz) would wait. Prints, per limiter and case: starts per
second, process CPU % of one core, how long the limiter held starts back (p50/p99/
max), and how late the loop ran the ticker (p99/max).

  spread   checks at their stable spread offsets (what `aipulse run` does)
  burst    every check due at the same instant each interval (no spread)
  overload more checks than the rate allows (demand above per_host_rate): a queue
           of waiters that never drains

    python bench/throttle.py                       # 20 s per case, both limiters
    python bench/throttle.py --seconds 10 --limiter aiolimiter

asyncio-throttle is no longer a dependency of aipulse: `pip install asyncio-throttle`
to measure it (it is skipped otherwise). The figures with the whole daemon (CPU,
/metrics time) are in `bench/abuse.py rate`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.scheduler import rate_limiter, spread_offset


def asyncio_throttle(rate: float) -> Any:
    from asyncio_throttle import Throttler  # the limiter before issue 15: polls every 10 ms

    return Throttler(rate_limit=rate, period=1.0)


LIMITERS: dict[str, Callable[[float], Any]] = {"asyncio-throttle": asyncio_throttle,
                                               "aiolimiter": rate_limiter}


async def run_case(make: Callable[[float], Any], checks: int, interval: float, rate: float, seconds: float,
                   spread: bool) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    limiter = make(rate)
    waits: list[float] = []
    late: list[float] = []
    epoch = loop.time() + 0.5

    async def check(i: int) -> None:
        offset = spread_offset("svc", f"c{i:05d}", interval) if spread else 0.0
        tick = 0
        while True:
            due = epoch + offset + tick * interval
            tick += 1
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            asked = loop.time()
            async with limiter:
                waits.append(loop.time() - asked)
                await asyncio.sleep(0)

    async def ticker() -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(0.01)
            late.append(time.perf_counter() - asked - 0.01)

    tasks = [asyncio.create_task(check(i)) for i in range(checks)]
    tasks.append(asyncio.create_task(ticker()))
    await asyncio.sleep(0.5 + interval)  # past the first round
    waits.clear()
    late.clear()
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ms = sorted(w * 1000 for w in waits) or [0.0]
    lms = sorted(x * 1000 for x in late) or [0.0]
    return {"starts_per_s": len(waits) / wall, "cpu_percent": 100 * cpu / wall,
            "wait_p50_ms": statistics.median(ms), "wait_p99_ms": ms[max(0, int(len(ms) * 0.99) - 1)],
            "wait_max_ms": ms[-1], "late_p99_ms": lms[max(0, int(len(lms) * 0.99) - 1)],
            "late_max_ms": lms[-1]}


CASES = [
    ("spread", 200, 30.0, True),     # bench/scale.py: 200 checks per host at 30 s (6.7/s)
    ("spread", 500, 30.0, True),     # 16.7/s, close to the rate
    ("burst", 200, 30.0, False),     # 200 due at once every 30 s
    ("overload", 100, 2.0, True),    # 50/s asked of a 20/s host
    ("overload", 400, 10.0, True),   # 40/s asked: ~400 waiters all the time
    ("overload", 2000, 10.0, True),  # 200/s asked: ~2,000 waiters
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per case (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="per_host_rate (default 20, as aipulse's)")
    p.add_argument("--limiter", choices=[*LIMITERS, "both"], default="both")
    args = p.parse_args()
    names = list(LIMITERS) if args.limiter == "both" else [args.limiter]
    with contextlib.suppress(OSError):
        print(f"load average {Path('/proc/loadavg').read_text().split()[0]} at start")
    print(f"rate {args.rate:g}/s per host, {args.seconds:g} s per case")
    print(f"{'limiter':16} {'case':9} {'checks':>6} {'interval':>8} {'starts/s':>8} {'CPU %':>6} "
          f"{'wait p50':>9} {'p99':>9} {'max':>9} {'loop late p99':>13} {'max':>8}")
    for name in names:
        try:
            LIMITERS[name](args.rate)
        except ImportError:
            print(f"{name:16} not installed: skipped (pip install {name})")
            continue
        for case, checks, interval, spread in CASES:
            r = asyncio.run(run_case(LIMITERS[name], checks, interval, args.rate, args.seconds, spread))
            print(f"{name:16} {case:9} {checks:6d} {interval:7g}s {r['starts_per_s']:8.1f} "
                  f"{r['cpu_percent']:6.1f} {r['wait_p50_ms']:7.1f}ms {r['wait_p99_ms']:7.1f}ms "
                  f"{r['wait_max_ms']:7.1f}ms {r['late_p99_ms']:11.1f}ms {r['late_max_ms']:6.1f}ms",
                  flush=True)


if __name__ == "__main__":
    main()
