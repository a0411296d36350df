"""The SQLite history: real database files, a real writer thread, real kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import monitor.store as store_mod
from monitor.outage import (
    Gap,
    GapClosed,
    GapOpened,
    OutageWindow,
    StateChanged,
    WindowClosed,
    WindowOpened,
)
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.store import SCHEMA_VERSION, History, StorageError, Store, query_windows

ROOT = Path(__file__).resolve().parent.parent
T0 = time.time() - 3600  # results must be recent: the retention deletes old ones


def result(service: str = "svc", check: str = "api", started: float = T0, **kw: Any) -> ProbeResult:
    kw.setdefault("reason", Reason.OK)
    return ProbeResult(service, check, started, kw.pop("duration", 0.25), **kw)


def win(check: str | None = "api", start: float = 100.0, end: float | None = None,
        service: str = "svc", kind: str = "down", reason: str = "timeout") -> OutageWindow:
    return OutageWindow(service, check, kind, start, end, reason, "major_outage")


@contextlib.contextmanager
def reader(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def scalar(path: Path, sql: str, *args: Any) -> Any:
    with reader(path) as conn:
        return conn.execute(sql, args).fetchone()[0]


async def until(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.01)
    return value


async def reopen(path: Path, since: float = 0.0) -> History:
    store = Store(path)
    history = store.open(since)
    await store.close()
    return history


# ---------------------------------------------------------------------------- events


async def test_events_round_trip_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    store = Store(db)
    history = store.open(since=0.0)
    assert history == History()  # a new database: nothing, no heartbeat

    still_open = win("api", 100.0)
    closed = win("web", 200.0)
    service_level = win(None, 300.0, kind="degraded")
    await store.write([WindowOpened(still_open), WindowOpened(closed), WindowOpened(service_level)])
    await store.write([
        WindowClosed(replace(closed, end=250.0, reason="http_5xx")),
        StateChanged("svc", "api", "down", 110.0),
        StateChanged("svc", None, "partial_outage", 111.0),
        GapOpened(Gap(120.0, cause="not_running")),
        GapOpened(Gap(400.0)),
    ])
    await store.write([GapClosed(Gap(120.0, 130.0, "not_running"))])
    store.heartbeat(555.5)
    await store.close()

    h = await reopen(db, since=0.0)
    assert h.open_windows == [still_open, service_level]
    assert h.windows == [still_open, replace(closed, end=250.0, reason="http_5xx"), service_level]
    assert h.open_windows[1].check is None
    assert h.transitions == [StateChanged("svc", "api", "down", 110.0),
                             StateChanged("svc", None, "partial_outage", 111.0)]
    assert h.gaps == [Gap(120.0, 130.0, "not_running"), Gap(400.0, None, "offline")]
    assert h.heartbeat == 555.5

    # `since` bounds what is replayed: closed things before it are left out, open ones
    # stay; of the transitions before it, each check's latest (its state as `since` begins).
    h = await reopen(db, since=260.0)
    assert h.windows == [still_open, service_level] == h.open_windows
    assert h.transitions == [StateChanged("svc", "api", "down", 110.0),
                             StateChanged("svc", None, "partial_outage", 111.0)]
    assert h.gaps == [Gap(400.0, None, "offline")]


async def test_writes_are_idempotent_and_ordered(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    store = Store(db)
    store.open(0.0)
    w = win(None, 10.0)
    await store.write([WindowOpened(w), WindowOpened(w)])
    await store.write([WindowOpened(w)])  # e.g. replayed after a restart
    await store.write([WindowClosed(replace(w, end=20.0, reason="a"))])
    await store.write([WindowOpened(w)])  # a late duplicate never reopens a closed window
    await store.write([WindowClosed(replace(w, end=30.0, reason="b"))])  # the later close wins
    # A close whose opening was never stored still records the whole window.
    orphan = win("api", 50.0, 60.0)
    await store.write([WindowClosed(orphan), StateChanged("svc", "api", "up", 60.0),
                       StateChanged("svc", "api", "up", 60.0)])
    await store.close()
    assert query_windows(db) == [orphan, replace(w, end=30.0, reason="b")]
    assert scalar(db, "SELECT count(*) FROM transitions") == 1


async def test_write_rejects_bad_input_and_closed_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.db")
    with pytest.raises(StorageError):
        await store.write([WindowOpened(win())])  # not open yet
    store.open(0.0)
    with pytest.raises(TypeError):
        await store.write([win()])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        await store.write([WindowClosed(win())])  # no end: it would reopen the window
    await store.write([])
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StorageError):
        await store.write([WindowOpened(win())])
    store.add_result(result())  # dropped quietly: probes never fail because of storage
    with pytest.raises(RuntimeError):
        store.open(0.0)  # a Store opens once


async def test_query_windows_filters_and_order(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    a = win("api", 100.0, 200.0, service="svc1")
    b = win("web", 300.0, 400.0, service="svc1")
    c = win("api", 150.0, None, service="svc2", kind="degraded")
    d = win(None, 500.0, 600.0, service="svc1")
    store = Store(db)
    store.open(0.0)
    await store.write([WindowOpened(w) for w in (a, b, c, d)])
    await store.write([WindowClosed(w) for w in (a, b, d)])
    await store.close()

    assert query_windows(db) == [d, b, c, a]  # newest start first
    assert query_windows(db, service="svc1") == [d, b, a]
    assert query_windows(db, service="svc1", check="api") == [a]
    assert query_windows(db, check="api") == [c, a]
    assert query_windows(db, service="nope") == []
    assert query_windows(db, since=250.0) == [d, b, c]  # c is open: it extends to now
    assert query_windows(db, until=120.0) == [a]
    assert query_windows(db, since=210.0, until=290.0) == [c]
    assert query_windows(db, since=200.0, until=200.0) == [c, a]  # touching counts as overlap
    assert query_windows(db, since=650.0) == [c]
    assert query_windows(db, since=time.time() + 3600) == []  # open windows end now
    assert query_windows(db, limit=2) == [d, b]
    assert query_windows(db, service="svc1", check=None)[0].check is None


def test_query_windows_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such database"):
        query_windows(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # a reader never creates the database
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        query_windows(junk)


# ---------------------------------------------------------------------------- results


async def test_results_batched_and_first_seen(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    store = Store(db)
    store.open(0.0)
    for i in range(1200):
        store.add_result(result(check=f"c{i % 3}", started=T0 + i, detail=f"detail {i}",
                                status_code=503, reason=Reason.OVERLOADED, degraded=i % 2 == 1))
    await store.close()
    assert scalar(db, "SELECT count(*) FROM results") == 1200
    with reader(db) as conn:
        row = conn.execute("SELECT ts, service, check_id, reason, status, duration, degraded, detail "
                           "FROM results WHERE ts = ?", (T0 + 1,)).fetchone()
    assert row == (T0 + 1, "svc", "c1", "overloaded", 503, 0.25, 1, "detail 1")
    h = await reopen(db)
    assert h.first_seen == {("svc", "c0"): T0, ("svc", "c1"): T0 + 1, ("svc", "c2"): T0 + 2}

    # first_seen is the first result ever: later results do not move it.
    store = Store(db)
    store.open(0.0)
    store.add_result(result(check="c0", started=T0 + 5000))
    store.add_result(result(check="new", started=T0 + 5000))
    await store.close()
    h = await reopen(db)
    assert h.first_seen[("svc", "c0")] == T0
    assert h.first_seen[("svc", "new")] == T0 + 5000


async def test_results_flushed_every_second_or_every_batch(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    store = Store(db)
    store.open(0.0)
    t0 = time.monotonic()
    for i in range(10):
        store.add_result(result(started=T0 + i))
    await until(lambda: scalar(db, "SELECT count(*) FROM results") == 10, timeout=3.0)
    assert time.monotonic() - t0 < 1.6  # the periodic flush (1 s)
    await store.close()

    store = Store(db)
    store.flush_interval = 30.0  # only the batch size can trigger the flush now
    store.open(0.0)
    for i in range(store.batch_rows):
        store.add_result(result(started=T0 + 100 + i))
    await until(lambda: scalar(db, "SELECT count(*) FROM results") == 10 + store.batch_rows)
    await store.close()


async def test_retention_deletes_old_results_in_steps(tmp_path: Path) -> None:
    db = tmp_path / "ret.db"
    await reopen(db)  # create the schema
    now = time.time()
    old = [(now - 30 * 86400 + i, "svc", "api", "ok", 200, 0.1, 0, "") for i in range(5000)]
    recent = [(now - 3600 + i, "svc", "api", "ok", 200, 0.1, 0, "") for i in range(100)]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", old + recent)

    store = Store(db, results_retention=7 * 86400)
    store.flush_interval = 0.25
    store.retention_step = 2000
    store.open(0.0)
    store.add_result(result(started=now))
    seen = set()

    def old_rows() -> bool:
        seen.add(scalar(db, "SELECT count(*) FROM results WHERE ts < ?", now - 7 * 86400))
        return 0 in seen

    await until(old_rows, timeout=5.0)
    await store.close()
    assert seen <= {5000, 3000, 1000, 0}  # never more than one step at a time
    assert len(seen - {5000, 0}) >= 1  # and we saw it between steps
    assert scalar(db, "SELECT count(*) FROM results") == 101  # recent ones are kept


# ---------------------------------------------------------------------------- schema, WAL


async def test_schema_version_and_idempotent_open(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    store.open(0.0)
    await store.write([WindowOpened(win())])
    await store.close()
    assert scalar(db, "PRAGMA user_version") == SCHEMA_VERSION == len(store_mod.MIGRATIONS) == 2
    assert scalar(db, "PRAGMA journal_mode") == "wal"
    with reader(db) as conn:
        schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    for _ in range(2):
        assert (await reopen(db)).open_windows == [win()]
    with reader(db) as conn:
        assert conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
    assert scalar(db, "PRAGMA user_version") == 2


async def test_adding_a_migration_is_one_list_entry(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "m.db"
    store = Store(db)
    store.open(0.0)
    await store.write([WindowOpened(win())])
    await store.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [
        *store_mod.MIGRATIONS,
        ("ALTER TABLE results ADD COLUMN location TEXT NOT NULL DEFAULT ''",
         "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)"),
    ])
    assert (await reopen(db)).open_windows == [win()]
    assert scalar(db, "PRAGMA user_version") == store_mod.SCHEMA_VERSION + 1
    assert scalar(db, "SELECT count(*) FROM notes") == 0
    monkeypatch.undo()
    # A database from a newer aipulse is refused, not silently misread.
    store = Store(db)
    with pytest.raises(StorageError, match="newer"):
        store.open(0.0)
    await store.close()


async def test_open_errors_raise_storage_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all " * 500)
    store = Store(junk)
    with pytest.raises(StorageError):
        store.open(0.0)
    assert store.errors == 1
    await store.close()
    store = Store(tmp_path / "no" / "such" / "dir.db")
    with pytest.raises(StorageError):
        store.open(0.0)
    await store.close()


async def test_readers_read_while_the_store_writes(tmp_path: Path) -> None:
    db = tmp_path / "wal.db"
    store = Store(db)
    store.open(0.0)
    await store.write([WindowOpened(win("api", float(i))) for i in range(10)])
    # A long read transaction (a slow dashboard query) does not block the writer...
    with reader(db) as conn:
        conn.execute("BEGIN")
        assert conn.execute("SELECT count(*) FROM windows").fetchone()[0] == 10
        t0 = time.monotonic()
        for i in range(10, 60):
            await store.write([WindowOpened(win("api", float(i)))])
            store.add_result(result(started=T0 + i))
        assert time.monotonic() - t0 < 2.0
        # ...and keeps its own consistent snapshot meanwhile.
        assert conn.execute("SELECT count(*) FROM windows").fetchone()[0] == 10
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM windows").fetchone()[0] == 60
    # query_windows from other threads while writes go on.
    writing = True

    async def keep_writing() -> int:
        n = 60
        while writing:
            await store.write([WindowOpened(win("web", float(n)))])
            n += 1
        return n

    task = asyncio.create_task(keep_writing())
    counts = [len(await asyncio.to_thread(query_windows, db, limit=10_000)) for _ in range(20)]
    writing = False
    total = await task
    assert counts == sorted(counts) and counts[0] >= 60
    assert len(query_windows(db, limit=10_000)) == total
    await store.close()


# ---------------------------------------------------------------------------- kill -9

CHILD = r"""
import asyncio, sys, time
from dataclasses import replace
from monitor.outage import OutageWindow, StateChanged, WindowClosed, WindowOpened
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.store import Store

