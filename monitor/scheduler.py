"""Run every check on its own interval: fixed-rate, spread, capped, rate-limited per host.

Schedule math is pure (`spread_offset`, `next_tick`, `host_shares`); `Scheduler` is
the thin asyncio shell. Each check has its own task, so a slow or hanging check delays
no other. Before a probe starts it takes, in this order:

1. its host's share of `max_in_flight` (`host_shares`: in proportion to the host's
   checks), so one slow or hanging host cannot hold every slot and starve the others;
2. its host's rate limit (`per_host_rate`, aiolimiter's leaky bucket: a waiter sleeps
   until its turn on one timer per host, it never polls: BENCHMARKS.md);
3. a slot of the global `max_in_flight`.

The stable spread of start times keeps the limiter from waiting at all in the common
case.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiolimiter import AsyncLimiter

from monitor.config import CheckConfig
from monitor.result import ProbeResult

log = logging.getLogger(__name__)

RunProbe = Callable[[CheckConfig], Awaitable[ProbeResult]]
OnResult = Callable[[ProbeResult], Awaitable[None]]


def spread_offset(service: str, check: str, interval: float) -> float:
    """Stable start offset in [0, interval): checks spread over the first interval,
    the same way on every restart (so a restart does not bunch them)."""
    digest = hashlib.blake2b(f"{service}/{check}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


def next_tick(anchor: float, interval: float, after_tick: int, now: float) -> tuple[int, int]:
    """(next tick index, ticks missed) for fixed-rate ticks at anchor + k * interval.

    The next tick is after_tick + 1, unless `now` is already past it: then we skip to
    the latest tick not later than now (it starts late, not never) and count the rest
    as missed. Due times never drift, however long probes take.
    """
    k = after_tick + 1
    late_by = math.floor((now - anchor) / interval) - k
    if late_by > 0:
        return k + late_by, late_by
    return k, 0


def first_tick(anchor: float, interval: float, now: float) -> int:
    """Index of the first tick not earlier than now (a check added later waits for
    its own slot rather than starting late)."""
    return max(0, math.ceil((now - anchor) / interval))


def host_shares(checks_per_host: Mapping[str, int], max_in_flight: int) -> dict[str, int]:
    """Each host's share of `max_in_flight`: in proportion to its checks (rounded up),
    at least 1, and never more than its number of checks (a check has at most one
    probe in flight, so more would never be used). While the checks are no more than
    `max_in_flight`, every host may run all its checks at once: the shares bind only
    when the probes must queue, and then a host that hangs holds its share, not all."""
    total = sum(checks_per_host.values())
    return {host: max(1, min(n, math.ceil(max_in_flight * n / total)))
            for host, n in checks_per_host.items() if n > 0}


def rate_limiter(per_host_rate: float) -> AsyncLimiter:
    """`per_host_rate` starts a second on average, with bursts of at most that many
    (at least one: a rate below 1/s lets one start every 1/rate seconds)."""
    if per_host_rate >= 1:
        return AsyncLimiter(per_host_rate, 1.0)
    return AsyncLimiter(1, 1.0 / per_host_rate)


_NO_SHARE = contextlib.nullcontext()


class Scheduler:
    def __init__(
        self,
        run_probe: RunProbe,
        on_result: OnResult,
        *,
        max_in_flight: int,
        per_host_rate: float,
        on_lag: Callable[[float], None] = lambda lag: None,
        on_missed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._run_probe = run_probe
        self._on_result = on_result
        self._on_lag = on_lag
        self._on_missed = on_missed
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._per_host_rate = per_host_rate
        self._limiters: dict[str, AsyncLimiter] = {}
        # Per host: (its share, the semaphore of that size). A probe releases the one it
        # took, so a share resized by a reload applies to probes that start after it.
        self._shares: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._tasks: dict[tuple[str, str], tuple[CheckConfig, asyncio.Task[None]]] = {}
        self._epoch = asyncio.get_running_loop().time()

    def set_checks(self, checks: list[CheckConfig]) -> None:
        """Start new checks, stop removed ones; others run on. A changed check keeps
        its task (and schedule) and probes with its new config from its next tick on,
        unless its interval changed: then it restarts on its new schedule. (Restarting
        all 10,000 tasks of a changed config blocked the event loop for ~0.4 s.)"""
        wanted = {c.key: c for c in checks}
        self._set_shares(wanted.values())
        for key, (old, task) in list(self._tasks.items()):
            new = wanted.get(key)
            if new == old:
                continue
            if new is not None and new.interval == old.interval:
                self._tasks[key] = (new, task)  # _loop reads it before each probe
                continue
            task.cancel()
            del self._tasks[key]
        for key, check in wanted.items():
            if key not in self._tasks:
                task = asyncio.create_task(self._loop(check), name=f"check {key[0]}/{key[1]}")
                self._tasks[key] = (check, task)

    async def stop(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _set_shares(self, checks: Iterable[CheckConfig]) -> None:
        shares = host_shares(Counter(c.host for c in checks), self._max_in_flight)
        for host, size in shares.items():
            entry = self._shares.get(host)
            if entry is None or entry[0] != size:
                self._shares[host] = (size, asyncio.Semaphore(size))
        for host in self._shares.keys() - shares.keys():
            del self._shares[host]
            self._limiters.pop(host, None)

    def _limiter(self, host: str) -> AsyncLimiter:
        limiter = self._limiters.get(host)
        if limiter is None:
            limiter = self._limiters[host] = rate_limiter(self._per_host_rate)
        return limiter

    async def run_once(self, checks: list[CheckConfig]) -> list[ProbeResult]:
        """Probe each check once, concurrently, under the same limits (`aipulse once`)."""
        self._set_shares(checks)
        now = asyncio.get_running_loop().time()
        return list(await asyncio.gather(*(self._guarded(c, now) for c in checks)))

    async def _guarded(self, check: CheckConfig, due: float) -> ProbeResult:
        entry = self._shares.get(check.host)
        # (none: a check removed by a reload, on its way out; the global cap holds it)
        share = _NO_SHARE if entry is None else entry[1]
        async with share, self._limiter(check.host), self._slots:
            self._on_lag(max(0.0, asyncio.get_running_loop().time() - due))
            return await self._run_probe(check)

    async def _loop(self, check: CheckConfig) -> None:
        loop = asyncio.get_running_loop()
        anchor = self._epoch + spread_offset(check.service, check.id, check.interval)
        tick = first_tick(anchor, check.interval, loop.time())
        key, task = check.key, asyncio.current_task()
        while True:
            due = anchor + tick * check.interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            entry = self._tasks.get(key)
            if entry is not None and entry[1] is task:
                check = entry[0]  # as changed by a reload meanwhile
            result = await self._guarded(check, due)
            try:
                await self._on_result(result)
            except Exception:  # a bug downstream must not stop this check
                log.exception("handling the result of %s/%s failed", check.service, check.id)
            tick, missed = next_tick(anchor, check.interval, tick, loop.time())
            if missed:
                self._on_missed(missed)
