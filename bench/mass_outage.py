"""A mass outage: every check failing at once, then recovering, across a restart.

    python bench/mass_outage.py                          # 3,000 checks in one service, then 5,000 as 500
    python bench/mass_outage.py --layout 3000/1          # one layout
    python bench/mass_outage.py --src /path/to/checkout  # before/after figures

Target: nginx on 127.0.0.1 .. 127.0.0.<hosts> (so the per-host rate does not bind),
answering 200, or 503 while a file exists (the switch). aipulse runs as a real daemon
(`aipulse run`, SQLite history) at `--interval` (10 s). For each layout:

1. every check answering: the daemon's /healthz latency at rest;
2. the switch: every check fails at once. /healthz is asked every 100 ms (5 s
   timeout), /metrics every 0.5 s after the last answer (30 s timeout); measured until
   every check's window is open (or 6 intervals): /healthz max and p99, /metrics max
   and median, time until every window is open as /metrics shows it (goal: within 3
   intervals; with `--open-after 2`, the default here, the second failure comes at
   most 2 intervals after the switch, so this includes the pipeline's delay and the
   scrape's; with 3 the last third failure itself may come 3 intervals after it), log
   lines;
3. a reload while it fails (POST /-/reload, the failing checks' timeout changed): how
   long the reload takes, /healthz meanwhile, and the control checks (10 at 1 s,
   timeout 800 ms, on an address of their own that keeps answering 200): probes that
   failed from the reload until 2 s after it, and control windows ever opened (goal:
   none; before this issue a reload of 3,000 checks took 8-48 s and timed them out);
4. SIGTERM while it fails: time to exit and the exit status (goal: 0 within 5 s;
   killed after 60 s);
5. a restart on the same database: windows open again after it (goal: all);
6. the switch back: time until every window is closed (goal: within 3 intervals),
   then SIGTERM again, and the windows still open in the database (goal: none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 0;
    server {{
        {listen}
        location /control/ {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location / {{
            default_type text/plain;
            if (-f {tmp}/down) {{ return 503 "down\\n"; }}
            return 200 "ok\\n";
        }}
    }}
}}
"""


@contextlib.contextmanager
def switch_target(hosts: int, port: int) -> Iterator[Path]:
    """nginx on 127.0.0.1..<hosts + 1>: 200, or 503 while the returned file exists;
    /control/ always 200."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="aipulse-bench-switch-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's workers (another user) look for the switch file here
        listen = "\n        ".join(f"listen 127.0.0.{i + 1}:{port} backlog=4096;" for i in range(hosts + 1))
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, listen=listen))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            common.wait_http(f"http://127.0.0.1:{port}/", timeout=15, proc=proc)
            yield Path(tmp) / "down"
        finally:
            common.stop(proc)


class Poller:
    """Asks `url` every `every` seconds in a thread; keeps (latency or None on failure)."""

    def __init__(self, url: str, every: float, timeout: float) -> None:
        self.url, self.every, self.timeout = url, every, timeout
        self.times: list[float | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                status, _ = common.http_get(self.url, timeout=self.timeout)
                self.times.append(time.perf_counter() - start if status == 200 else None)
            except OSError:
                self.times.append(None)
            self._stop.wait(max(0.0, self.every - (time.perf_counter() - start)))

    def stop(self) -> list[float | None]:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.times


def scrape(base: str, timeout: float = 30.0) -> tuple[float | None, str]:
    start = time.perf_counter()
    try:
        status, body = common.http_get(f"{base}/metrics", timeout=timeout, gzipped=True)
    except OSError:
        return None, ""
    return (time.perf_counter() - start if status == 200 else None), body.decode()


def sigterm(proc: subprocess.Popen[bytes], wait: float = 60.0) -> tuple[float, int | str]:
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | str = proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = f"killed after {wait:g} s"
    return time.monotonic() - start, code


def fmt(values: list[float | None], q: float | None = None) -> str:
    ok = [v for v in values if v is not None]
    failed = len(values) - len(ok)
    if not ok:
        return f"no answer ({failed} failed)"
    figure = max(ok) if q is None else common.percentile(ok, q)
    return f"{figure * 1000:.0f} ms" + (f" ({failed} of {len(values)} failed)" if failed else "")


CONTROL = 10  # control checks at 1 s on an address of their own, never switched


def control_service(host: str, port: int) -> str:
    lines = ["  control:", "    checks:"]
    for i in range(CONTROL):
        lines += [f"      k{i:02d}:", f"        url: http://{host}:{port}/control/{i}",
                  "        interval: 1s", "        timeout: 800ms", "        expect: {status: [200]}"]
    return "\n".join(lines) + "\n"


def control_failed(text: str) -> float:
    """Control probes that did not succeed, as /metrics counts them."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("aipulse_probes_total{") and 'service="control"' in line and \
                'reason="ok"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def write_layout(cfg: Path, urls: list[str], args: argparse.Namespace, timeout: str, db: Path, listen: str,
                 checks_per_service: int, control: str) -> None:
    common.write_config(cfg, urls, interval=args.interval, timeout=timeout, db=db, listen=listen,
                        checks_per_service=checks_per_service)
    # open_after 2 (default 3): the second failure comes at most 2 intervals after the
    # switch, so "every window open within 3 intervals" leaves the daemon one interval;
    # with 3 the last check's third failure itself may come 3 intervals after it.
    text = cfg.read_text().replace("defaults:\n", f"defaults:\n  open_after: {args.open_after}\n", 1)
    cfg.write_text(text + control)