async def main(path, run):
    sys.stdin.readline()  # "go": the interpreter started while the previous child ran
    store = Store(path)
    store.open(since=0.0)
    print("ready", flush=True)
    base = run * 1_000_000.0
    i = 0
    while True:
        for k in range(20):
            store.add_result(ProbeResult("svc", f"c{k % 4}", time.time(), 0.1,
                                         Reason.TIMEOUT, detail="connect timeout " * 4))
        check = None if i % 5 == 0 else "api"
        w = OutageWindow("svc", check, "down", base + i, reason="timeout", severity="major_outage")
        await store.write([WindowOpened(w)])
        print(f"open {run} {i}", flush=True)
        await store.write([StateChanged("svc", check, "down", base + i + 0.25)])
        print(f"state {run} {i}", flush=True)
        if i % 3:
            await store.write([WindowClosed(replace(w, end=base + i + 0.5)),
                               StateChanged("svc", check, "up", base + i + 0.5)])
            print(f"close {run} {i}", flush=True)
        i += 1
        await asyncio.sleep(0.002)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_kill_9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    runs = 20
    rng = random.Random()
    acked: list[tuple[str, int, int]] = []
    procs: list[subprocess.Popen[str]] = []

    def spawn(run: int) -> subprocess.Popen[str]:
        with open(tmp_path / f"child{run}.err", "w") as err:
            p = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(run)], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        procs.append(p)
        return p

    t_start = time.monotonic()
    try:
        upcoming = spawn(0)
        for run in range(runs):
            child = upcoming
            if run + 1 < runs:
                upcoming = spawn(run + 1)  # starts its interpreter while this one writes
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            first = child.stdout.readline()
            assert first == "ready\n", (tmp_path / f"child{run}.err").read_text()
            lines: list[str] = []
            pump = threading.Thread(target=lines.extend, args=(child.stdout,))
            pump.start()
            time.sleep(rng.uniform(0.2, 0.6))
            child.send_signal(signal.SIGKILL)
            child.wait()
            pump.join()
            err = (tmp_path / f"child{run}.err").read_text()
            assert child.returncode == -signal.SIGKILL, err
            assert "Traceback" not in err and "storage error" not in err, err
            # A line cut by the kill was never fully acknowledged.
            acked += [(w[0], int(w[1]), int(w[2])) for w in (ln.split() for ln in lines if ln.endswith("\n"))]
            assert sum(1 for a in acked if a[1] == run) > 10, "the child barely wrote anything"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
    elapsed = time.monotonic() - t_start

    with reader(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        transitions = set(conn.execute("SELECT check_id, ts, state FROM transitions"))
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] > 1000
    windows = {(w.check, w.start): w for w in query_windows(db, limit=10**7)}
    for what, run, i in acked:
        check = None if i % 5 == 0 else "api"
        start = run * 1_000_000.0 + i
        w = windows.get((check, start))
        assert w is not None, (what, run, i)
        if what == "close":
            assert w.end == start + 0.5, (what, run, i)
            assert ("" if check is None else check, start + 0.5, "up") in transitions
        elif what == "state":
            assert ("" if check is None else check, start + 0.25, "down") in transitions
    assert elapsed < 20, elapsed


