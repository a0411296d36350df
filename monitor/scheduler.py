"""Run every check on its own interval: fixed-rate, spread, capped, rate-limited per host.

Schedule math is pure (`spread_offset`, `next_tick`); `Scheduler` is the thin asyncio
shell. Each check has its own task, so a slow or hanging check delays no other; a
global semaphore caps probes in flight, and one asyncio-throttle `Throttler` per host
keeps many checks against one host from bursting it. The stable spread of start
times keeps that throttler from waiting at all in the common case (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable

from asyncio_throttle import Throttler

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
        self._slots = asyncio.Semaphore(max_in_flight)
        self._per_host_rate = per_host_rate
        self._throttlers: dict[str, Throttler] = {}
        self._tasks: dict[tuple[str, str], tuple[CheckConfig, asyncio.Task[None]]] = {}
        self._epoch = asyncio.get_running_loop().time()

    def set_checks(self, checks: list[CheckConfig]) -> None:
        """Start new checks, stop removed ones; others run on. A changed check keeps
        its task (and schedule) and probes with its new config from its next tick on,
        unless its interval changed: then it restarts on its new schedule. (Restarting
        all 10,000 tasks of a changed config blocked the event loop for ~0.4 s.)"""
        wanted = {c.key: c for c in checks}
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

    def _throttler(self, host: str) -> Throttler:
        throttler = self._throttlers.get(host)
        if throttler is None:
            throttler = self._throttlers[host] = Throttler(rate_limit=self._per_host_rate, period=1.0)
        return throttler

    async def run_once(self, checks: list[CheckConfig]) -> list[ProbeResult]:
        """Probe each check once, concurrently, under the same limits (`aipulse once`)."""
        now = asyncio.get_running_loop().time()
        return list(await asyncio.gather(*(self._guarded(c, now) for c in checks)))

    async def _guarded(self, check: CheckConfig, due: float) -> ProbeResult:
        async with self._throttler(check.host), self._slots:
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
