"""10,000 checks at a 30 s interval on one machine: timeliness, CPU, memory, scrape, reload.

    python bench/scale.py                      # 10,000 checks, 5 measured minutes
    python bench/scale.py --duration 60        # smoke run

Targets: local nginx on 127.0.0.1 .. 127.0.0.<hosts> (one port), so each host gets
checks / hosts of the checks and the per-host rate limit (default 20/s) does not bind.
aipulse runs as a real daemon (`aipulse run`) with the full pipeline and SQLite history.

Phase 1: 1,000 checks: /metrics scrape time and size.
Phase 2: 10,000 checks: start-up time (process start to /readyz 200), then a measured
window of `--duration` seconds after a warm-up of one interval + 5 s, with /metrics
scraped every 15 s as Prometheus would, and two reloads (POST /-/reload) of the
10,000-check config: the same file at 1/3 of the window, and at 2/3 a file in which
every check changed (all 10,000 check tasks restart).

Timeliness is measured twice: by the daemon's own aipulse_scheduler_lag_seconds
histogram (due time -> probe start) and from nginx's access log (arrival of each
request vs its check's fixed-rate schedule, relative to the earliest arrival; this
includes connect time and shows the true maximum and any missed interval or gap).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

sys.path.insert(0, str(common.ROOT))
from monitor.scheduler import spread_offset


def timed_get(url: str, method: str = "GET") -> tuple[float, int, int]:
    """(seconds, status, body size); /metrics is asked for gzipped, as Prometheus does
    (the time includes inflating it; the size is the inflated one)."""
    t0 = time.perf_counter()
    wire: list[int] = []
    status, body = common.http_get(url, timeout=120, method=method, gzipped=url.endswith("/metrics"),
                                   wire=wire)
    WIRE_BYTES[url.rsplit("/", 1)[-1]] = wire[0] if wire else 0
    return time.perf_counter() - t0, status, len(body)


WIRE_BYTES: dict[str, int] = {}  # the last response's size on the wire, by last path part


def urls_for(n: int, hosts: int, port: int) -> list[str]:
    return [f"http://127.0.0.{i % hosts + 1}:{port}/c{i:05d}" for i in range(n)]


def scrape_phase(args: argparse.Namespace, tmp: Path, port: int) -> dict[str, object]:
    """/metrics at `args.small` checks."""
    listen = common.free_port()
    cfg = tmp / "small.yaml"
    common.write_config(cfg, urls_for(args.small, args.hosts, port), interval=args.interval,
                        db=tmp / "small.db", listen=f"127.0.0.1:{listen}")
    proc = common.start_aipulse(cfg, src=args.src, loop=args.loop, log_path=tmp / "small.log")
    try:
        common.wait_http(f"http://127.0.0.1:{listen}/readyz", timeout=120, proc=proc)
        time.sleep(args.interval_s + 3)  # every check has a result
        times, size = [], 0
        for _ in range(5):
            dt, status, size = timed_get(f"http://127.0.0.1:{listen}/metrics")
            assert status == 200
            times.append(dt)
            time.sleep(1)
    finally:
        common.stop(proc)
    return {"checks": args.small, "scrape_s": times, "scrape_bytes": size,
            "scrape_wire_bytes": WIRE_BYTES["metrics"]}


def arrivals_by_check(log: list[tuple[float, str]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = collections.defaultdict(list)
    for t, uri in log:
        if uri.startswith("/c"):
            out[int(uri[2:])].append(t)
    return out


def arrival_analysis(by_check: dict[int, list[float]], interval: float, per_service: int,
                     lo: float, hi: float) -> dict[str, float]:
    """Lag of each arrival vs its check's schedule (relative to the earliest), missed ticks."""
    phase: list[float] = []
    missed = 0
    for i, times in by_check.items():
        offset = spread_offset(f"svc{i // per_service:05d}", f"c{i:05d}", interval)
        window = [t for t in times if lo <= t <= hi]
        phase += [(t - offset) % interval for t in window]
        for a, b in itertools.pairwise(window):
            missed += max(0, round((b - a) / interval) - 1)
    if not phase:
        return {}
    mid = statistics.median(phase)
    rel = [((p - mid + interval / 2) % interval) - interval / 2 for p in phase]
    base = min(rel)
    lags = [r - base for r in rel]
    return {"n": len(lags), "p50": common.percentile(lags, 0.5), "p99": common.percentile(lags, 0.99),
            "max": max(lags), "missed_ticks": missed}


def max_gap(times: list[float], lo: float, hi: float) -> float:
    window = sorted(t for t in times if lo <= t <= hi)
    return max((b - a for a, b in itertools.pairwise(window)), default=float("nan"))


