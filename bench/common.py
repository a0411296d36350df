"""Shared helpers of the benchmarks: local targets, process CPU and memory, scraping.

Stdlib only (plus aiohttp, which aipulse itself depends on), so the scripts run from a
fresh clone after `pip install -e .`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ processes

def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (nginx master + workers)."""
    total = cpu_seconds(pid)
    for child in _children(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` field in KiB, e.g. VmHWM (peak RSS) or VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def wait_for_load(max_load: float, timeout: float) -> float:
    """Wait (up to `timeout`) until the 1-minute load average is below `max_load`."""
    deadline = time.time() + timeout
    load = loadavg()
    while load >= max_load and time.time() < deadline:
        time.sleep(5)
        load = loadavg()
    return load


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(url: str, timeout: float = 30.0, method: str = "GET", gzipped: bool = False,
             wire: list[int] | None = None) -> tuple[int, bytes]:
    """(status, body). `gzipped`: ask for gzip as Prometheus does, and inflate it; the
    size on the wire is appended to `wire`."""
    req = urllib.request.Request(url, method=method, headers={"Accept-Encoding": "gzip"} if gzipped else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            if wire is not None:
                wire.append(len(body))
            if resp.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return resp.status, body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll `url` until it answers 200; returns the time.monotonic() it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError):
            status, _ = http_get(url, timeout=2.0)
            if status == 200:
                return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(url)


# ------------------------------------------------------------------ targets

@dataclass
class Target:
    """A fast local HTTP server answering 200 "ok" on each of `addresses`."""

    addresses: list[tuple[str, int]]
    proc: subprocess.Popen[bytes]
    kind: str
    access_log: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    {access}
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 0;
    server {{
        {listen}
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""


@contextlib.contextmanager
def target(addresses: list[tuple[str, int]], *, access_log: bool = False,
           workers: int = 1) -> Iterator[Target]:
    """Debian's nginx on `addresses` (fallback: a Python asyncio server if nginx is missing).

    With `access_log`, nginx writes `<msec> <uri>` per request (for arrival analysis).
    """
    with tempfile.TemporaryDirectory(prefix="aipulse-bench-target-") as tmp:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        log_path = Path(tmp) / "access.log" if access_log else None
        if nginx:
            access = ("log_format t '$msec $uri'; access_log " + f"{log_path} t buffer=256k flush=1s;"
                      if log_path else "access_log off;")
            listen = "\n        ".join(f"listen {h}:{p} backlog=4096;" for h, p in addresses)
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, access=access, listen=listen, workers=workers))
            proc = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            kind = f"nginx ({workers} worker{'s' if workers > 1 else ''})"
        else:
            if log_path:
                raise RuntimeError("the access-log analysis needs nginx (apt-get install nginx)")
            spec = ",".join(f"{h}:{p}" for h, p in addresses)
            proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("pyserver.py")), spec])
            kind = "python asyncio server (nginx not found)"
        try:
            for h, p in addresses[:1] + addresses[-1:]:
                wait_http(f"http://{h}:{p}/", timeout=15, proc=proc)
            yield Target(addresses, proc, kind, log_path)
        finally:
            stop(proc)


def read_access_log(path: Path) -> list[tuple[float, str]]:
    out = []
    with open(path) as f:
        for line in f:
            t, _, uri = line.rstrip("\n").partition(" ")
            with contextlib.suppress(ValueError):
                out.append((float(t), uri))
    return out


# ------------------------------------------------------------------ aipulse

def write_config(path: Path, urls: list[str], *, interval: str, timeout: str = "5s",
                 per_host_rate: float = 20, max_in_flight: int = 1000, db: Path,
                 listen: str, checks_per_service: int = 10) -> None:
    """A config with one check per URL, `checks_per_service` checks in each service.

    Written by hand (not yaml.dump) so a 10,000-check file is written in milliseconds.
    """
    lines = [f"listen: {listen}", "location: bench", "storage:", f"  path: {db}",
             "limits:", f"  max_in_flight: {max_in_flight}", f"  per_host_rate: {per_host_rate}",
             "defaults:", f"  interval: {interval}", f"  timeout: {timeout}", "services:"]
    for i, url in enumerate(urls):
        if i % checks_per_service == 0:
            lines += [f"  svc{i // checks_per_service:05d}:", "    checks:"]
        lines += [f"      c{i:05d}:", f"        url: {url}", "        expect: {status: [200]}"]
    path.write_text("\n".join(lines) + "\n")


LAUNCHER = """\
import sys
src = sys.argv.pop(1)
if src:  # run that checkout's `monitor`, not the installed (editable) one
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path.insert(0, src)
loop = sys.argv.pop(1)
if loop:
    import os
    os.environ["AIPULSE_LOOP"] = loop  # what `aipulse run` reads
    try:  # a checkout from before `aipulse run` read it: the loop policy
        import monitor.loop
        monitor.loop.install(loop)
    except ImportError:
        pass  # a checkout without monitor.loop: its default loop
from monitor.cli import main
sys.exit(main())
"""


def start_aipulse(config: Path, *, src: str | None = None, loop: str | None = None,
                  log_path: Path | None = None, run_args: tuple[str, ...] = (),
                  preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """`aipulse run -c config [run_args]` as a subprocess.

    `src`: a checkout to run instead of the installed package (before/after figures);
    `loop`: "uvloop" or "asyncio" to choose the event loop (AIPULSE_LOOP; default:
    whatever `aipulse run` itself picks: asyncio); `preexec_fn` runs in
    the child first (resource limits).
    """
    # the aipulse installed beside this Python (`.venv/bin/python bench/...`), else PATH's
    beside = Path(sys.executable).parent / "aipulse"
    exe = str(beside) if beside.exists() else shutil.which("aipulse")
    if src is None and loop is None and exe:
        cmd = [exe]
    else:
        cmd = [sys.executable, "-c", LAUNCHER, src or "", loop or ""]
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([*cmd, "run", "-c", str(config), *run_args], stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=preexec_fn)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)', re.M)


def metric_sum(text: str, name: str, label: str | None = None) -> float:
    """Sum of the samples of `name` (optionally only those whose labels contain `label`)."""
    total = 0.0
    for m in _SAMPLE.finditer(text):
        if m.group(1) == name and (label is None or label in (m.group(2) or "")):
            total += float(m.group(3))
    return total


def histogram(text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) buckets of a label-less (but for location) histogram."""
    out = []
    for m in _SAMPLE.finditer(text):
        if m.group(1) == name + "_bucket":
            le = re.search(r'le="([^"]+)"', m.group(2) or "").group(1)  # type: ignore[union-attr]
            out.append((float(le), float(m.group(3))))
    return sorted(out)


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style histogram_quantile (linear within a bucket)."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(count - lo_count, 1e-12)
        lo_bound, lo_count = bound, count
    return lo_bound


def bucket_diff(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Buckets of b minus buckets of a (observations between two scrapes)."""
    before = dict(a)
    return [(le, n - before.get(le, 0.0)) for le, n in b]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]