# ---------------------------------------------------------------------------- storage errors


async def test_locked_database_write_raises_then_catches_up_in_order(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Someone else holds the write lock (a second process, an open `sqlite3` shell)."""
    caplog.set_level(logging.WARNING, logger="aipulse.store")
    db = tmp_path / "lock.db"
    store = Store(db)
    store.busy_timeout = 0.05
    store.flush_interval = 0.1
    store.open(0.0)
    await store.write([StateChanged("svc", "api", "up", 1.0)])

    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        w = win("api", 10.0)
        t0 = time.monotonic()
        with pytest.raises(StorageError):
            await store.write([WindowOpened(w)])
        assert time.monotonic() - t0 < 1.0  # the probe loop is not held up
        t0 = time.perf_counter()
        for i in range(3000):  # probing callers carry on
            store.add_result(result(started=T0 + i))
        assert time.perf_counter() - t0 < 0.5
        with pytest.raises(StorageError):
            await store.write([WindowClosed(replace(w, end=20.0, reason="first"))])
        with pytest.raises(StorageError):
            await store.write([WindowClosed(replace(w, end=30.0, reason="second"))])
        store.heartbeat(42.0)
        await until(lambda: store.errors >= 5)
        assert store.pending == (3000, 3)
        errors = [r for r in caplog.records if r.name == "aipulse.store" and r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors  # at most one log line a minute
        assert "database is locked" in errors[0].getMessage()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    await until(lambda: store.pending == (0, 0))
    await store.write([StateChanged("svc", "api", "down", 50.0)])  # works again
    failures = store.errors
    await store.close()
    assert store.errors == failures
    assert query_windows(db) == [replace(w, end=30.0, reason="second")]  # written in call order
    assert scalar(db, "SELECT count(*) FROM results") == 3000
    h = await reopen(db)
    assert h.heartbeat == 42.0
    assert [t.at for t in h.transitions] == [1.0, 50.0]
    assert any("works again" in r.getMessage() for r in caplog.records)


async def test_disk_full_keeps_results_in_memory_until_space_returns(tmp_path: Path) -> None:
    """SQLITE_FULL for real: the writer connection may not grow the file (max_page_count)."""
    db = tmp_path / "full.db"
    store = Store(db)
    store.flush_interval = 0.1
    store.open(0.0)
    pages = await asyncio.wrap_future(store._call_in_writer(
        lambda conn: conn.execute("PRAGMA max_page_count = 1").fetchone()[0]))
    assert pages < 50  # capped at the current size: any growth now fails
    t0 = time.perf_counter()
    for i in range(3000):
        store.add_result(result(started=T0 + i, detail="upstream connect error " * 10))
    assert time.perf_counter() - t0 < 0.5
    await until(lambda: store.errors >= 3)
    assert scalar(db, "SELECT count(*) FROM results") == 0
    assert store.pending[0] == 3000
    store.heartbeat(7.0)  # small writes that fit in existing pages still go through

    await asyncio.wrap_future(store._call_in_writer(
        lambda conn: conn.execute("PRAGMA max_page_count = 1073741823").fetchone()))
    await until(lambda: store.pending == (0, 0))
    await until(lambda: scalar(db, "SELECT count(*) FROM results") == 3000)
    await store.close()
    assert (await reopen(db)).first_seen == {("svc", "api"): T0}


async def test_pending_results_are_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    store.max_pending_results = 100
    for i in range(250):  # not open yet: they queue
        store.add_result(result(started=T0 + i))
    assert store.dropped_results == 150
    store.open(0.0)
    await store.close()
    assert scalar(tmp_path / "b.db", "SELECT min(ts) FROM results") == T0 + 150  # oldest dropped
