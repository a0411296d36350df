"""SQLite history: probe results (batched), outage windows, state transitions, monitor gaps.

One writer. A dedicated thread owns the only write connection; nothing on the asyncio
event loop touches the database. The loop hands work over through in-memory queues:

* `add_result` appends a row to a bounded queue (never blocks, never does I/O);
  the writer flushes it at least every `flush_interval` seconds or every
  `batch_rows` rows.
* `await write(events)` queues the events and returns once they are committed (one
  transaction per attempt, in call order). If the commit fails it raises
  `StorageError` after the first failed attempt; the events stay queued and are
  written, still in order, when storage comes back.
* `heartbeat(now)` records the latest liveness time; the writer stores it.

Storage errors (sqlite3.Error, OSError: disk full, read-only file, a lock held by
someone else) never kill the writer: it logs at most once a minute, counts them in
`errors`, keeps what it could not write in memory and retries every cycle.

History that stays true:

* The file deleted or replaced while the daemon runs (an open connection would go on
  writing into the unlinked file, and a restart would find no history and no open
  window, so receivers would never hear "closed"): every cycle the writer compares the
  path's file with the one it opened. On a change it logs, counts `replaced`, opens
  the file now at the path (a fresh one if none) and writes into it what it keeps of
  the running state: open windows and gaps, each check's first result and latest
  state, the heartbeat.
* Retention deletes by a clock of its own that moves forward at most by the time that
  passed plus one step (`retention_every`) between two runs: a forward jump of the
  clock (20 days for 70 s) deletes nothing, and is said once.

Readers (`query_windows`, the CLI, dashboards' API) open their own read-only
connections: WAL lets them read while the daemon writes.

Schema: `PRAGMA user_version` is the schema version; `MIGRATIONS[i]` brings a database
from version i to i + 1. To change the schema, append one entry to MIGRATIONS.
Service-level rows (check None) are stored with check_id '' so that UNIQUE constraints
work (SQLite treats NULLs in a UNIQUE index as distinct); check ids are [a-z0-9_-]+,
so '' never collides with a real check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.outage import (
    Event,
    Gap,
    GapClosed,
    GapOpened,
    OutageWindow,
    StateChanged,
    WindowClosed,
    WindowOpened,
    WindowUpdated,
)
from monitor.result import ProbeResult
from monitor.units import format_duration
from monitor.vendorlog import VendorIncidentRecord, VendorSnapshot

log = logging.getLogger("aipulse.store")

EVENT_TYPES = (WindowOpened, WindowClosed, WindowUpdated, StateChanged, GapOpened, GapClosed, VendorSnapshot)
MAX_DETAIL = 1024  # characters of a result's detail kept in the database

# MIGRATIONS[i] takes the schema from version i to version i + 1 (one transaction).
MIGRATIONS: list[tuple[str, ...]] = [
    # 1: initial schema
    (
        """CREATE TABLE results (
            ts REAL NOT NULL,            -- probe start, epoch seconds
            service TEXT NOT NULL,
            check_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            status INTEGER NOT NULL,     -- HTTP status code, 0 when no response
            duration REAL NOT NULL,      -- seconds
            degraded INTEGER NOT NULL,   -- 0/1
            detail TEXT NOT NULL         -- already redacted upstream; never a secret
        )""",
        "CREATE INDEX results_ts ON results (ts)",
        """CREATE TABLE windows (
            id INTEGER PRIMARY KEY,
            service TEXT NOT NULL,
            check_id TEXT NOT NULL,      -- '' for a service-level window
            kind TEXT NOT NULL CHECK (kind IN ('down', 'degraded')),
            start_ts REAL NOT NULL,
            end_ts REAL,                 -- NULL while open
            reason TEXT NOT NULL,
            severity TEXT NOT NULL,
            UNIQUE (service, check_id, kind, start_ts)
        )""",
        "CREATE INDEX windows_start ON windows (start_ts)",
        "CREATE INDEX windows_end ON windows (end_ts)",
        "CREATE INDEX windows_check_start ON windows (service, check_id, start_ts)",
        """CREATE TABLE transitions (
            service TEXT NOT NULL,
            check_id TEXT NOT NULL,      -- '' for the service's own status
            ts REAL NOT NULL,
            state TEXT NOT NULL,
            UNIQUE (service, check_id, ts, state)
        )""",
        "CREATE INDEX transitions_ts ON transitions (ts)",
        """CREATE TABLE gaps (
            id INTEGER PRIMARY KEY,
            start_ts REAL NOT NULL,
            end_ts REAL,                 -- NULL while open
            cause TEXT NOT NULL,
            UNIQUE (start_ts, cause)
        )""",
        "CREATE INDEX gaps_end ON gaps (end_ts)",
        """CREATE TABLE checks (
            service TEXT NOT NULL,
            check_id TEXT NOT NULL,
            first_seen REAL NOT NULL,    -- time of the first result ever stored
            PRIMARY KEY (service, check_id)
        ) WITHOUT ROWID""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    ),
    # 2: the vendor's incidents (monitor.vendorlog), for /history
    (
        """CREATE TABLE vendor_incidents (
            service TEXT NOT NULL,
            incident_id TEXT NOT NULL,   -- the vendor's id
            name TEXT NOT NULL,          -- vendor text, bounded and cleaned (vendorformats.model.text)
            impact TEXT NOT NULL,        -- Statuspage impact words, maintenance included
            started REAL,                -- the vendor's declared start; NULL when not given
            first_seen REAL NOT NULL,    -- our first readable poll that showed it
            ended REAL,                  -- NULL while open
            PRIMARY KEY (service, incident_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX vendor_incidents_ended ON vendor_incidents (ended)",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


class StorageError(Exception):
    """The database could not be opened, read or written."""


@dataclass
class History:
    """What the daemon needs to resume after a restart."""

    open_windows: list[OutageWindow] = field(default_factory=list)  # end is None
    windows: list[OutageWindow] = field(default_factory=list)  # overlapping [since, now], by start
    transitions: list[StateChanged] = field(default_factory=list)  # ascending: last before since, then all
    gaps: list[Gap] = field(default_factory=list)  # overlapping [since, now], by start
    first_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    heartbeat: float | None = None  # None for a new database


# ---------------------------------------------------------------------------- helpers

def _check_col(check: str | None) -> str:
    return "" if check is None else check


def _check_val(col: str) -> str | None:
    return None if col == "" else col


_WINDOW_COLS = "service, check_id, kind, start_ts, end_ts, reason, severity"


def _window(row: Sequence[Any]) -> OutageWindow:
    service, check_id, kind, start, end, reason, severity = row
    return OutageWindow(service, _check_val(check_id), kind, start, end, reason, severity)


def _result_row(r: ProbeResult) -> tuple[Any, ...]:
    return (float(r.started), r.service, r.check, str(r.reason), int(r.status_code),
            float(r.duration), int(bool(r.degraded)), (r.detail or "")[:MAX_DETAIL])


def _busy_ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _read_history(conn: sqlite3.Connection, since: float) -> History:
    h = History()
    h.windows = [_window(r) for r in conn.execute(
        f"SELECT {_WINDOW_COLS} FROM windows WHERE end_ts IS NULL OR end_ts >= ? "
        "ORDER BY start_ts, id", (since,))]
    h.open_windows = [w for w in h.windows if w.end is None]
    # Each check's state as the history begins (its latest change before `since`), then
    # every change since: replayed, they give the state timeline from `since` on.
    h.transitions = sorted((
        StateChanged(service, _check_val(check_id), state, ts)
        for service, check_id, ts, state in conn.execute(
            "SELECT service, check_id, max(ts), state FROM transitions WHERE ts < ? "
            "GROUP BY service, check_id", (since,))
    ), key=lambda t: t.at) + [
        StateChanged(service, _check_val(check_id), state, ts)
        for service, check_id, ts, state in conn.execute(
            "SELECT service, check_id, ts, state FROM transitions WHERE ts >= ? "
            "ORDER BY ts, rowid", (since,))
    ]
    h.gaps = [Gap(start, end, cause) for start, end, cause in conn.execute(
        "SELECT start_ts, end_ts, cause FROM gaps WHERE end_ts IS NULL OR end_ts >= ? "
        "ORDER BY start_ts, id", (since,))]
    h.first_seen = {(s, c): t for s, c, t in conn.execute(
        "SELECT service, check_id, first_seen FROM checks")}
    row = conn.execute("SELECT value FROM meta WHERE key = 'heartbeat'").fetchone()
    h.heartbeat = float(row[0]) if row is not None and row[0] is not None else None
    return h


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version (len(MIGRATIONS)); return the version found.

    `conn` must be in autocommit mode (isolation_level=None). Each step runs in its
    own transaction together with its `PRAGMA user_version`, so a crash mid-way
    leaves a consistent database at the previous version.
    """
    target = len(MIGRATIONS)
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > target:
        raise StorageError(f"database schema version {found} is newer than this aipulse "
                           f"supports ({target}); upgrade aipulse")
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= target:
                conn.execute("COMMIT")
                return found
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise


@dataclass
class _Carry:
    """What the writer keeps of the running state, from the events it writes: enough to
    start a fresh file that the restart after it can resume from."""

    windows: dict[tuple[str, str, str, float], OutageWindow] = field(default_factory=dict)  # open ones
    gaps: dict[tuple[float, str], Gap] = field(default_factory=dict)  # open ones
    states: dict[tuple[str, str], StateChanged] = field(default_factory=dict)  # latest; check '': service
    heartbeat: float | None = None

    def follow(self, e: Event) -> None:
        if isinstance(e, WindowOpened | WindowUpdated):
            w = e.window
            self.windows[(w.service, _check_col(w.check), w.kind, w.start)] = w
        elif isinstance(e, WindowClosed):
            w = e.window
            self.windows.pop((w.service, _check_col(w.check), w.kind, w.start), None)
        elif isinstance(e, StateChanged):
            self.states[(e.service, _check_col(e.check))] = e
        elif isinstance(e, GapOpened):
            self.gaps[(e.gap.start, e.gap.cause)] = e.gap
        elif isinstance(e, GapClosed):
            self.gaps.pop((e.gap.start, e.gap.cause), None)

    def events(self) -> list[Event]:
        return [*(WindowOpened(w) for w in self.windows.values()), *self.states.values(),
                *(GapOpened(g) for g in self.gaps.values())]


@dataclass
class _Pending:
    """One `write()` call waiting for its commit."""

    events: Sequence[Event]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    on_commit: Callable[[], None] | None = None  # called on the loop once committed
    settled: bool = False  # the caller has been answered (success or StorageError)

    def committed(self) -> None:
        """Written: answer the caller (if not yet), then tell `on_commit`."""
        self.settle(None)
        if self.on_commit is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(self.on_commit)

    def settle(self, exc: BaseException | None) -> None:
        if self.settled:
            return
        self.settled = True

        def resolve() -> None:
            if self.future.done():  # the caller was cancelled or timed out
                return
            if exc is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(exc)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(resolve)


# ---------------------------------------------------------------------------- the store

class Store:
    """The daemon's history. `open()`, then `add_result`/`write`/`heartbeat`, then `close()`."""

    # Tunables (instance attributes, so tests may change them before open()).
    flush_interval = 1.0  # seconds: results are flushed (and retried) at least this often
    batch_rows = 500  # a flush starts as soon as this many results are pending
    retention_step = 2000  # results deleted per cycle at most, so retention never stalls
    max_pending_results = 100_000  # kept in memory while storage fails; oldest dropped
    busy_timeout = 5.0  # seconds to wait for a lock held by another connection
    write_timeout = 30.0  # write() gives up (StorageError) after this; events stay queued
    log_every = 60.0  # seconds between two storage error log lines
    retention_every = 60.0  # seconds between retention runs when little is left to delete

    def __init__(self, path: str | os.PathLike[str], results_retention: float = 14 * 86400,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.results_retention = results_retention
        self.clock = clock  # wall-clock epoch seconds (the daemon's SteadyClock)
        self.errors = 0  # storage errors so far (failed opens, transactions, reconnects)
        self.replaced = 0  # times the file was found deleted or replaced (a fresh one opened)
        self.dropped_results = 0  # results lost because the in-memory queue was full
        self._cond = threading.Condition()
        # Shared with the writer, guarded by _cond:
        self._results: deque[tuple[Any, ...]] = deque()
        self._writes: list[_Pending] = []
        self._calls: list[tuple[Callable[[sqlite3.Connection], Any], concurrent.futures.Future[Any]]] = []
        self._heartbeat: float | None = None
        self._stopping = False
        # Writer thread only:
        self._conn: sqlite3.Connection | None = None
        self._backlog_results: list[tuple[Any, ...]] = []
        self._backlog_writes: list[_Pending] = []
        self._known_checks: dict[tuple[str, str], float] = {}  # check -> first result stored
        self._carry = _Carry()  # what a fresh file gets when the file is deleted or replaced
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._carry_due = False  # the file changed: write `_carry` into the new one
        self._failing = False
        self._last_log = -float("inf")
        self._suppressed = 0
        self._retention_due = 0.0
        self._retention_clock: tuple[float, float] | None = None  # (its time, monotonic) at the last run
        self._retention_refused = False
        # Lifecycle:
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped = threading.Event()
        self._stop_waiters: list[Callable[[], Any]] = []
        self._last_recovery_log = -float("inf")

    # -------------------------------------------------------------- caller side

    def open(self, since: float) -> History:
        """Create or migrate the schema, start the writer thread, return history since `since`.

        Blocks until the writer thread has opened the database. Raises StorageError when
        the database cannot be opened (a missing directory, a file that is not SQLite,
        a schema from a newer aipulse).
        """
        if self._thread is not None or self._closed:
            raise RuntimeError("Store.open() called twice (a Store opens once)")
        ready: concurrent.futures.Future[History] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(since, ready),
                                         name="aipulse-store", daemon=True)
        self._thread.start()
        try:
            return ready.result()
        except StorageError:
            self._closed = True
            raise

    def add_result(self, result: ProbeResult) -> None:
        """Queue one result. Never blocks on I/O; safe from the event loop or any thread."""
        row = _result_row(result)
        with self._cond:
            if self._closed:
                return
            if len(self._results) >= self.max_pending_results:
                self._results.popleft()
                self.dropped_results += 1
            self._results.append(row)
            if len(self._results) == self.batch_rows:
                self._cond.notify()

    async def write(self, events: Sequence[Event], on_commit: Callable[[], None] | None = None) -> None:
        """Commit `events` in one transaction, in order after earlier calls.

        Raises StorageError if that commit failed (the events stay queued and are
        written later, in order) or the store is not open. `on_commit` is called on the
        event loop once they are committed: before this returns, or on a later retry
        (never, if the store closes first).
        """
        events = list(events)
        for e in events:
            if not isinstance(e, EVENT_TYPES):
                raise TypeError(f"not a storable event: {e!r}")
            # A close without an end would reopen the row: refuse it here, not in the writer.
            if isinstance(e, WindowClosed) and e.window.end is None:
                raise ValueError(f"WindowClosed without an end: {e!r}")
            if isinstance(e, GapClosed) and e.gap.end is None:
                raise ValueError(f"GapClosed without an end: {e!r}")
        if not events:
            return
        loop = asyncio.get_running_loop()
        pending = _Pending(events, loop.create_future(), loop, on_commit)
        with self._cond:
            if self._closed or self._thread is None:
                raise StorageError("the store is not open")
            self._writes.append(pending)
            self._cond.notify()
        try:
            await asyncio.wait_for(pending.future, self.write_timeout)
        except TimeoutError:
            raise StorageError(f"no commit within {self.write_timeout:g}s; "
                               "the events stay queued") from None

    def heartbeat(self, now: float) -> None:
        """Record that the daemon is alive at `now`; written on the next cycle."""
        with self._cond:
            self._heartbeat = now

    async def close(self) -> None:
        """Flush what is pending (one attempt), stop the writer, close the connection."""
        with self._cond:
            if self._closed and self._thread is None:
                return
            self._closed = True
            self._stopping = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        # Wait without blocking the loop; the writer's final flush may take busy_timeout.
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not stopped.done():
                stopped.set_result(None)

        with self._cond:
            if self._stopped.is_set():
                wake()
            else:
                self._stop_waiters.append(lambda: loop.call_soon_threadsafe(wake))
        await stopped
        thread.join()

    @property
    def pending(self) -> tuple[int, int]:
        """(results, write calls) not yet committed."""
        with self._cond:
            return (len(self._results) + len(self._backlog_results),
                    len(self._writes) + len(self._backlog_writes))

    def _call_in_writer(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        """Run `fn(write_connection)` on the writer thread (maintenance and tests)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if self._closed or self._thread is None:
                raise StorageError("the store is not open")
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    # -------------------------------------------------------------- writer thread

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_busy_ms(self.busy_timeout)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            # In WAL mode, synchronous=NORMAL never corrupts the database and a commit
            # survives the death of the process (kill -9, OOM, crash): the WAL frames are
            # in the OS page cache. Only an OS crash or power loss may roll back the
            # last transactions, which costs us a few seconds of history, not integrity.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # trim the WAL after checkpoints
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            return conn
        except BaseException:
            conn.close()
            raise

    def _run(self, since: float, ready: concurrent.futures.Future[History]) -> None:
        try:
            try:
                conn = self._connect()
                try:
                    migrate(conn)
                    history = _read_history(conn, since)
                except BaseException:
                    conn.close()
                    raise
            except (sqlite3.Error, OSError, StorageError) as e:
                self.errors += 1
                msg = str(e) if isinstance(e, StorageError) else f"{self.path}: {e}"
                ready.set_exception(StorageError(msg))
                return
            self._conn = conn
            self._known_checks = dict(history.first_seen)
            for e in [*(WindowOpened(w) for w in history.open_windows), *history.transitions,
                      *(GapOpened(g) for g in history.gaps if g.end is None)]:
                self._carry.follow(e)
            self._carry.heartbeat = history.heartbeat
            ready.set_result(history)
            self._loop()
        except BaseException as e:  # a bug: never let the thread die silently
            log.exception("storage writer stopped unexpectedly")
            if not ready.done():
                ready.set_exception(StorageError(f"storage writer failed: {e}"))
        finally:
            self._finish()

    def _loop(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while True:
            with self._cond:
                while True:
                    if self._stopping or self._writes or self._calls:
                        break
                    if len(self._results) >= self.batch_rows and not self._failing:
                        break
                    wait = next_flush - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                stopping = self._stopping
                calls, self._calls = self._calls, []
                self._backlog_writes.extend(self._writes)
                self._writes = []
                self._backlog_results.extend(self._results)
                self._results.clear()
                heartbeat, self._heartbeat = self._heartbeat, None
            now = time.monotonic()
            periodic = now >= next_flush
            if periodic:
                next_flush = now + self.flush_interval
            self._cycle(heartbeat, retention=periodic or stopping)
            for fn, fut in calls:
                self._run_call(fn, fut)
            if stopping:
                return

    def _run_call(self, fn: Callable[[sqlite3.Connection], Any], fut: concurrent.futures.Future[Any]) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            fut.set_result(fn(self._conn))
        except BaseException as e:
            fut.set_exception(e)

    def _cycle(self, heartbeat: float | None, *, retention: bool) -> None:
        """One attempt at writing everything pending. Stops at the first failure."""
        if len(self._backlog_results) > self.max_pending_results:
            drop = len(self._backlog_results) - self.max_pending_results
            del self._backlog_results[:drop]
            with self._cond:  # add_result counts too
                self.dropped_results += drop
        writes = self._backlog_writes
        results = self._backlog_results
        try:
            self._watch_file()
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            if self._carry_due:
                migrate(conn)
                self._transaction(conn, lambda: self._write_carry(conn))
                self._carry_due = False
            if writes or heartbeat is not None:
                self._transaction(conn, lambda: self._write_events(conn, writes, heartbeat))
                self._backlog_writes = []
                for p in writes:
                    p.committed()
                heartbeat = None
            if results:
                new_checks: dict[tuple[str, str], float] = {}
                self._transaction(conn, lambda: self._write_results(conn, results, new_checks))
                self._backlog_results = []
                for key, first in new_checks.items():
                    self._known_checks.setdefault(key, first)
            if retention:
                self._retention_step(conn)
        except Exception as e:  # sqlite3.Error, OSError, or a bug: keep everything, retry
            self._storage_error(e)
            if heartbeat is not None:
                with self._cond:  # keep it, unless a newer one arrived meanwhile
                    if self._heartbeat is None:
                        self._heartbeat = heartbeat
            for p in self._backlog_writes:
                p.settle(StorageError(f"storage error: {e}; the events stay queued for retry"))
            return
        if self._failing:
            self._failing = False
            now = time.monotonic()
            if now - self._last_recovery_log >= self.log_every:
                self._last_recovery_log = now
                log.warning("storage works again: backlog written (%d errors so far)", self.errors)

    def _transaction(self, conn: sqlite3.Connection, body: Callable[[], None]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            body()
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                # The connection is in an unknown state: drop it, reconnect next cycle.
                self._drop_connection()
            raise

    def _write_events(self, conn: sqlite3.Connection, writes: list[_Pending],
                      heartbeat: float | None) -> None:
        for p in writes:
            for e in p.events:
                self._write_event(conn, e)
                self._carry.follow(e)  # (written again on a retry, should this roll back)
        if heartbeat is not None:
            self._carry.heartbeat = heartbeat
            conn.execute("INSERT INTO meta (key, value) VALUES ('heartbeat', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (heartbeat,))

    @staticmethod
    def _write_event(conn: sqlite3.Connection, e: Event) -> None:
        if isinstance(e, WindowUpdated):
            w = e.window
            conn.execute("UPDATE windows SET severity = ? WHERE service = ? AND check_id = ? "
                         "AND kind = ? AND start_ts = ? AND end_ts IS NULL",
                         (w.severity, w.service, _check_col(w.check), w.kind, w.start))
        elif isinstance(e, WindowOpened | WindowClosed):
            w = e.window
            row = (w.service, _check_col(w.check), w.kind, w.start, w.end, w.reason, w.severity)
            if isinstance(e, WindowOpened):
                # Writing the same opening twice is harmless, and never reopens a closed window.
                conn.execute(f"INSERT OR IGNORE INTO windows ({_WINDOW_COLS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            else:
                # The row from WindowOpened gets its end; if that row is missing, insert it whole.
                conn.execute(f"INSERT INTO windows ({_WINDOW_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                             "ON CONFLICT (service, check_id, kind, start_ts) DO UPDATE "
                             "SET end_ts = excluded.end_ts, reason = excluded.reason, "
                             "severity = excluded.severity", row)
        elif isinstance(e, StateChanged):
            conn.execute("INSERT OR IGNORE INTO transitions (service, check_id, ts, state) "
                         "VALUES (?, ?, ?, ?)", (e.service, _check_col(e.check), e.at, e.state))
        elif isinstance(e, GapOpened):
            g = e.gap
            conn.execute("INSERT OR IGNORE INTO gaps (start_ts, end_ts, cause) VALUES (?, ?, ?)",
                         (g.start, g.end, g.cause))
        elif isinstance(e, VendorSnapshot):
            _write_vendor_snapshot(conn, e)
        elif isinstance(e, GapClosed):
            g = e.gap
            conn.execute("INSERT INTO gaps (start_ts, end_ts, cause) VALUES (?, ?, ?) "
                         "ON CONFLICT (start_ts, cause) DO UPDATE SET end_ts = excluded.end_ts",
                         (g.start, g.end, g.cause))
        else:  # write() checks types; this is a bug
            raise TypeError(f"not a storable event: {e!r}")

    def _write_results(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                       new: dict[tuple[str, str], float]) -> None:
        """Insert `rows`; record first_seen of checks not seen before (collected in `new`)."""
        conn.executemany("INSERT INTO results (ts, service, check_id, reason, status, duration, "
                         "degraded, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        new.clear()
        for row in rows:
            key = (row[1], row[2])
            if key not in self._known_checks and (key not in new or row[0] < new[key]):
                new[key] = row[0]
        if new:
            conn.executemany("INSERT OR IGNORE INTO checks (service, check_id, first_seen) "
                             "VALUES (?, ?, ?)", [(s, c, t) for (s, c), t in new.items()])

    def _watch_file(self) -> None:
        """Is the file at the path still the one we opened? If not (deleted, or another
        file moved there), say so and start on the file at the path (see module doc)."""
        if self._conn is None or self._identity is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            what = "deleted"
        else:
            if (st.st_dev, st.st_ino) == self._identity:
                return
            what = "replaced by another file"
        self.replaced += 1
        log.error("%s was %s while aipulse ran: carrying %d open windows and the checks' latest states "
                  "over to %s; the history before it is not there", self.path, what,
                  len(self._carry.windows), "a new file" if what == "deleted" else "that file")
        self._drop_connection()  # (closing it removes its -wal and -shm)
        if what == "deleted":
            for suffix in ("-wal", "-shm", "-journal"):  # a stale log must never meet a new file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
        self._identity = None
        self._carry_due = True

    def _write_carry(self, conn: sqlite3.Connection) -> None:
        for e in self._carry.events():
            self._write_event(conn, e)
        conn.executemany("INSERT OR IGNORE INTO checks (service, check_id, first_seen) VALUES (?, ?, ?)",
                         [(s, c, t) for (s, c), t in self._known_checks.items()])
        if self._carry.heartbeat is not None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('heartbeat', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (self._carry.heartbeat,))

    def _retention_step(self, conn: sqlite3.Connection) -> None:
        mono = time.monotonic()
        if mono < self._retention_due:
            return
        now = self._retention_now(mono)
        cur = conn.execute(
            "DELETE FROM results WHERE rowid IN "
            "(SELECT rowid FROM results WHERE ts < ? ORDER BY ts LIMIT ?)",
            (now - self.results_retention, self.retention_step))
        # Nothing (or little) left to delete: look again in a minute, not every cycle.
        self._retention_due = mono + (0 if cur.rowcount >= self.retention_step else self.retention_every)

    def _retention_now(self, mono: float) -> float:
        """The time retention deletes by: the clock, but never further ahead of its last
        run than the time that passed plus one step (see module doc)."""
        wall = self.clock()
        last = self._retention_clock
        if last is not None:
            passed = last[0] + (mono - last[1])
            if wall > passed + self.retention_every:
                if not self._retention_refused:
                    self._retention_refused = True
                    log.warning("retention: the clock jumped %s ahead of the time that passed; results are "
                                "deleted by the time that passed, not by the clock, until the next start",
                                format_duration(wall - passed))
                wall = passed
        self._retention_clock = (wall, mono)
        return wall

    def _storage_error(self, e: BaseException) -> None:
        self.errors += 1
        self._failing = True
        now = time.monotonic()
        if now - self._last_log < self.log_every:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last_log = now
        self._suppressed = 0
        results, writes = len(self._backlog_results), len(self._backlog_writes)
        if isinstance(e, sqlite3.Error | OSError | StorageError):
            log.error("storage error on %s: %s%s; keeping %d results and %d event batches "
                      "in memory, retrying every %gs", self.path, e, more, results, writes,
                      self.flush_interval)
        else:
            log.error("unexpected storage failure on %s%s; keeping %d results and %d event "
                      "batches in memory", self.path, more, results, writes, exc_info=e)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _finish(self) -> None:
        """Writer exit: answer every waiting caller, report losses, close the connection."""
        with self._cond:
            self._closed = True
            self._backlog_writes.extend(self._writes)
            self._writes = []
            self._backlog_results.extend(self._results)
            self._results.clear()
            calls, self._calls = self._calls, []
        lost_events = sum(len(p.events) for p in self._backlog_writes)
        if lost_events or self._backlog_results:
            log.error("storage closed with %d events and %d results not written",
                      lost_events, len(self._backlog_results))
        for p in self._backlog_writes:
            p.settle(StorageError("the store closed before these events could be written"))
        for _, fut in calls:
            fut.set_exception(StorageError("the store is closed"))
        self._drop_connection()
        with self._cond:
            self._stopped.set()
            waiters, self._stop_waiters = self._stop_waiters, []
        for wake in waiters:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                wake()


# ---------------------------------------------------------------------------- readers

def _write_vendor_snapshot(conn: sqlite3.Connection, s: VendorSnapshot) -> None:
    """Open incidents: inserted once (first_seen = this poll), name and impact kept
    current, reopened if seen open again. Listed past ones: recorded with their end.
    Open rows of the service that this readable poll no longer lists end now."""
    for i in s.open:
        conn.execute("INSERT INTO vendor_incidents (service, incident_id, name, impact, started, first_seen, "
                     "ended) VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (service, incident_id) DO UPDATE "
                     "SET name = excluded.name, impact = excluded.impact, "
                     "started = COALESCE(excluded.started, started), ended = NULL",
                     (s.service, i.id, i.name, i.impact, i.started, s.at))
    for i in s.past:
        conn.execute("INSERT INTO vendor_incidents (service, incident_id, name, impact, started, first_seen, "
                     "ended) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service, incident_id) DO UPDATE "
                     "SET ended = excluded.ended, started = COALESCE(started, excluded.started)",
                     (s.service, i.id, i.name, i.impact, i.started,
                      i.started if i.started is not None else i.ended, i.ended))
    ids = [i.id for i in s.open]
    conn.execute("UPDATE vendor_incidents SET ended = ? WHERE service = ? AND ended IS NULL AND incident_id "
                 f"NOT IN ({', '.join('?' * len(ids))})", (s.at, s.service, *ids))


def query_vendor_incidents(path: str | os.PathLike[str], since: float, *,
                           service: str | None = None, limit: int = 5000) -> list[VendorIncidentRecord]:
    """Vendor incidents open at some time in [since, now], newest start first.
    Raises StorageError when the database cannot be read."""
    sql = ("SELECT service, incident_id, name, impact, started, first_seen, ended FROM vendor_incidents "
           "WHERE (ended IS NULL OR ended >= ?)")
    args: list[Any] = [since]
    if service is not None:
        sql += " AND service = ?"
        args.append(service)
    sql += " ORDER BY COALESCE(started, first_seen) DESC LIMIT ?"
    args.append(limit)
    with contextlib.closing(connect_readonly(path)) as conn:
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] < 2:
                return []  # nothing recorded yet (or an older schema, before the first write)
            return [VendorIncidentRecord(*row) for row in conn.execute(sql, args)]
        except sqlite3.Error as e:
            raise StorageError(f"{path}: {e}") from e


def connect_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection (URI mode=ro); WAL lets it read while the daemon writes."""
    p = Path(path)
    if not p.exists():
        raise StorageError(f"{p}: no such database")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise StorageError(f"{p}: {e}") from e
    return conn


def query_windows(path: str | os.PathLike[str], *, service: str | None = None,
                  check: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 1000) -> list[OutageWindow]:
    """Windows overlapping [since, until], newest start first (open windows extend to now).

    `service` and `check` filter exactly; `check=None` does not filter.
    Raises StorageError when the database cannot be read.
    """
    where: list[str] = []
    args: list[Any] = []
    if service is not None:
        where.append("service = ?")
        args.append(service)
    if check is not None:
        where.append("check_id = ?")
        args.append(check)
    if until is not None:
        where.append("start_ts <= ?")
        args.append(until)
    if since is not None:
        if time.time() >= since:
            where.append("(end_ts >= ? OR end_ts IS NULL)")
        else:  # an open window extends to now, which is before `since`
            where.append("end_ts >= ?")
        args.append(since)
    sql = f"SELECT {_WINDOW_COLS} FROM windows"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY start_ts DESC, id DESC LIMIT ?"
    args.append(limit)
    with contextlib.closing(connect_readonly(path)) as conn:
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                return []  # an empty database: nothing recorded yet
            return [_window(r) for r in conn.execute(sql, args)]
        except sqlite3.Error as e:
            raise StorageError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------- page reads
# Reads of the status page (monitor.page); kept in one block, apart from the rest.

def query_latency(path: str | os.PathLike[str], start: float, end: float, *, buckets: int,
                  service: str | None = None) -> dict[tuple[str, str], list[tuple[float, float, int]]]:
    """Latency of good probes (reason ok, degraded included) per (service, check) over
    [start, end], bucketed by SQLite into at most `buckets` (mean time, mean duration,
    count) points: one query, on a read-only connection, whatever the row count.
    Failed probes are left out: a refused connection is fast, and that is not latency.
    Raises StorageError."""
    width = (end - start) / buckets
    sql = ("SELECT service, check_id, MIN(CAST((ts - ?) / ? AS INTEGER), ?) AS b, "
           "SUM(ts), SUM(duration), COUNT(*) FROM results "
           "WHERE ts >= ? AND ts <= ? AND reason = 'ok'")
    args: list[Any] = [start, width, buckets - 1, start, end]
    if service is not None:
        sql += " AND service = ?"
        args.append(service)
    sql += " GROUP BY service, check_id, b ORDER BY service, check_id, b"
    out: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    with contextlib.closing(connect_readonly(path)) as conn:
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                return out  # nothing recorded yet
            for svc, check, _, sum_ts, sum_duration, n in conn.execute(sql, args):
                out.setdefault((svc, check), []).append((sum_ts / n, sum_duration / n, n))
        except sqlite3.Error as e:
            raise StorageError(f"{path}: {e}") from e
    return out
