"""The database stops accepting writes while the daemon runs: probing and /metrics go
on, the error is logged once (not once per failed write), counted in
aipulse_storage_errors_total, and the history catches up when storage returns. An
outage decided meanwhile is not shown or announced until it is written (a crash
would lose it): then it is, in order, opened and closed.

The fault is real and needs neither root nor a mount: the daemon's RLIMIT_FSIZE is set
to 0 (prlimit(2) on the running process), so every write(2) it makes to a regular file
fails with EFBIG, as writes fail on a full disk or a file-size quota. The open
connection, its file descriptors and the WAL stay as they are; only writing fails. Its
log goes into a pipe (pipes have no file-size limit) that this test copies to a file.
A read-only file would not do: the writer keeps the descriptor it opened read-write.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from helpers import RunningDaemon, free_port, wait_for
from targets import Target

from monitor.store import query_windows


@contextmanager
def daemon_logging_to_a_pipe(config: dict[str, Any], tmp_path: Path, db: Path) -> Iterator[RunningDaemon]:
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}", **config}))
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "-c", str(cfg), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"})
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        with log.open("w") as out:
            for line in stdout:
                out.write(line)
                out.flush()

    copier = threading.Thread(target=pump, daemon=True)
    copier.start()
    daemon = RunningDaemon(proc, port, log, "local")
    try:
        wait_for(lambda: _ready(daemon), timeout=15)
        yield daemon
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        copier.join(5)
        stdout.close()


def _ready(daemon: RunningDaemon) -> bool:
    assert daemon.proc.poll() is None, daemon.log.read_text()
    try:
        return daemon.get("/readyz").status_code == 200
    except Exception:
        return False


def set_file_size_limit(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def probes(daemon: RunningDaemon) -> float:
    return sum(v for (name, _), v in daemon.samples().items() if name == "aipulse_probes_total")


def probes_of(daemon: RunningDaemon, check: str, reason: str) -> float:
    return daemon.value("aipulse_probes_total", service="svc", check=check, reason=reason) or 0.0


def results_in_db(db: Path) -> int:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        conn.close()


def test_writes_failing_keep_probing_and_metrics_then_catch_up(target: Target, tmp_path: Path) -> None:
    target.mode["storage"] = "ok"
    check = {"interval": "300ms", "timeout": "250ms", "open_after": 2, "close_after": 2}
    config = {"services": {"svc": {"checks": {
        "flap": {"url": target.url("/switch/storage"), **check},
        "steady": {"url": target.url("/ok"), **check},
    }}}}
    db = tmp_path / "history.db"
    with daemon_logging_to_a_pipe(config, tmp_path, db) as daemon:
        wait_for(lambda: daemon.value("aipulse_probe_success", service="svc", check="flap") == 1)
        assert daemon.value("aipulse_storage_errors_total") == 0

        set_file_size_limit(daemon.proc.pid, 0)  # from now on every write to a file fails
        t_fault = time.monotonic()
        before = probes(daemon)
        target.mode["storage"] = "500"
        wait_for(lambda: "storage error on" in daemon.log.read_text(), timeout=10)
        failing = probes_of(daemon, "flap", "http_5xx")
        wait_for(lambda: probes_of(daemon, "flap", "http_5xx") >= failing + 4, timeout=10)  # open_after 2
        # Decided, but its write failed: not shown, not announced.
        assert daemon.value("aipulse_outage_active", service="svc", check="flap") == 0
        assert daemon.value("aipulse_check_state", service="svc", check="flap", state="up") == 1
        assert "svc/flap: outage" not in daemon.log.read_text()
        target.mode["storage"] = "ok"
        good = probes_of(daemon, "flap", "ok")
        wait_for(lambda: probes_of(daemon, "flap", "ok") >= good + 4, timeout=10)  # close_after 2
        # The counter is refreshed with the heartbeat (every 5 s).
        wait_for(lambda: (daemon.value("aipulse_storage_errors_total") or 0) >= 3, timeout=15)
        failed_for = time.monotonic() - t_fault
        during = probes(daemon) - before
        assert during >= 2 * failed_for / 0.3 * 0.5, (during, failed_for)  # both checks kept probing
        assert query_windows(db) == []  # nothing reached the database ...
        log = daemon.log.read_text()
        assert "svc/flap: outage" not in log  # ... and nothing was said of it
        assert log.count("storage error on") == 1, log  # once, not once per failed write
        assert "Traceback" not in log

        set_file_size_limit(daemon.proc.pid, resource.RLIM_INFINITY)  # storage returns
        counted = probes(daemon)
        windows = wait_for(lambda: [w for w in query_windows(db) if w.check == "flap" and w.end is not None],
                           timeout=10)
        wait_for(lambda: results_in_db(db) >= counted, timeout=10)  # the held results too
        # logged by the writer right after that commit; the log reaches us through a pipe
        wait_for(lambda: "storage works again" in daemon.log.read_text(), timeout=5)
        # Written, so now published, in the order decided: opened, then over.
        wait_for(lambda: "svc/flap: outage over after" in daemon.log.read_text(), timeout=5)
        log = daemon.log.read_text()
        assert log.index("svc/flap: outage since") < log.index("svc/flap: outage over after")
        assert daemon.value("aipulse_outages_total", service="svc", check="flap") == 1
        assert daemon.value("aipulse_outage_active", service="svc", check="flap") == 0
        assert daemon.get("/metrics").status_code == 200

    [window] = windows
    assert window.kind == "down" and window.reason == "http_5xx" and window.start < window.end
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        states = [r[0] for r in conn.execute(
            "SELECT state FROM transitions WHERE check_id = 'flap' ORDER BY ts")]
    finally:
        conn.close()
    assert states[-2:] == ["down", "up"], states  # the transitions made meanwhile, in order
