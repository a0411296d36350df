"""LiveState changes by events only: `apply(event)` on the probe path, and restore
replays the stored events through the same `apply`. Readers (a /metrics scrape in
either format, the API, the status page) never change it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from helpers import make_config

from monitor import server
from monitor.live import Histogram, LiveState
from monitor.metrics import make_registry, render
from monitor.outage import Gap, GapClosed, GapOpened, OutageWindow
from monitor.pipeline import Pipeline
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.store import Store
from monitor.webconfig import WebConfig

DAY = 86400.0


def state(value: Any) -> Any:
    """Everything a LiveState holds, as plain comparable data."""
    if isinstance(value, Histogram):
        return ("histogram", list(value.counts), value.sum, value.count)
    if isinstance(value, Counter):
        return ("counter", sorted(value.items()))
    if isinstance(value, dict):
        return {k: state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [state(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: state(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in ("check", "service")}  # (the configs: not state)
    if hasattr(value, "__dict__") and not callable(value):
        return {k: state(v) for k, v in vars(value).items() if k not in ("now", "on_change")}
    return value


def config() -> Any:
    return make_config({"api": {"url": "http://127.0.0.1:1/api"}, "web": {"url": "http://127.0.0.1:1/"}},
                       service="acme")


async def a_month_of_history(pipeline: Pipeline, now: float) -> None:
    """Windows, unknown spans and gaps, some older than the longest availability window."""
    t = now - 40 * DAY
    for day in range(40):
        for i in range(6):
            reason = Reason.TIMEOUT if i in (1, 2, 3) and day % 7 == 0 else Reason.OK
            reason = Reason.BLOCKED if i == 5 and day % 5 == 0 else reason
            at = t + day * DAY + i * 60
            await pipeline.handle(ProbeResult("acme", "api", at, 0.1, reason))
            await pipeline.handle(ProbeResult("acme", "web", at + 1, 0.1, Reason.OK))
    await pipeline.commit([GapOpened(Gap(now - 50 * DAY, None, "offline")),
                           GapClosed(Gap(now - 50 * DAY, now - 50 * DAY + 60, "offline")),
                           GapOpened(Gap(now - 3 * DAY, None, "not_running")),
                           GapClosed(Gap(now - 3 * DAY, now - 3 * DAY + 600, "not_running"))])


async def test_scrapes_and_api_calls_never_change_live_state(tmp_path: Path) -> None:
    """Today's main pruned spans and gaps, cached availability in the checks and
    cleared the set of changed checks on every scrape."""
    cfg = config()
    live = LiveState()
    pipeline = Pipeline(cfg, live)
    now = live.now()
    await a_month_of_history(pipeline, now)
    registry = make_registry(live, "here")
    before = state(live)
    for accept in (None, "application/openmetrics-text; version=1.0.0"):
        body, _ = render(registry, accept)
        assert b'aipulse_availability_ratio{check="api"' in body
    app = server.make_app(live, registry, str(tmp_path / "none.db"), _no_reload, WebConfig())
    served = await server.start(app, "127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.bound_port(served)}"
        async with httpx.AsyncClient() as client:
            for path in ("/metrics", "/api/v1/status", "/", "/badge/acme/api.svg?metric=uptime"):
                assert (await client.get(base + path)).status_code == 200, path
    finally:
        await served.cleanup()
    assert state(live) == before


async def _no_reload() -> str | None:
    return None


async def test_restore_replays_the_stored_events_into_the_same_state(tmp_path: Path) -> None:
    """A restart gives the LiveState the probe path built (but for what counts this
    process's doings, and the checks being unknown until probed again)."""
    cfg = config()
    db = tmp_path / "history.db"
    store = Store(db)
    store.open(0.0)
    live = LiveState()
    pipeline = Pipeline(cfg, live, store)
    now = live.now()
    await a_month_of_history(pipeline, now)
    store.heartbeat(now)
    await store.close()

    again = Store(db)
    history = again.open(since=now - 30 * DAY)
    await again.close()
    restored = LiveState()
    Pipeline(cfg, restored).restore(history.open_windows, history.windows, history.transitions, history.gaps,
                                    history.first_seen, last_seen=now, since=now - 30 * DAY)
    for key, stats in live.checks.items():
        back = restored.checks[key]
        assert back.availability(now, restored.gap_spans(now), []) == \
            stats.availability(now, live.gap_spans(now), []), key
        assert (back.last_down, back.last_closed_down, back.window) == \
            (stats.last_down, stats.last_closed_down, stats.window), key
        assert back.outages_opened == 0 and back.state.value == "unknown"
    assert restored.services["acme"].last_down == live.services["acme"].last_down
    assert isinstance(live.services["acme"].last_down, OutageWindow)
    assert [g for g in restored.gaps if g.end is not None and g.end > now - 30 * DAY] == \
        [g for g in live.gaps if g.end is not None and g.end > now - 30 * DAY]
