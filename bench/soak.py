"""Soak: the daemon for a long time against 1,000 checks, 10 % of them hostile.

Not run by CI. Starts tests/hostile.py (the hostile server and tests/targets.py's
server, in a process of their own) and `aipulse run` with a generated config, then
samples the daemon from /proc every --sample seconds: RSS (VmRSS), open file
descriptors (/proc/<pid>/fd), OS threads, live asyncio tasks (written by
bench/counting_tasks.py, the launcher the daemon runs under here) and the time one
/metrics scrape takes.

Checks: 100 hostile (spread over every hostile behaviour, TLS included), 60 that
flap (HTTP 500 during every other --flap-period seconds: real outage windows opening
and closing), the rest a plain good answer. Optionally (--storage-fault SECONDS) the
daemon's file-size limit is set to 0 in the middle of the run (RLIMIT_FSIZE through
prlimit: every write to the database fails, as on a full disk) and restored after.

At the end the daemon gets SIGTERM; then every outage window the daemon logged as
opened or closed is looked up in the database ("data lost" counts the missing), and
the results in the database are compared with the probes /metrics counted.

    python bench/soak.py --duration 1h             # the issue's hour
    python bench/soak.py --duration 10m --storage-fault 60 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from hostile import spawn_standalone  # noqa: E402

from monitor.units import parse_duration  # noqa: E402

# Hostile behaviours: (name, how to build the URL from the ports).
HOSTILE = [
    ("never", lambda p: f"http://127.0.0.1:{p['hostile']}/never"),
    ("drip_headers", lambda p: f"http://127.0.0.1:{p['hostile']}/drip-headers"),
    ("drip_body", lambda p: f"http://127.0.0.1:{p['target']}/drip?every=1"),
    ("reset_mid_body", lambda p: f"http://127.0.0.1:{p['hostile']}/reset-mid-body"),
    ("endless", lambda p: f"http://127.0.0.1:{p['target']}/endless"),
    ("gzip_bomb", lambda p: f"http://127.0.0.1:{p['target']}/gzip-bomb"),
    ("huge_header", lambda p: f"http://127.0.0.1:{p['hostile']}/huge-header"),
    ("many_headers", lambda p: f"http://127.0.0.1:{p['hostile']}/many-headers?n=50000"),
    ("endless_continue", lambda p: f"http://127.0.0.1:{p['hostile']}/endless-continue"),
    ("endless_trailers", lambda p: f"http://127.0.0.1:{p['hostile']}/endless-trailers"),
    ("chunked_bomb", lambda p: f"http://127.0.0.1:{p['hostile']}/chunked-bomb"),
    ("garbage_status", lambda p: f"http://127.0.0.1:{p['hostile']}/garbage-status"),
    ("http09", lambda p: f"http://127.0.0.1:{p['hostile']}/http09"),
    ("redirect_loop", lambda p: f"http://127.0.0.1:{p['target']}/loop"),
    ("redirect_ftp", lambda p: f"http://127.0.0.1:{p['target']}/redirect-ftp"),
    ("redirect_file", lambda p: f"http://127.0.0.1:{p['target']}/redirect-file"),
    *[(f"tls_{f}", lambda p, f=f: f"https://localhost:{p['tls'][f]}/ok") for f in (
        "expired", "self_signed", "wrong_host", "tls10", "close_after_handshake", "reset_in_handshake")],
    ("tls_huge_header", lambda p: f"https://localhost:{p['tls']['valid']}/huge-header"),
    ("tls_never", lambda p: f"https://localhost:{p['tls']['valid']}/never"),
]


def make_config(ports: dict[str, Any], n: int, hostile_share: float, flappers: int, interval: str,
                timeout: str, flap_period: float) -> dict[str, Any]:
    n_hostile = round(n * hostile_share)
    services: dict[str, Any] = {}
    for i in range(n):
        if i < n_hostile:
            kind, build = HOSTILE[i % len(HOSTILE)]
            url = build(ports)
            service = f"hostile-{kind.replace('_', '-')}"
        elif i < n_hostile + flappers:
            service, url = "flap", f"http://127.0.0.1:{ports['hostile']}/flap?period={flap_period:g}"
        else:
            service, url = f"good-{i % 20}", f"http://127.0.0.1:{ports['hostile']}/ok"
        services.setdefault(service, {"checks": {}})["checks"][f"c{i}"] = {"url": url}
    return {
        "location": "soak",
        "limits": {"max_in_flight": 2000, "per_host_rate": 10_000},
        "defaults": {"interval": interval, "timeout": timeout, "max_body_bytes": "256KiB"},
        "services": services,
    }


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def read_tasks(path: Path) -> int:
    """The daemon's live asyncio tasks, as last written by bench/counting_tasks.py
    (-1 before the first write)."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


