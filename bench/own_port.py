"""Our own port under attack from loopback, all at once (issue 16's "Done when"):

* 8 clients sending wrong passwords (new ones each time, bcrypt cost 10) as fast as
  they are answered, each on a fresh connection;
* 1,100 idle connections, opened without waiting and held;
* meanwhile /healthz, authenticated, on a fresh connection every 100 ms;
* one healthy control check (interval 1 s, timeout 800 ms, open_after 2) against nginx.

The daemon runs with the open-files limit of the shipped unit (LimitNOFILE=8192) or
`--nofile`, e.g. 1024 as systemd's default. Reported: /healthz median, p99 and max
(alone and under attack), windows opened and probes failed on the control check, log
growth, descriptors held, what the attackers got back, and the daemon's CPU.

    .venv/bin/python bench/own_port.py                    # 30 s of attack
    .venv/bin/python bench/own_port.py --nofile 1024 --duration 15
"""

from __future__ import annotations

import argparse
import base64
import errno
import os
import resource
import selectors
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import bcrypt
import common
import yaml

GOOD = "correct horse battery staple"


def request(port: int, password: str) -> tuple[int, float]:
    """GET /healthz on a fresh connection with Basic auth: (status, seconds); status 0
    when the connection failed."""
    auth = base64.b64encode(f"prometheus:{password}".encode()).decode()
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    except OSError:
        status = 0
    return status, time.perf_counter() - t0


def open_idle(port: int, n: int, deadline: float) -> tuple[list[socket.socket], int]:
    socks = []
    with selectors.DefaultSelector() as sel:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS):
                sel.register(s, selectors.EVENT_WRITE)
            socks.append(s)
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                sel.unregister(key.fileobj)
        return socks, n - len(sel.get_map())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of attack (default 30)")
    p.add_argument("--nofile", type=int, default=8192, help="the daemon's open-files limit (default 8192)")
    p.add_argument("--attackers", type=int, default=8)
    p.add_argument("--idle", type=int, default=1100)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None)
    p.add_argument("--src", default=None, help="run the aipulse of another checkout (before/after figures)")
    p.add_argument("--max-load", type=float, default=None)
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this process holds the idle connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + 4096), hard))
    if args.max_load is not None:
        common.wait_for_load(args.max_load, 600)
    print(common.machine(), f"load {common.loadavg():.2f}")
    with tempfile.TemporaryDirectory(prefix="aipulse-own-port-") as tmp_dir:
        tmp = Path(tmp_dir)
        with common.target([("127.0.0.1", common.free_port())]) as target:
            h, tp = target.addresses[0]
            port = common.free_port()
            hashed = bcrypt.hashpw(GOOD.encode(), bcrypt.gensalt(10)).decode()
            (tmp / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
            (tmp / "config.yaml").write_text(yaml.safe_dump({
                "listen": f"127.0.0.1:{port}", "web_config": "web.yml",
                "storage": {"path": str(tmp / "h.db")},
                "defaults": {"interval": "1s", "timeout": "800ms", "open_after": 2},
                "services": {"ctl": {"checks": {"ok": {"url": f"http://{h}:{tp}/"}}}}}))
            log = tmp / "daemon.log"

            def limit() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))

            proc = common.start_aipulse(tmp / "config.yaml", src=args.src, loop=args.loop, log_path=log,
                                        preexec_fn=limit)
            try:
                deadline = time.monotonic() + 30
                while request(port, GOOD)[0] != 200:
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.05)
                alone = [request(port, GOOD)[1] for _ in range(50)]
                time.sleep(3)  # a few probes before
                log0, cpu0 = log.stat().st_size, common.cpu_seconds(proc.pid)
                stop = threading.Event()
                answers: Counter[int] = Counter()

                def attacker(i: int) -> None:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        answers[request(port, f"wrong-{i}-{n}")[0]] += 1

                threads = [threading.Thread(target=attacker, args=(i,), daemon=True)
                           for i in range(args.attackers)]
                t_attack = time.monotonic()
                for t in threads:
                    t.start()
                socks, connected = open_idle(port, args.idle, t_attack + 30)
                under, failed_healthz = [], 0
                end = t_attack + args.duration
                while time.monotonic() < end:
                    status, took = request(port, GOOD)
                    if status == 200:
                        under.append(took)
                    else:
                        failed_healthz += 1
                    time.sleep(0.1)
                held = len(os.listdir(f"/proc/{proc.pid}/fd"))
                stop.set()
                for t in threads:
                    t.join(15)
                for s in socks:
                    s.close()
                cpu = common.cpu_seconds(proc.pid) - cpu0
                attack_s = time.monotonic() - t_attack
                time.sleep(2)  # let the last probes land
                text = request_metrics(port).decode()
                windows = common.metric_sum(text, "aipulse_outages_total")
                probes_bad = (common.metric_sum(text, "aipulse_probes_total")
                              - common.metric_sum(text, "aipulse_probes_total", 'reason="ok"'))
                grown = log.stat().st_size - log0
            finally:
                common.stop(proc)
    print(f"daemon open-files limit {args.nofile}; attack {attack_s:.1f} s: {args.attackers} clients "
          f"with wrong passwords, {connected} of {args.idle} idle connections established")
    print(f"/healthz alone:        {spread(alone)}")
    print(f"/healthz under attack: {spread(under)} ({len(under)} answered, {failed_healthz} failed)")
    print(f"control check: {windows:g} windows opened, {probes_bad:g} probes failed")
    print(f"log grew {grown} bytes; daemon held {held} descriptors; daemon CPU {cpu:.1f} s "
          f"({100 * cpu / attack_s:.0f} % of a core)")
    print(f"attackers got: {dict(sorted(answers.items()))} (401 = a bcrypt check, 429 = refused at once)")


def spread(values: list[float]) -> str:
    pct = common.percentile
    return (f"median {pct(values, 0.5) * 1000:.1f} ms, p99 {pct(values, 0.99) * 1000:.1f} ms, "
            f"max {max(values, default=float('nan')) * 1000:.1f} ms")


def request_metrics(port: int) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={
        "Authorization": "Basic " + base64.b64encode(f"prometheus:{GOOD}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


if __name__ == "__main__":
    sys.exit(main())
