"""What asyncio-throttle (the per-host limiter) costs when probes wait on one host.

In-process, no network: N checks against one host, each a task that waits its due
time like the scheduler does, then `async with Throttler(...)` around a stand-in
probe (`await asyncio.sleep(0)`). Prints process CPU % of one core and how long the
throttler held starts back (p50/p99/max), for:

  spread   checks at their stable spread offsets (what `aipulse run` does)
  burst    every check due at the same instant each interval (no spread)
  overload more checks than the rate allows (demand above per_host_rate): a queue
           of waiters that never drains

    python bench/throttle.py                 # 30 s per case
    python bench/throttle.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from asyncio_throttle import Throttler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.scheduler import spread_offset


async def run_case(checks: int, interval: float, rate: float, seconds: float,
                   spread: bool) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    throttler = Throttler(rate_limit=rate, period=1.0)
    waits: list[float] = []
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
            async with throttler:
                waits.append(loop.time() - asked)
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(check(i)) for i in range(checks)]
    await asyncio.sleep(0.5 + interval)  # past the first round
    waits.clear()
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ms = sorted(w * 1000 for w in waits) or [0.0]
    return {"starts_per_s": len(waits) / wall, "cpu_percent": 100 * cpu / wall,
            "wait_p50_ms": statistics.median(ms), "wait_p99_ms": ms[max(0, int(len(ms) * 0.99) - 1)],
            "wait_max_ms": ms[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per case")
    p.add_argument("--rate", type=float, default=20.0, help="per_host_rate (default 20, as aipulse's)")
    args = p.parse_args()
    cases = [
        ("spread", 200, 30.0, True),    # bench/scale.py: 200 checks per host at 30 s (6.7/s)
        ("spread", 500, 30.0, True),    # 16.7/s, close to the rate
        ("burst", 200, 30.0, False),    # 200 due at once every 30 s
        ("overload", 100, 2.0, True),   # 50/s asked of a 20/s host
        ("overload", 400, 10.0, True),  # 40/s asked: ~400 waiters all the time
    ]
    print(f"asyncio-throttle, rate {args.rate:g}/s per host, {args.seconds:g} s per case")
    print(f"{'case':9} {'checks':>6} {'interval':>8} {'starts/s':>8} {'CPU %':>6} "
          f"{'wait p50':>9} {'p99':>9} {'max':>9}")
    for name, checks, interval, spread in cases:
        r = asyncio.run(run_case(checks, interval, args.rate, args.seconds, spread))
        print(f"{name:9} {checks:6d} {interval:7g}s {r['starts_per_s']:8.1f} {r['cpu_percent']:6.1f} "
              f"{r['wait_p50_ms']:7.1f}ms {r['wait_p99_ms']:7.1f}ms {r['wait_max_ms']:7.1f}ms", flush=True)


if __name__ == "__main__":
    main()