def scrape(client: httpx.Client, url: str) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    text = client.get(url).text
    took = time.perf_counter() - t0
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "aipulse_probes_total":
                totals["probes"] += s.value
                if s.labels.get("service", "").startswith("hostile-"):
                    totals["hostile_probes"] += s.value
            elif s.name == "aipulse_storage_errors_total":
                totals["storage_errors"] = s.value
            elif s.name == "aipulse_outage_active":
                totals["outages_active"] += s.value
    return took, dict(totals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", default="1h")
    ap.add_argument("--checks", type=int, default=1000)
    ap.add_argument("--hostile", type=float, default=0.10, help="share of hostile checks")
    ap.add_argument("--flappers", type=int, default=60)
    ap.add_argument("--interval", default="10s")
    ap.add_argument("--timeout", default="5s")
    ap.add_argument("--flap-period", type=float, default=60.0)
    ap.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline sample")
    ap.add_argument("--storage-fault", type=float, default=0.0,
                    help="seconds of failing writes (RLIMIT_FSIZE=0) in the middle of the run")
    ap.add_argument("--dir", help="work directory (default: a new temporary one)")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args()
    duration = parse_duration(args.duration)
    work = Path(args.dir or tempfile.mkdtemp(prefix="aipulse-soak-"))
    work.mkdir(parents=True, exist_ok=True)

    server, ports = spawn_standalone()
    cfg = make_config(ports, args.checks, args.hostile, args.flappers, args.interval, args.timeout,
                      args.flap_period)
    port = free_port()
    cfg["listen"] = f"127.0.0.1:{port}"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    db = work / "soak.db"
    log_path = work / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "counting_tasks.py"), str(work / "tasks"),
         "--log-format", "json", "run", "-c", str(work / "config.yaml"),
         "--db", str(db)],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"} | {"PYTHONPATH": str(ROOT)})
    # The daemon logs into a pipe we copy to a file: a storage fault (RLIMIT_FSIZE) must
    # not silence its log.
    pump = threading.Thread(target=copy_lines, args=(daemon.stdout, log_path), daemon=True)
    pump.start()
    client = httpx.Client(timeout=10)
    base = f"http://127.0.0.1:{port}"
    samples: list[dict[str, Any]] = []
    fault: dict[str, float] = {}
    t_start = time.monotonic()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get(base + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start; see {log_path}")
            time.sleep(0.2)
        print(f"soak: {args.checks} checks ({round(args.checks * args.hostile)} hostile, {args.flappers} "
              f"flapping), interval {args.interval}, {args.duration}; work dir {work}", flush=True)
        fault_at = duration / 2 if args.storage_fault else None
        next_sample = time.monotonic()
        while (elapsed := time.monotonic() - t_start) < duration:
            if fault_at is not None and not fault and elapsed >= fault_at:
                resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
                fault["start"] = elapsed
                print(f"[{elapsed:6.0f}s] storage fault: RLIMIT_FSIZE=0 for {args.storage_fault:g}s",
                      flush=True)
            if fault and "end" not in fault and elapsed >= fault["start"] + args.storage_fault:
                resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                fault["end"] = elapsed
                print(f"[{elapsed:6.0f}s] storage fault over", flush=True)
            if time.monotonic() >= next_sample:
                next_sample += args.sample
                took, totals = scrape(client, base + "/metrics")
                s = {"t": round(elapsed, 1), **proc_status(daemon.pid), "tasks": read_tasks(work / "tasks"),
                     "scrape_ms": round(took * 1000, 1),
                     **totals, "load": os.getloadavg()[0]}
                samples.append(s)
                print(f"[{elapsed:6.0f}s] rss {s['VmRSS'] / 1024:6.1f} MiB  fds {s['fds']:4d}  threads "
                      f"{s['Threads']:2d}  tasks {s['tasks']:5d}  /metrics {s['scrape_ms']:6.1f} ms  "
                      f"probes {s.get('probes', 0):8.0f}"
                      f"  storage errors {s.get('storage_errors', 0):4.0f}  load {s['load']:.2f}", flush=True)
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon died; see {log_path}")
            time.sleep(0.5)
        _, final = scrape(client, base + "/metrics")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        pump.join(10)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
        client.close()

    summary = summarize(samples, final, args, work, db, log_path, fault, daemon.returncode)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["data_lost"] == 0 else 1


def copy_lines(stream: Any, path: Path) -> None:
    with path.open("w") as out:
        for line in stream:
            out.write(line)
            out.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logged_windows(log_path: Path) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]], int, int]:
    """(opened, closed) as (service, check, start or end second) from the daemon's log,
    plus the count of storage error lines and tracebacks."""
    opened, closed, storage_errors, tracebacks = [], [], 0, 0
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            tracebacks += "Traceback" in line
            continue
        msg = rec.get("message", "")
        tracebacks += "exception" in rec
        if msg.startswith("storage error"):
            storage_errors += 1
        name, sep, rest = msg.partition(": outage ")
        if not sep or "/" not in name:
            continue
        service, check = name.split("/", 1)
        if rest.startswith("since "):
            opened.append((service, check, rest.split()[1]))
        elif rest.startswith("over after "):
            span = rest[rest.index("(") + 1:].split(", ")[0]  # "T1 to T2"
            closed.append((service, check, span.split(" to ")[1]))
    return opened, closed, storage_errors, tracebacks


