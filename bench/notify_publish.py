"""What notification targets cost the event loop in a mass outage.

In-process, no network, nothing sent: N checks of one service open a window each,
then close it, published to a TargetNotifier with two targets (one holding windows
for min_duration, one not) exactly as the pipeline publishes them. Prints the time
`publish` took in all (the probe path's share) and per event.

    python bench/notify_publish.py            # 3,000 checks
    python bench/notify_publish.py --checks 10000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.config import parse
from monitor.delivery import TargetNotifier
from monitor.live import LiveState
from monitor.outage import OutageWindow, WindowClosed, WindowOpened


async def main(checks: int) -> None:
    doc = {"notify": {"targets": [
               {"name": "held", "url": "json://127.0.0.1:9/a", "min_duration": "1m"},
               {"name": "all", "url": "json://127.0.0.1:9/b"}]},
           "services": {"s": {"checks": {f"c{i:05d}": {"url": "http://127.0.0.1:9/"}
                                         for i in range(checks)}}}}
    cfg = parse(yaml.safe_dump(doc), "bench.yaml", env={})
    live = LiveState()
    live.set_services(cfg.services)
    notifier = TargetNotifier(cfg, live)
    now = time.time()
    windows = [OutageWindow("s", f"c{i:05d}", "down", now - 5 + i / 1000) for i in range(checks)]
    started = time.perf_counter()
    for w in windows:
        notifier.publish(WindowOpened(w))
    opened = time.perf_counter() - started
    started = time.perf_counter()
    for w in windows:
        notifier.publish(WindowClosed(replace(w, end=time.time())))
    closed = time.perf_counter() - started
    print(f"{checks} openings: {opened * 1000:.1f} ms ({opened / checks * 1e6:.1f} us each); "
          f"{checks} closings: {closed * 1000:.1f} ms ({closed / checks * 1e6:.1f} us each); 2 targets")
    await notifier.aclose(0.0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=3000)
    asyncio.run(main(p.parse_args().checks))
