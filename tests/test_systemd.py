"""systemd integration: sd_notify against real datagram sockets, the event-loop watchdog,
and the unit file checked by systemd-analyze (Debian package `systemd`)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import free_port
from targets import Target

from monitor import systemd

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "aipulse.service"


class Listener:
    """A bound AF_UNIX datagram socket playing the service manager's side."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.received: list[tuple[float, str]] = []  # (time.monotonic() on arrival, payload)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False

    def start_recording(self) -> None:
        """Timestamp every datagram on arrival, from a thread: it keeps receiving while
        the test blocks the event loop."""
        self.sock.settimeout(0.05)

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    continue
                self.received.append((time.monotonic(), data.decode()))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    lst = Listener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield lst
    lst.close()


def test_messages_arrive_with_exact_payloads(listener: Listener) -> None:
    n = systemd.SystemdNotifier()
    assert n.enabled
    assert n.ready()
    assert listener.recv() == "READY=1"
    assert n.ready("monitoring 3 checks")
    assert listener.recv() == "READY=1\nSTATUS=monitoring 3 checks"
    assert n.status("2 down\nof 3")  # a newline would start a new assignment
    assert listener.recv() == "STATUS=2 down of 3"
    assert n.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    assert n.stopping()
    assert listener.recv() == "STOPPING=1"
    assert n.extend_timeout(2.5)
    assert listener.recv() == "EXTEND_TIMEOUT_USEC=2500000"
    before = time.monotonic_ns() // 1000
    assert n.reloading()
    msg = listener.recv()
    after = time.monotonic_ns() // 1000
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", msg)
    assert m, msg
    assert before <= int(m[1]) <= after
    assert n.sent == 7
    assert listener.nothing_pending()


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aipulse-test-{uuid.uuid4().hex}"
    lst = Listener(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = systemd.SystemdNotifier()
        assert n.ready("up")
        assert lst.recv() == "READY=1\nSTATUS=up"
        assert n.stopping()
        assert lst.recv() == "STOPPING=1"
    finally:
        lst.close()


def test_no_notify_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = systemd.SystemdNotifier()
    assert not n.enabled
    assert not n.ready("x")
    assert not n.watchdog()
    assert not n.stopping()
    assert not n.reloading()
    assert n.sent == 0


def test_unreachable_or_unsupported_socket_never_raises(tmp_path: Path) -> None:
    gone = systemd.SystemdNotifier(str(tmp_path / "no-such.sock"))
    assert gone.enabled
    assert not gone.ready()
    assert not gone.watchdog()  # logged once as a warning, then at debug level
    too_long = systemd.SystemdNotifier("/" + "x" * 200)
    assert not too_long.status("x")
    vsock = systemd.SystemdNotifier("vsock:2:1234")
    assert not vsock.enabled
    assert not vsock.ready()


def test_watchdog_interval_from_environment() -> None:
    pid = str(os.getpid())
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": pid}) == 0.4
    # Inherited from (and meant for) another process:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "x"}) is None


async def test_watchdog_pings_at_half_interval_and_stops_while_the_loop_is_blocked(
        listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4s: ping every 0.2s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    listener.start_recording()
    task = asyncio.create_task(systemd.watchdog())
    try:
        await asyncio.sleep(1.05)
        blocked_from = time.monotonic()
        time.sleep(0.6)  # the event loop is stuck for 1.5 x the watchdog interval
        blocked_until = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    pings = [t for t, payload in listener.received if payload == "WATCHDOG=1"]
    assert len(pings) == len(listener.received)
    before = [t for t in pings if t < blocked_from]
    during = [t for t in pings if blocked_from + 0.05 < t < blocked_until]
    after = [t for t in pings if t >= blocked_until]
    assert during == [], "pinged while the loop was blocked"
    assert 5 <= len(before) <= 7, before  # t = 0, 0.2, ... 1.0
    gaps = [b - a for a, b in itertools.pairwise(before)]
    assert all(0.15 < g < 0.3 for g in gaps), gaps
    # Pings resume as soon as the loop runs again (one at once, no burst), then every 0.2s.
    assert after and after[0] - blocked_until < 0.1
    assert 2 <= len(after) <= 4, after


async def test_watchdog_withholds_pings_when_the_health_check_fails(listener: Listener) -> None:
    healthy = True
    listener.start_recording()
    task = asyncio.create_task(systemd.watchdog(lambda: healthy, interval=0.2))
    await asyncio.sleep(0.35)
    healthy = False
    await asyncio.sleep(0.05)  # a ping already on its way may still land
    n = len(listener.received)
    await asyncio.sleep(0.4)
    assert len(listener.received) == n
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert n >= 3
    assert {p for _, p in listener.received} == {"WATCHDOG=1"}


async def test_watchdog_returns_at_once_without_watchdog_or_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/nowhere.sock")
    await asyncio.wait_for(systemd.watchdog(), 1)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("NOTIFY_SOCKET")
    await asyncio.wait_for(systemd.watchdog(), 1)


def test_status_line() -> None:
    assert systemd.status_line(21, 7) == "monitoring 21 checks in 7 services"
    assert systemd.status_line(1, 1) == "monitoring 1 check in 1 service"
    assert systemd.status_line(3, 1, degraded=1) == "monitoring 3 checks in 1 service; 1 degraded"
    assert (systemd.status_line(21, 7, down=2, degraded=1, listen="127.0.0.1:9478")
            == "monitoring 21 checks in 7 services; 2 down, 1 degraded; listening on 127.0.0.1:9478")


def test_daemon_speaks_sd_notify(tmp_path: Path, target: Target) -> None:
    """`aipulse run` under a fake service manager: READY=1 (with a STATUS naming the
    checks) only once /readyz is 200, watchdog pings, a STATUS update when a check goes
    down, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM and a clean exit."""
    sd = Listener(str(tmp_path / "notify.sock"))
    port = free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "defaults": {"interval": "500ms", "timeout": "400ms", "open_after": 1, "close_after": 1},
        "services": {"local": {"checks": {
            "ok": {"url": target.url("/ok")},
            "broken": {"url": target.url("/status/500")},
        }}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items()
           if k not in ("STATE_DIRECTORY", "JOURNAL_STREAM", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "-c", "config.yaml", "--db", "aipulse.db"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        def next_message(timeout: float = 15.0, skip_watchdog: bool = True) -> str:
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                assert remaining > 0, log.read_text()
                msg = sd.recv(remaining)
                if not (skip_watchdog and msg == "WATCHDOG=1"):
                    return msg

        ready = next_message()
        # Checked right away: the daemon said READY=1 only after /readyz turned 200.
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert ready == f"READY=1\nSTATUS=monitoring 2 checks in 1 service; listening on 127.0.0.1:{port}"

        pings, statuses = 0, []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (pings >= 3 and statuses):
            msg = next_message(skip_watchdog=False)
            if msg == "WATCHDOG=1":
                pings += 1
            else:
                statuses.append(msg)
        assert pings >= 3, log.read_text()  # every 0.5s
        assert statuses == [f"STATUS=monitoring 2 checks in 1 service; 1 down; "
                            f"listening on 127.0.0.1:{port}"], statuses

        # SIGHUP (ExecReload=): RELOADING=1 with the monotonic time, then READY=1 again.
        proc.send_signal(signal.SIGHUP)
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", next_message(timeout=10))
        assert next_message(timeout=10).startswith("READY=1\nSTATUS=monitoring 2 checks in 1 service")

        proc.send_signal(signal.SIGTERM)
        assert next_message(timeout=10) == "STOPPING=1"
        assert proc.wait(timeout=10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sd.close()


# The unit file


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_declares_notify_watchdog_and_directories() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/local/bin/aipulse run -c /etc/aipulse/config.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["Restart"] == ["on-failure"]
    assert s["DynamicUser"] == ["yes"]
    assert s["StateDirectory"] == ["aipulse"]
    assert s["ConfigurationDirectory"] == ["aipulse"]
    assert "IPAddressDeny" not in s  # it must reach the services it watches
    assert "#LoadCredential=openai.key:/etc/aipulse/credentials/openai.key" in UNIT.read_text()


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # `verify` fails when ExecStart's binary does not exist, and /usr/local/bin/aipulse
    # does not exist in a test environment: check a copy whose ExecStart is the
    # `aipulse` script this test environment installed (next to the venv's python, which
    # need not be on PATH), everything else unchanged.
    exe = shutil.which("aipulse", path=str(Path(sys.executable).parent)) or shutil.which("aipulse")
    assert exe, "the aipulse console script is not on PATH (pip install -e .)"
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/local/bin/aipulse ") == 1
    unit = tmp_path / "aipulse.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/aipulse ", f"ExecStart={exe} "))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown keys and bad values are only warnings (exit 0), each naming the file.
    assert [line for line in output.splitlines() if str(unit) in line] == [], output


def test_unit_security_exposure_is_at_most_2() -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                          capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for aipulse\.service: (\d+(?:\.\d+)?) (\w+)", output)
    assert m, output
    assert float(m[1]) <= 2.0, output
    assert m[2] == "OK", output
