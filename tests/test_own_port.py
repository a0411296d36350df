"""Our port under attack from loopback: wrong passwords (real bcrypt, cost 10), idle
connections by the thousand under the shipped unit's 1,024 descriptors, and a real
daemon each time, probing a healthy control check that must never open a window."""

from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import RunningDaemon, start_daemon, wait_for
from ownport import basic, hashed, median, request, write_web_config
from targets import Target

GOOD = "correct horse battery staple"


def control(target: Target, **top: Any) -> dict[str, Any]:
    """A config with one healthy check; a probe delayed past 500 ms is a failure, two
    in a row open a window."""
    return {**top, "defaults": {"interval": "600ms", "timeout": "500ms", "open_after": 2},
            "services": {"ctl": {"checks": {"ok": {"url": target.url("/ok")}}}}}


def outcome(d: RunningDaemon) -> tuple[float, float]:
    """(windows opened, probes that failed) for the control check."""
    samples = d.samples()
    opened = d.value("aipulse_outages_total", samples, service="ctl", check="ok") or 0.0
    failed = sum(v for (name, labels), v in samples.items()
                 if name == "aipulse_probes_total" and ("reason", "ok") not in labels
                 and ("check", "ok") in labels)
    return opened, failed


def test_wrong_passwords_stall_neither_probes_nor_the_port(tmp_path: Path, target: Target) -> None:
    """8 clients sending wrong passwords as fast as they are answered. bcrypt used to
    run on the event loop: /healthz took seconds and the control check timed out."""
    write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prometheus": hashed(GOOD)}})
    with start_daemon(control(target, web_config="web.yml"), tmp_path, auth=("prometheus", GOOD)) as d:
        auth = {"Authorization": basic("prometheus", GOOD)}
        baseline = [request(d.port, headers=auth)[3] for _ in range(20)]
        wait_for(lambda: (d.value("aipulse_probes_total", service="ctl", check="ok", reason="ok") or 0) >= 2)
        stop = threading.Event()
        statuses: Counter[int] = Counter()

        def attacker(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                statuses[request(d.port, headers={"Authorization": basic("prometheus", f"w{i}-{n}")})[0]] += 1

        threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        under_attack = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            status, _, _, took = request(d.port, headers=auth)
            assert status == 200
            under_attack.append(took)
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(10)
        opened, failed = outcome(d)
    print(f"healthz median {median(baseline) * 1000:.1f} ms alone, {median(under_attack) * 1000:.1f} ms "
          f"under attack ({len(under_attack)} requests); attack answers {dict(statuses)}")
    assert statuses[401] >= 20  # wrong passwords were really checked with bcrypt...
    assert (opened, failed) == (0, 0)  # ...and the healthy check never noticed
    assert median(under_attack) < 5 * median(baseline) + 0.05, (baseline, under_attack)


def test_unknown_and_known_users_fail_alike_and_failures_are_remembered(tmp_path: Path,
                                                                        target: Target) -> None:
    """A wrong password for a user that does not exist used to fail at once (2 ms) and
    one for a real user after bcrypt (100 ms): names could be found by timing."""
    write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prometheus": hashed(GOOD)}})
    with start_daemon(control(target, web_config="web.yml"), tmp_path, auth=("prometheus", GOOD)) as d:
        known, unknown = [], []
        for n in range(6):  # each password new: no remembered answer
            known.append(request(d.port, headers={"Authorization": basic("prometheus", f"x{n}")})[3])
            unknown.append(request(d.port, headers={"Authorization": basic("nobody", f"x{n}")})[3])
        again = [request(d.port, headers={"Authorization": basic("prometheus", "x0")}) for _ in range(6)]
    print(f"wrong password: known user {median(known) * 1000:.1f} ms, unknown {median(unknown) * 1000:.1f} "
          f"ms, the same wrong password again {median([a[3] for a in again]) * 1000:.1f} ms")
    assert median(known) > 0.02  # bcrypt at cost 10 really ran
    assert 0.5 < median(unknown) / median(known) < 2.0, (known, unknown)
    assert {a[0] for a in again} == {401}
    assert median([a[3] for a in again]) < median(known) / 3  # the failure was remembered


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # as systemd's default soft limit


def test_idle_connections_cannot_take_the_probes_descriptors(tmp_path: Path, target: Target) -> None:
    """1,100 idle connections against a daemon with 1,024 descriptors: they used to take
    them all (probes failed with "Too many open files", a false outage), /healthz
    could not be reached, and asyncio logged a traceback per refused accept."""
    config = control(target, limits={"max_in_flight": 50})
    with start_daemon(config, tmp_path, preexec_fn=_limit_descriptors) as d:
        baseline = [request(d.port)[3] for _ in range(20)]
        wait_for(lambda: (d.value("aipulse_probes_total", service="ctl", check="ok", reason="ok") or 0) >= 2)
        log_before = d.log.stat().st_size
        socks = []
        try:
            with selectors.DefaultSelector() as connecting:
                for _ in range(1100):  # connect without waiting: the kernel finishes the handshakes
                    s = socket.socket()
                    s.setblocking(False)
                    assert s.connect_ex(("127.0.0.1", d.port)) in (0, errno.EINPROGRESS)
                    socks.append(s)
                    connecting.register(s, selectors.EVENT_WRITE)
                deadline = time.monotonic() + 30.0  # the backlog overflows: SYNs are retried
                while connecting.get_map() and time.monotonic() < deadline:
                    for key, _ in connecting.select(0.5):
                        connecting.unregister(key.fileobj)
                connected = 1100 - len(connecting.get_map())
            under_attack, refused = [], 0
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                try:
                    status, _, _, took = request(d.port, timeout=3)
                    assert status == 200
                    under_attack.append(took)
                except OSError:
                    refused += 1
                time.sleep(0.05)
            held = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        finally:
            for s in socks:
                s.close()
        opened, failed = outcome(d)
    log = d.log.read_text()
    grown = len(log.encode()) - log_before
    under_attack = under_attack or [float("inf")]
    print(f"healthz median {median(baseline) * 1000:.1f} ms alone, {median(under_attack) * 1000:.1f} ms with "
          f"{connected} idle connections ({refused} refused); daemon descriptors {held}; log +{grown} bytes; "
          f"control check: {opened:g} windows, {failed:g} failed probes")
    assert (opened, failed, refused) == (0, 0, 0)
    assert held <= 512 + 64  # the cap, and the daemon's own files
    assert median(under_attack) < 5 * median(baseline) + 0.05, (baseline, under_attack)
    assert grown < 100_000 and "Traceback" not in log
    assert "closing the longest idle" in log


def test_max_connections_flag_caps_what_one_client_holds(tmp_path: Path, target: Target) -> None:
    with start_daemon(control(target), tmp_path, run_args=("--web.max-connections", "20")) as d:
        def descriptors() -> int:
            return len(os.listdir(f"/proc/{d.proc.pid}/fd"))

        before = descriptors()
        socks = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(60)]
        try:
            wait_for(lambda: descriptors() - before >= 19)  # accepted up to the cap...
            held = max(descriptors() - before for _ in range(20))  # ...and never more
            assert request(d.port)[0] == 200  # a newcomer still gets in
            alive = 0
            for s in socks:  # the oldest idle ones were closed to make room
                s.setblocking(False)
                try:
                    alive += s.recv(1) != b""
                except BlockingIOError:
                    alive += 1
        finally:
            for s in socks:
                s.close()
    assert held <= 21, held
    assert 15 <= alive <= 20, alive
