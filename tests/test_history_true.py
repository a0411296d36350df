"""History that stays true when the ground moves: the database file deleted or
replaced while the daemon runs, a reload that cannot read a secret, the system clock
stepped back an hour or jumped 20 days ahead.

The clock is moved for real, in the daemon's process only: libfaketime (LD_PRELOAD)
shifts its CLOCK_REALTIME by what a file says, read anew at every call, while its
monotonic clock goes on untouched, as an NTP step does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import libfaketime
import pytest
from helpers import RunningDaemon, start_daemon, wait_for
from targets import Target

from monitor.clock import SteadyClock
from monitor.outage import OutageWindow, StateChanged, WindowOpened
from monitor.store import Store, query_windows

LIBFAKETIME = Path(libfaketime.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"


def fake_clock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Daemons started from now on read the wall clock shifted by the returned file's
    content ("+0", "-3600", "+20d"); their monotonic clock is the real one."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    monkeypatch.setenv("LD_PRELOAD", str(LIBFAKETIME))
    monkeypatch.setenv("FAKETIME_TIMESTAMP_FILE", str(offset))
    monkeypatch.setenv("FAKETIME_NO_CACHE", "1")
    monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    return offset


def one_check(url: str, notify: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "defaults": {"interval": "300ms", "timeout": "250ms", "open_after": 2, "close_after": 2},
        "services": {"acme": {"checks": {"api": {"url": url, **extra}}}},
    }
    if notify is not None:
        config["notify"] = notify
    return config


def windows(d: RunningDaemon, **query: str) -> list[dict[str, Any]]:
    r = d.get("/api/v1/outages", params={"check": "api", **query})
    assert r.status_code == 200, r.text
    return list(r.json()["outages"])


def open_window(d: RunningDaemon) -> dict[str, Any] | None:
    return next((w for w in windows(d) if w["end"] is None), None)


# ------------------------------------------------------------------------ the clock

def test_the_clock_stepped_back_an_hour_gives_a_true_duration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Target) -> None:
    """Today's main stored a window of -3,594 s: its end came from the stepped clock."""
    offset = fake_clock(monkeypatch, tmp_path)
    db = tmp_path / "history.db"
    target.mode["clock"] = "503"
    failing = time.monotonic()
    with start_daemon(one_check(target.url("/switch/clock")), tmp_path, db=db) as d:
        wait_for(lambda: open_window(d))
        offset.write_text("-3600\n")  # the system clock steps back an hour
        time.sleep(0.6)
        target.mode["clock"] = "ok"
        recovered = time.monotonic()
        wait_for(lambda: windows(d) and open_window(d) is None)
        assert d.proc.poll() is None
    [w] = query_windows(db, check="api")
    assert w.end is not None
    assert 0.6 < w.end - w.start < recovered - failing + 0.5, (w.end - w.start, recovered - failing)
    log = (tmp_path / "daemon.log").read_text()
    assert "the system clock went back 1h" in log, log


def test_a_forward_jump_of_the_clock_makes_retention_delete_nothing_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Target) -> None:
    """A 20-day jump for a few seconds while retention is at work: results of the last
    hours stay (today's main deleted every stored result)."""
    db = tmp_path / "history.db"
    asyncio.run(_create_schema(db))
    now = time.time()
    old = [(now - 15 * 86400 + i, "acme", "api", "ok", 200, 0.1, 0, "") for i in range(2500)]
    recent = [(now - 3600 + i, "acme", "api", "ok", 200, 0.1, 0, "") for i in range(500)]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", old + recent)

    def count(sql: str, *args: float) -> int:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
            return int(conn.execute(sql, args).fetchone()[0])

    def old_left() -> int:
        return count("SELECT count(*) FROM results WHERE ts < ?", now - 14 * 86400)

    offset = fake_clock(monkeypatch, tmp_path)
    config = {**one_check(target.url("/ok")), "defaults": {"interval": "1s", "timeout": "500ms"}}
    with start_daemon(config, tmp_path, db=db) as d:
        wait_for(lambda: old_left() <= 500, timeout=10)  # retention's first step (2,000 rows) ran
        offset.write_text("+20d\n")  # the clock jumps 20 days ahead ...
        time.sleep(3.5)  # ... while retention takes its next steps
        offset.write_text("+0\n")  # ... and comes back
        wait_for(lambda: old_left() == 0, timeout=10)  # the old results go, as they should
        assert d.proc.poll() is None
    assert count("SELECT count(*) FROM results WHERE ts BETWEEN ? AND ?", now - 3601, now - 3100) == 500
    assert "the system clock jumped 20d" in (tmp_path / "daemon.log").read_text()