def main_phase(args: argparse.Namespace, tmp: Path, port: int, access_log: Path) -> dict[str, object]:
    listen = common.free_port()
    base = f"http://127.0.0.1:{listen}"
    cfg = tmp / "big.yaml"
    urls = urls_for(args.checks, args.hosts, port)
    write = lambda timeout: common.write_config(  # noqa: E731
        cfg, urls, interval=args.interval, timeout=timeout, db=tmp / "big.db", listen=f"127.0.0.1:{listen}")
    write("5s")
    t_spawn = time.monotonic()
    # POST /-/reload needs the lifecycle flag (a checkout from before it: give --no-lifecycle-flag)
    proc = common.start_aipulse(cfg, src=args.src, loop=args.loop, log_path=tmp / "big.log",
                                run_args=() if args.no_lifecycle_flag else ("--web.enable-lifecycle",))
    out: dict[str, object] = {"checks": args.checks}
    try:
        t_ready = common.wait_http(f"{base}/readyz", timeout=300, proc=proc)
        out["startup_s"] = t_ready - t_spawn
        time.sleep(args.interval_s + 5)
        _, _, _ = timed_get(f"{base}/metrics")
        text0 = common.http_get(f"{base}/metrics")[1].decode()
        cpu0, t0, w0 = common.cpu_seconds(proc.pid), time.monotonic(), time.time()
        reloads: list[dict[str, float | str]] = []
        scrapes: list[tuple[float, int]] = []
        plan = [(args.duration / 3, "same config"), (2 * args.duration / 3, "every check changed")]
        next_scrape = 0.0
        while (now := time.monotonic() - t0) < args.duration:
            if plan and now >= plan[0][0]:
                _, what = plan.pop(0)
                if what == "every check changed":
                    write("4s")
                wall = time.time()
                dt, status, _ = timed_get(f"{base}/-/reload", method="POST")
                assert status == 200, status
                reloads.append({"what": what, "seconds": dt, "at": wall})
                continue
            if now >= next_scrape:
                dt, status, size = timed_get(f"{base}/metrics")
                assert status == 200
                scrapes.append((dt, size))
                next_scrape = now + args.scrape_every
                continue
            time.sleep(min(0.5, max(0.0, min(next_scrape, plan[0][0] if plan else args.duration) - now)))
        text1 = common.http_get(f"{base}/metrics")[1].decode()
        cpu1, t1, w1 = common.cpu_seconds(proc.pid), time.monotonic(), time.time()
        out["peak_rss_mib"] = common.status_kib(proc.pid, "VmHWM") / 1024
        out["rss_mib"] = common.status_kib(proc.pid, "VmRSS") / 1024
    finally:
        common.stop(proc)
    window = t1 - t0
    probes = (common.metric_sum(text1, "aipulse_probes_total")
              - common.metric_sum(text0, "aipulse_probes_total"))
    ok = (common.metric_sum(text1, "aipulse_probes_total", 'reason="ok"')
          - common.metric_sum(text0, "aipulse_probes_total", 'reason="ok"'))
    lag = common.bucket_diff(common.histogram(text0, "aipulse_scheduler_lag_seconds"),
                             common.histogram(text1, "aipulse_scheduler_lag_seconds"))
    top = max((le for le, n in lag if n > 0 and le != float("inf")), default=float("nan"))
    prev = 0.0
    for le, n in lag:  # the highest bucket that gained observations bounds the max
        if n > prev:
            top = le
        prev = n
    out.update({
        "window_s": window,
        "probes_per_s": probes / window,
        "expected_per_s": args.checks / args.interval_s,
        "failed_probes": probes - ok,
        "cpu_percent": (cpu1 - cpu0) / window * 100,
        "cpu_ms_per_probe": (cpu1 - cpu0) / probes * 1000 if probes else float("nan"),
        "lag_hist_p50_ms": common.quantile(lag, 0.5) * 1000,
        "lag_hist_p99_ms": common.quantile(lag, 0.99) * 1000,
        "lag_hist_max_bucket_ms": top * 1000,
        "missed_intervals_counter": common.metric_sum(text1, "aipulse_scheduler_missed_intervals_total")
        - common.metric_sum(text0, "aipulse_scheduler_missed_intervals_total"),
        "scrape_s": [s for s, _ in scrapes],
        "scrape_bytes": scrapes[-1][1] if scrapes else 0,
        "scrape_wire_bytes": WIRE_BYTES.get("metrics", 0),
        "reloads": reloads,
    })
    time.sleep(1.5)  # nginx flushes its access log every second
    by_check = arrivals_by_check(common.read_access_log(access_log))
    out["arrivals"] = arrival_analysis(by_check, args.interval_s, 10, w0, w1)
    everything = sorted(t for times in by_check.values() for t in times)
    out["max_gap_ms_window"] = max_gap(everything, w0, w1) * 1000
    for r in reloads:
        at, dt = float(r["at"]), float(r["seconds"])
        r["max_gap_ms"] = max_gap(everything, at - 1, at + dt + 1) * 1000
        r["arrivals_during"] = sum(1 for t in everything if at <= t <= at + dt)
    return out