def run_layout(args: argparse.Namespace, checks: int, services: int, tmp: Path) -> dict[str, object]:
    interval = float(args.interval.rstrip("s"))
    port = common.free_port()
    out: dict[str, object] = {"layout": f"{checks} checks in {services} services", "interval_s": interval}
    with switch_target(args.hosts, port) as down:
        urls = [f"http://127.0.0.{i % args.hosts + 1}:{port}/c{i:05d}" for i in range(checks)]
        cfg, db = tmp / f"mass-{checks}-{services}.yaml", tmp / f"mass-{checks}-{services}.db"
        listen = f"127.0.0.1:{common.free_port()}"
        control = control_service(f"127.0.0.{args.hosts + 1}", port)
        timeout = min(5.0, interval / 2)
        write_layout(cfg, urls, args, f"{timeout:g}s", db, listen, checks // services, control)
        base = f"http://{listen}"
        log1, log2 = tmp / f"mass-{checks}-{services}-1.log", tmp / f"mass-{checks}-{services}-2.log"
        proc = common.start_aipulse(cfg, src=args.src, loop=args.loop, log_path=log1,
                                    run_args=("--web.enable-lifecycle",))
        t0 = time.monotonic()
        common.wait_http(f"{base}/readyz", timeout=120, proc=proc)
        out["start_s"] = round(time.monotonic() - t0, 2)
        deadline = time.monotonic() + 3 * interval + 30
        while time.monotonic() < deadline:
            _, text = scrape(base)
            if common.metric_sum(text, "aipulse_probe_success") >= checks:
                break
            time.sleep(1)
        calm = Poller(f"{base}/healthz", 0.1, 5.0)
        calm_scrapes = []
        for _ in range(5):
            calm_scrapes.append(scrape(base)[0])
            time.sleep(1)
        out["healthz_calm_max"] = fmt(calm.stop())
        out["metrics_calm_max"] = fmt(calm_scrapes)

        # 2. every check fails at once
        down.touch()
        failing_since = time.monotonic()
        health = Poller(f"{base}/healthz", 0.1, 5.0)
        scrapes: list[float | None] = []
        all_open = None
        while time.monotonic() - failing_since < 6 * interval:
            took, text = scrape(base)
            scrapes.append(took)
            if text and common.metric_sum(text, "aipulse_outage_active") >= checks:
                all_open = time.monotonic() - failing_since
                break
            time.sleep(0.5)
        times = health.stop()
        out["healthz_failing_max"] = fmt(times)
        out["healthz_failing_p99"] = fmt(times, 0.99)
        out["metrics_failing_max"] = fmt(scrapes)
        out["metrics_failing_median"] = fmt(scrapes, 0.5)
        out["all_windows_open_after_s"] = None if all_open is None else round(all_open, 1)
        out["all_windows_open_within_3_intervals"] = all_open is not None and all_open <= 3 * interval
        out["open_after"] = args.open_after

        # 3. a reload while failing: every failing check's timeout changes
        write_layout(cfg, urls, args, f"{timeout * 0.9:g}s", db, listen, checks // services, control)
        _, text = scrape(base)
        failed_before = control_failed(text)
        health = Poller(f"{base}/healthz", 0.1, 5.0)
        start = time.perf_counter()
        try:
            status, _ = common.http_get(f"{base}/-/reload", timeout=120, method="POST")
        except OSError as e:
            status = str(e)
        out["reload"] = {"status": status, "seconds": round(time.perf_counter() - start, 2)}
        time.sleep(2)
        times = health.stop()
        _, text = scrape(base)
        out["reload"]["healthz_max"] = fmt(times)
        out["reload"]["control_probes_failed"] = control_failed(text) - failed_before

        # 4. SIGTERM while failing
        took, code = sigterm(proc)
        out["sigterm_failing"] = {"seconds": round(took, 2), "exit": code}
        text = log1.read_text(errors="replace")
        out["log_lines_first_run"] = text.count("\n")
        out["log_window_lines_first_run"] = len(re.findall(r": outage since ", text))

        # 5. restart on the same database, 6. recovery
        proc = common.start_aipulse(cfg, src=args.src, loop=args.loop, log_path=log2)
        t0 = time.monotonic()
        common.wait_http(f"{base}/readyz", timeout=120, proc=proc)
        out["restart_s"] = round(time.monotonic() - t0, 2)
        _, text = scrape(base)
        out["windows_open_after_restart"] = int(common.metric_sum(text, "aipulse_outage_active"))
        down.unlink()
        recovering_since = time.monotonic()
        all_closed = None
        while time.monotonic() - recovering_since < 6 * interval:
            took, text = scrape(base)
            if text and common.metric_sum(text, "aipulse_outage_active") == 0 and \
                    common.metric_sum(text, "aipulse_probe_success") >= checks:
                all_closed = time.monotonic() - recovering_since
                break
            time.sleep(0.5)
        out["all_windows_closed_after_s"] = None if all_closed is None else round(all_closed, 1)
        took, code = sigterm(proc)
        out["sigterm_recovered"] = {"seconds": round(took, 2), "exit": code}
        with contextlib.closing(sqlite3.connect(db)) as conn:
            out["windows_stored"] = conn.execute(
                "SELECT count(*) FROM windows WHERE check_id != ''").fetchone()[0]
            out["windows_left_open"] = conn.execute(
                "SELECT count(*) FROM windows WHERE end_ts IS NULL").fetchone()[0]
            out["control_windows"] = conn.execute(
                "SELECT count(*) FROM windows WHERE service = 'control'").fetchone()[0]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", action="append", help="CHECKS/SERVICES (default: 3000/1 and 5000/500)")
    p.add_argument("--interval", default="10s")
    p.add_argument("--open-after", type=int, default=2, help="failures that open a window (default 2)")
    p.add_argument("--hosts", type=int, default=50, help="target addresses 127.0.0.1..N (default 50)")
    p.add_argument("--src", default=None, help="run the aipulse of this checkout (before/after figures)")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None,
                   help="the daemon's event loop (AIPULSE_LOOP; default: what `aipulse run` picks)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--max-load", type=float, default=0.0, help="wait until the 1-minute load is below this")
    args = p.parse_args()
    layouts = [tuple(int(x) for x in spec.split("/")) for spec in (args.layout or ["3000/1", "5000/500"])]
    if args.max_load:
        common.wait_for_load(args.max_load, 600)
    print(f"machine: {common.machine()}; load average at start: {common.loadavg():.2f}")
    print(f"aipulse: {args.src or 'installed'}, loop: {args.loop or 'default'}")
    results = []
    with tempfile.TemporaryDirectory(prefix="aipulse-bench-mass-") as tmp:
        for checks, services in layouts:
            figures = run_layout(args, checks, services, Path(tmp))
            figures["load_average_after"] = round(common.loadavg(), 2)
            results.append(figures)
            print(json.dumps(figures, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
