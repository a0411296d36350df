"""Schedule math (pure tables) and the scheduler against real local targets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest
from helpers import make_config
from targets import Target

from monitor.config import CheckConfig
from monitor.probes import Prober
from monitor.result import ProbeResult
from monitor.scheduler import Scheduler, first_tick, host_shares, next_tick, rate_limiter, spread_offset


@pytest.mark.parametrize(
    ("anchor", "interval", "after", "now", "expected"),
    [
        (0.0, 10.0, 0, 0.5, (1, 0)),    # probe took 0.5 s: next tick as planned
        (0.0, 10.0, 0, 9.9, (1, 0)),    # probe took 9.9 s: still on time
        (0.0, 10.0, 0, 10.5, (1, 0)),   # overran by 0.5 s: tick 1 starts late, none missed
        (0.0, 10.0, 0, 20.5, (2, 1)),   # overran past tick 2's due: tick 1 missed
        (0.0, 10.0, 3, 65.0, (6, 2)),   # ticks 4 and 5 missed, run 6 (due at 60) late
        (5.0, 30.0, 7, 240.0, (8, 0)),  # due times stay anchor + k * interval
    ],
)
def test_next_tick(anchor: float, interval: float, after: int, now: float, expected: tuple[int, int]) -> None:
    assert next_tick(anchor, interval, after, now) == expected


@pytest.mark.parametrize(
    ("anchor", "interval", "now", "expected"),
    [(10.0, 5.0, 0.0, 0), (10.0, 5.0, 10.0, 0), (10.0, 5.0, 10.1, 1), (10.0, 5.0, 26.0, 4)],
)
def test_first_tick(anchor: float, interval: float, now: float, expected: int) -> None:
    assert first_tick(anchor, interval, now) == expected


def test_spread_offset_is_stable_and_spread() -> None:
    offsets = [spread_offset("svc", f"check{i}", 30.0) for i in range(1000)]
    assert offsets == [spread_offset("svc", f"check{i}", 30.0) for i in range(1000)]
    assert all(0 <= o < 30.0 for o in offsets)
    # roughly uniform: every 3-second slice of the interval gets some checks
    slices = {int(o // 3) for o in offsets}
    assert slices == set(range(10))


@pytest.mark.parametrize(
    ("per_host", "max_in_flight", "expected"),
    [
        ({"a": 10, "b": 5}, 1000, {"a": 10, "b": 5}),  # fewer checks than slots: all at once
        ({"slow": 40, "ok": 5}, 10, {"slow": 9, "ok": 2}),  # in proportion, rounded up
        ({"big": 9990, "tiny": 10}, 100, {"big": 100, "tiny": 1}),  # at least one
        ({"a": 1, "b": 1, "c": 1}, 1, {"a": 1, "b": 1, "c": 1}),
        ({"a": 3, "gone": 0}, 2, {"a": 2}),
    ],
)
def test_host_shares(per_host: dict[str, int], max_in_flight: int, expected: dict[str, int]) -> None:
    assert host_shares(per_host, max_in_flight) == expected


async def test_rate_limiter_below_one_a_second() -> None:
    """0.5/s: one start every 2 s (a bucket of 1), not refused and not 1/s."""
    limiter = rate_limiter(0.5)
    assert (limiter.max_rate, limiter.time_period) == (1, 2.0)
    assert (rate_limiter(20).max_rate, rate_limiter(20).time_period) == (20, 1.0)


def collector(results: list[ProbeResult]) -> Callable[[ProbeResult], Awaitable[None]]:
    async def collect(result: ProbeResult) -> None:
        results.append(result)
    return collect


async def _run_for(checks: list[CheckConfig], seconds: float, **limits: float) -> list[ProbeResult]:
    results: list[ProbeResult] = []
    prober = Prober()
    scheduler = Scheduler(prober.run, collector(results),
                          max_in_flight=int(limits.get("max_in_flight", 100)),
                          per_host_rate=limits.get("per_host_rate", 100.0))
    scheduler.set_checks(checks)
    await asyncio.sleep(seconds)
    await scheduler.stop()
    await prober.aclose()
    return results


async def test_one_second_check_runs_ten_times_beside_a_hanging_check(target: Target) -> None:
    cfg = make_config({
        "fast": {"url": target.url("/ok"), "interval": "1s", "timeout": "1s"},
        "hang": {"url": target.url("/hang"), "interval": "1s", "timeout": "1s"},
    })
    results = await _run_for(cfg.checks, 10.0)
    fast = [r for r in results if r.check == "fast"]
    hung = [r for r in results if r.check == "hang"]
    assert 9 <= len(fast) <= 11, len(fast)
    assert all(r.success for r in fast)
    assert hung and all(r.reason == "timeout" for r in hung)
    # fixed rate: consecutive starts are one interval apart, without drift
    starts = [r.started for r in fast]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(g - 1.0) < 0.15 for g in gaps), gaps
    assert abs((starts[-1] - starts[0]) - (len(starts) - 1)) < 0.15


async def test_per_host_rate_limit_spreads_requests(target: Target) -> None:
    """20 checks on one host at 100ms intervals would make 200 req/s; the limit is 10/s:
    a burst of at most 10, then starts one every 100 ms (a leaky bucket)."""
    cfg = make_config({f"c{i}": {"url": target.url("/ok"), "interval": "100ms", "timeout": "100ms"}
                       for i in range(20)})
    results = await _run_for(cfg.checks, 2.0, per_host_rate=10)
    starts = sorted(r.started for r in results)
    span = starts[-1] - starts[0]
    assert 15 <= len(starts) <= 10 + 10 * span + 2, (len(starts), span)

    def most_in(window: float, after: float) -> int:
        later = [t for t in starts if t >= after]
        return max(sum(1 for u in later if t <= u < t + window) for t in later)

    assert most_in(1.0, starts[0]) <= 2 * 10 + 1  # the burst and a second's worth
    assert most_in(1.0, starts[9] + 0.05) <= 10 + 1  # after the burst: the rate


async def test_max_in_flight_caps_concurrency(target: Target) -> None:
    cfg = make_config({f"c{i}": {"url": target.url("/slow?delay=0.5"), "interval": "5s", "timeout": "2s"}
                       for i in range(6)})
    prober = Prober()
    in_flight = peak = 0

    async def counting(check: CheckConfig) -> ProbeResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await prober.run(check)
        finally:
            in_flight -= 1

    results: list[ProbeResult] = []
    scheduler = Scheduler(counting, collector(results), max_in_flight=2, per_host_rate=100)
    await scheduler.run_once(cfg.checks)
    await prober.aclose()
    assert peak == 2


async def test_set_checks_keeps_unchanged_and_stops_removed(target: Target) -> None:
    cfg = make_config({
        "a": {"url": target.url("/ok"), "interval": "200ms", "timeout": "200ms"},
        "b": {"url": target.url("/ok"), "interval": "200ms", "timeout": "200ms"},
    })
    results: list[ProbeResult] = []
    prober = Prober()
    scheduler = Scheduler(prober.run, collector(results), max_in_flight=10, per_host_rate=100)
    scheduler.set_checks(cfg.checks)
    await asyncio.sleep(0.7)
    scheduler.set_checks(cfg.checks[:1])  # drop b
    cut = len(results)
    await asyncio.sleep(0.7)
    await scheduler.stop()
    await prober.aclose()
    later = results[cut + 1:]  # allow one b probe that was already running
    assert later and all(r.check == "a" for r in later)


async def test_a_changed_check_keeps_its_schedule_and_probes_its_new_config(target: Target) -> None:
    """A reload that changes a check but not its interval keeps its task and its due
    times (no restart, no bunching); its next probe uses the new config. A new
    interval restarts it on the new schedule."""
    def config(code: int, interval: str) -> list[CheckConfig]:
        return list(make_config({"a": {"url": target.url(f"/status/{code}"), "interval": interval,
                                       "timeout": "150ms"}}).checks)

    results: list[ProbeResult] = []
    prober = Prober()
    scheduler = Scheduler(prober.run, collector(results), max_in_flight=10, per_host_rate=100)
    scheduler.set_checks(config(200, "200ms"))
    await _until(lambda: len(results) >= 3)
    task = scheduler._tasks[("svc", "a")][1]
    scheduler.set_checks(config(201, "200ms"))
    assert scheduler._tasks[("svc", "a")][1] is task  # kept
    await _until(lambda: sum(r.status_code == 201 for r in results) >= 3)
    scheduler.set_checks(config(202, "300ms"))
    assert scheduler._tasks[("svc", "a")][1] is not task  # restarted
    await _until(lambda: any(r.status_code == 202 for r in results))
    await scheduler.stop()
    await prober.aclose()
    assert task.done()
    codes = [r.status_code for r in results]
    assert codes == sorted(codes)  # old config until the change, then only the new
    kept = [r.started for r in results if r.status_code in (200, 201)]
    gaps = [b - a for a, b in itertools.pairwise(kept)]
    assert all(abs(g - 0.2) < 0.1 for g in gaps), gaps  # one fixed-rate schedule across the change


async def test_waiting_on_the_rate_limit_costs_no_cpu(target: Target) -> None:
    """400 checks asking one host for 400 probes/s, limited to 20/s: 380 wait all the
    time, asleep. The event loop's CPU per probe is near that of a run within the
    rate (asyncio-throttle woke every waiter every 10 ms: a core's worth with a few
    hundred waiters, and /metrics answered in seconds)."""
    prober = Prober()

    async def loop_cpu_per_probe(checks: int) -> tuple[float, int]:
        cfg = make_config({f"c{i}": {"url": target.url("/ok"), "interval": "1s", "timeout": "1s"}
                           for i in range(checks)})
        results: list[ProbeResult] = []
        scheduler = Scheduler(prober.run, collector(results), max_in_flight=1000, per_host_rate=20)
        scheduler.set_checks(cfg.checks)
        await asyncio.sleep(1.2)  # past every check's first due time: all waiting now
        n0, cpu0 = len(results), time.thread_time()  # this thread only: not the target's
        await asyncio.sleep(2.0)
        cpu, n = time.thread_time() - cpu0, len(results) - n0
        await scheduler.stop()
        return cpu / max(n, 1), n

    calm, calm_n = await loop_cpu_per_probe(10)  # 10/s asked of a 20/s host: nobody waits
    overload, overload_n = await loop_cpu_per_probe(400)
    await prober.aclose()
    print(f"loop CPU per probe: {calm * 1e3:.2f} ms within the rate, {overload * 1e3:.2f} ms in overload")
    assert 30 <= overload_n <= 2 * 20 + 2 * 20 + 2, overload_n  # the limit holds: a burst, then 20/s
    assert calm_n >= 15, calm_n
    assert overload < 3 * calm, (calm, overload)


async def test_a_hanging_host_does_not_starve_the_others(target: Target) -> None:
    """max_in_flight 10; 40 checks of one host hang until their timeout. The control
    checks on another host get (nearly) the probes they get when the hanging host is
    not there: the hanging host holds its share (9 of 10 slots), never all of them."""
    hung = 0

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hung
        hung += 1
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the prober gives up (its timeout) and closes
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    control = {f"ok{i}": {"url": target.url("/ok"), "interval": "200ms", "timeout": "200ms"}
               for i in range(5)}
    hanging = {f"hang{i}": {"url": f"http://127.0.0.2:{port}/", "interval": "1s", "timeout": "1s"}
               for i in range(40)}

    async def control_probes(checks: dict[str, dict[str, str]]) -> int:
        results: list[ProbeResult] = []
        prober = Prober()
        scheduler = Scheduler(prober.run, collector(results), max_in_flight=10, per_host_rate=1000)
        scheduler.set_checks(list(make_config(checks).checks))
        await asyncio.sleep(3.0)
        await scheduler.stop()
        await prober.aclose()
        return sum(1 for r in results if r.check.startswith("ok") and r.success)

    alone = await control_probes(control)
    beside = await control_probes({**control, **hanging})
    server.close()
    await server.wait_closed()
    print(f"control probes in 3 s: {alone} alone, {beside} beside a hanging host ({hung} hung)")
    assert hung >= 20  # the hanging host did take its slots
    assert alone >= 50, alone
    assert beside >= 0.8 * alone, (alone, beside)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