def fmt_ms(values: list[float]) -> str:
    if not values:
        return "-"
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms (n={len(ms)})"


def report(small: dict[str, object], big: dict[str, object], args: argparse.Namespace) -> None:
    a = big.get("arrivals") or {}
    print(f"\n== /metrics at {small['checks']} checks: {fmt_ms(small['scrape_s'])}, "  # type: ignore[arg-type]
          f"{int(small['scrape_bytes']) / 1e6:.1f} MB ({int(small['scrape_wire_bytes']) / 1e6:.2f} MB "  # type: ignore[call-overload]
          "gzipped)")
    print(f"== {big['checks']} checks at {args.interval} ({big['expected_per_s']:.1f} probes/s due), "
          f"measured window {big['window_s']:.0f} s")
    print(f"start-up (process start -> /readyz 200): {big['startup_s']:.2f} s")
    print(f"probes/s achieved: {big['probes_per_s']:.1f} (failed: {big['failed_probes']:.0f})")
    print(f"scheduler lag (histogram): p50 {big['lag_hist_p50_ms']:.2f} ms, "
          f"p99 {big['lag_hist_p99_ms']:.2f} ms, "
          f"max <= {big['lag_hist_max_bucket_ms']:g} ms (highest bucket reached)")
    if a:
        print(f"arrival lag at nginx (vs schedule, relative to earliest; n={a['n']}): "
              f"p50 {a['p50'] * 1000:.2f} ms, "
              f"p99 {a['p99'] * 1000:.2f} ms, max {a['max'] * 1000:.1f} ms")
    print(f"missed intervals: counter {big['missed_intervals_counter']:.0f}, "
          f"from arrivals {a.get('missed_ticks', '?')}; largest gap between any two requests "
          f"{big['max_gap_ms_window']:.1f} ms")
    print(f"CPU: {big['cpu_percent']:.1f} % of one core ({big['cpu_ms_per_probe']:.3f} ms per probe, "
          f"scrapes and reloads included)")
    print(f"peak RSS (VmHWM): {big['peak_rss_mib']:.0f} MiB (RSS at end {big['rss_mib']:.0f} MiB)")
    print(f"/metrics at {big['checks']} checks: {fmt_ms(big['scrape_s'])}, "  # type: ignore[arg-type]
          f"{int(big['scrape_bytes']) / 1e6:.1f} MB ({int(big['scrape_wire_bytes']) / 1e6:.2f} MB "  # type: ignore[call-overload]
          "gzipped)")
    for r in big["reloads"]:  # type: ignore[attr-defined]
        print(f"reload ({r['what']}): {r['seconds'] * 1000:.0f} ms; requests arriving during it: "
              f"{r['arrivals_during']}, largest gap between two requests around it "
              f"{r['max_gap_ms']:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checks", type=int, default=10_000)
    p.add_argument("--small", type=int, default=1_000, help="checks of the first /metrics phase")
    p.add_argument("--interval", default="30s")
    p.add_argument("--duration", type=float, default=300.0, help="measured seconds (default 300)")
    p.add_argument("--hosts", type=int, default=50, help="target addresses 127.0.0.1..N (default 50)")
    p.add_argument("--scrape-every", type=float, default=15.0)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None,
                   help="event loop of the daemon (AIPULSE_LOOP; default: uvloop when installed)")
    p.add_argument("--src", default=None,
                   help="run the aipulse of this checkout instead of the installed one (before/after)")
    p.add_argument("--skip-small", action="store_true", help="skip the 1,000-check phase")
    p.add_argument("--no-lifecycle-flag", action="store_true",
                   help="do not pass --web.enable-lifecycle (a --src checkout from before it)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 10 min) for the 1-minute load average to drop below this")
    args = p.parse_args()
    args.interval_s = float(args.interval.rstrip("s"))
    print(f"machine: {common.machine()}")
    if args.max_load:
        print(f"load average (1 min) at start: {common.wait_for_load(args.max_load, 600):.2f}")
    port = common.free_port()
    addresses = [(f"127.0.0.{i + 1}", port) for i in range(args.hosts)]
    with tempfile.TemporaryDirectory(prefix="aipulse-scale-") as tmpdir, \
            common.target(addresses, access_log=True) as tgt:
        tmp = Path(tmpdir)
        print(f"target: {tgt.kind} on 127.0.0.1..127.0.0.{args.hosts} port {port}")
        small = ({"checks": args.small, "scrape_s": [], "scrape_bytes": 0, "scrape_wire_bytes": 0}
                 if args.skip_small else scrape_phase(args, tmp, port))
        assert tgt.access_log is not None
        big = main_phase(args, tmp, port, tgt.access_log)
    report(small, big, args)
    print(f"load average at end: {common.loadavg():.2f}")
    if args.json:
        args.json.write_text(json.dumps({"small": small, "big": big}, indent=2, default=str))


if __name__ == "__main__":
    main()