async def test_retention_refuses_to_follow_the_clock_further_than_the_time_that_passed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store's own guard, for a clock that took a jump (the daemon's steady clock
    takes a forward step that held for 5 minutes): retention deletes by the time that
    passed since its last run, not by the clock."""
    db = tmp_path / "history.db"
    await _create_schema(db)
    now = time.time()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(now - 3600 + i, "acme", "api", "ok", 200, 0.1, 0, "") for i in range(100)])
    jump = [0.0]
    store = Store(db, results_retention=14 * 86400, clock=lambda: time.time() + jump[0])
    store.flush_interval = store.retention_every = 0.05
    store.open(0.0)
    await asyncio.sleep(0.3)  # retention ran on the true clock
    jump[0] = 20 * 86400
    await asyncio.sleep(0.5)  # ... and some more times after the jump
    await store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 100
    assert [r.getMessage() for r in caplog.records if "retention" in r.getMessage()] == [
        "retention: the clock jumped 20d 0h ahead of the time that passed; results are deleted by the time "
        "that passed, not by the clock, until the next start"]


async def _create_schema(db: Path) -> None:
    store = Store(db)
    store.open(0.0)
    await store.close()


def test_the_steady_clock_never_goes_back_and_takes_a_forward_step_only_once_it_holds() -> None:
    wall, mono = [1_000_000.0], [50.0]

    def clock() -> tuple[SteadyClock, Any]:
        c = SteadyClock(wall=lambda: wall[0], monotonic=lambda: mono[0], adopt_after=300.0)

        def tick(seconds: float, step: float = 0.0) -> float:
            mono[0] += seconds
            wall[0] += seconds + step
            return c.now()
        return c, tick

    _, tick = clock()
    assert tick(10) == 1_000_010.0
    assert tick(10, step=-3600) == 1_000_020.0  # stepped back: ours goes on, 10 s later
    assert tick(10) == 1_000_030.0
    assert tick(10, step=20 * 86400) == 1_000_040.0  # a jump ahead: not yet
    assert tick(70, step=-20 * 86400) == 1_000_110.0  # undone within adopt_after: never taken
    assert tick(600) == 1_000_710.0  # still an hour ahead of the system clock, and counting

    wall[0], mono[0] = 2_000_000.0, 50.0
    _, tick = clock()
    assert tick(10, step=0.5) == wall[0]  # drift forward within the tolerance: followed
    ahead = tick(10, step=600)  # a forward correction that holds ...
    assert ahead == pytest.approx(wall[0] - 600)
    assert tick(299) == pytest.approx(wall[0] - 600)
    assert tick(2) == wall[0]  # ... is taken after adopt_after, in one step forward
    assert tick(1) == wall[0]


# ------------------------------------------------------------------------ the file

def test_a_deleted_database_is_noticed_and_receivers_still_hear_closed(
        tmp_path: Path, target: Target) -> None:
    """Today's main wrote on into the deleted file: after a restart the open window was
    gone, and the receivers never got its end."""
    db = tmp_path / "history.db"
    target.mode["gone"] = "503"
    config = one_check(target.url("/switch/gone"),
                       notify={"webhooks": [{"url": target.url("/hook"), "retry_initial": "50ms"}]})
    with start_daemon(config, tmp_path, db=db) as d:
        wait_for(lambda: open_window(d))
        start = open_window(d)["start"]  # type: ignore[index]
        for suffix in ("", "-wal", "-shm"):  # rm history.db*
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{db}{suffix}")
        wait_for(lambda: "was deleted while aipulse ran" in d.log.read_text())
        wait_for(lambda: d.value("aipulse_storage_replaced_total") == 1.0, timeout=10)  # with the heartbeat
        assert db.exists()
    assert [w.start for w in query_windows(db, check="api") if w.end is None] != []

    with start_daemon(config, tmp_path, db=db, log_name="again.log") as d:
        assert "resuming 2 open windows" in d.log.read_text()  # the check's and the service's
        target.mode["gone"] = "ok"
        wait_for(lambda: windows(d) and open_window(d) is None)
        [w] = windows(d)
        assert w["start"] == start and w["end"] is not None
        wait_for(lambda: any(h["event"] == "outage_closed" and h["check"] == "api" for h in target.hooks))
    assert [h["event"] for h in target.hooks if h["check"] == "api"] == ["outage_opened", "outage_closed"]


async def test_a_replaced_database_gets_the_running_state_carried_over(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    store = Store(db)
    store.flush_interval = 0.05
    store.open(0.0)
    w = OutageWindow("acme", "api", "down", 1000.0, reason="timeout", severity="major_outage")
    await store.write([WindowOpened(w), StateChanged("acme", "api", "down", 1000.0)])
    other = tmp_path / "restored-backup.db"
    await _create_schema(other)
    os.replace(other, db)  # a backup restored over the live file
    deadline = time.monotonic() + 5
    while store.replaced == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    later = OutageWindow("acme", "web", "down", 2000.0, reason="connect", severity="major_outage")
    await store.write([WindowOpened(later)])
    await store.close()
    assert store.replaced == 1
    after = Store(db).open(0.0)
    assert {(x.check, x.start) for x in after.open_windows} == {("api", 1000.0), ("web", 2000.0)}
    assert [(t.check, t.state) for t in after.transitions] == [("api", "down")]


# ------------------------------------------------------------------------ secrets

def test_a_reload_that_cannot_read_a_secret_keeps_the_running_check_and_its_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Target) -> None:
    """Today's main dropped the check (its secret unreadable for a moment), closing a
    real outage, and opened it again as a new window on the next reload."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "api-key").write_text("sk-live-1234567890\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    target.mode["cred"] = "503"
    config = one_check(target.url("/switch/cred"), headers={"Authorization": "Bearer ${file:api-key}"})
    with start_daemon(config, tmp_path, run_args=("--web.enable-lifecycle",)) as d:
        wait_for(lambda: open_window(d))
        start = open_window(d)["start"]  # type: ignore[index]
        (creds / "api-key").unlink()  # being rotated
        r = httpx.post(d.url("/-/reload"), timeout=10)
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert "services.acme.checks.api" in error and "${file:api-key}" in error
        assert "refused as a whole" in error
        assert d.value("aipulse_config_last_reload_successful") == 0.0
        assert open_window(d)["start"] == start  # type: ignore[index]
        assert d.value("aipulse_outage_active", service="acme", check="api") == 1.0

        (creds / "api-key").write_text("sk-live-0987654321\n")
        assert httpx.post(d.url("/-/reload"), timeout=10).status_code == 200
        target.mode["cred"] = "ok"
        wait_for(lambda: open_window(d) is None)
        [w] = windows(d)  # one window, the whole outage
        assert w["start"] == start and w["end"] is not None
    log = (tmp_path / "daemon.log").read_text()
    assert "sk-live" not in log