def summarize(samples: list[dict[str, Any]], final: dict[str, float], args: argparse.Namespace, work: Path,
              db: Path, log_path: Path, fault: dict[str, float], returncode: int | None) -> dict[str, Any]:
    def clock(t: float | None) -> str:
        return "" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        windows = conn.execute("SELECT service, check_id, start_ts, end_ts FROM windows WHERE kind = 'down'"
                               " AND check_id != ''").fetchall()
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    starts = {(s, c, clock(a)) for s, c, a, _ in windows}
    ends = {(s, c, clock(b)) for s, c, _, b in windows if b is not None}
    opened, closed, storage_log_lines, tracebacks = logged_windows(log_path)
    missing = [w for w in opened if w not in starts] + [w for w in closed if w not in ends]
    base = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    last = samples[-1]
    half = [s for s in samples if s["t"] >= last["t"] / 2]
    return {
        "work_dir": str(work),
        "duration_s": last["t"],
        "checks": args.checks,
        "hostile_checks": round(args.checks * args.hostile),
        "interval": args.interval,
        "probes_run": int(final.get("probes", 0)),
        "hostile_probes_run": int(final.get("hostile_probes", 0)),
        "results_in_db": results,
        "storage_fault": fault,
        "storage_errors_total": final.get("storage_errors", 0),
        "storage_error_log_lines": storage_log_lines,
        "rss_mib": {"start": round(samples[0]["VmRSS"] / 1024, 1), "baseline": round(base["VmRSS"] / 1024, 1),
                    "end": round(last["VmRSS"] / 1024, 1),
                    "max": round(max(s["VmRSS"] for s in samples) / 1024, 1),
                    "second_half_min_max": [round(min(s["VmRSS"] for s in half) / 1024, 1),
                                            round(max(s["VmRSS"] for s in half) / 1024, 1)]},
        "fds": {"start": samples[0]["fds"], "baseline": base["fds"], "end": last["fds"],
                "max": max(s["fds"] for s in samples)},
        "threads": {"baseline": base["Threads"], "end": last["Threads"],
                    "max": max(s["Threads"] for s in samples)},
        "tasks": {"baseline": base["tasks"], "end": last["tasks"],
                  "max": max(s["tasks"] for s in samples),
                  "second_half_min_max": [min(s["tasks"] for s in half if s["tasks"] >= 0),
                                          max(s["tasks"] for s in half)]},
        "scrape_ms": {"median": sorted(s["scrape_ms"] for s in samples)[len(samples) // 2],
                      "max": max(s["scrape_ms"] for s in samples)},
        "load_avg": {"min": min(s["load"] for s in samples), "max": max(s["load"] for s in samples)},
        "windows_logged": {"opened": len(opened), "closed": len(closed)},
        "windows_in_db": {"total": len(windows), "closed": len(ends)},
        "data_lost": len(missing),
        "missing": missing[:20],
        "integrity_check": integrity,
        "tracebacks_in_log": tracebacks,
        "daemon_exit_code": returncode,
        "samples": samples,
    }


if __name__ == "__main__":
    sys.exit(main())
