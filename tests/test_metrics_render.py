"""The fast exposition path of monitor.metrics.render writes exactly what
prometheus_client's encoders write for the same collector, in both formats, and
follows every change of the live state (its per-check text cache never goes stale)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest
from helpers import make_config
from prometheus_client.registry import CollectorRegistry

from monitor import server
from monitor.live import LiveState
from monitor.metrics import RENDER_SLICE, AipulseCollector, make_registry, render, render_parts
from monitor.outage import Gap, GapOpened, OutageWindow, State, StateChanged, WindowClosed, WindowOpened
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.webconfig import WebConfig

ACCEPTS = [None, "application/openmetrics-text; version=1.0.0",
           "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
           "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"]


def _reference(live: LiveState, location: str, accept: str | None) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)  # not ours: the general path
    registry.register(AipulseCollector(live, location))
    return render(registry, accept)


def _live() -> LiveState:
    cfg = make_config({
        "web": {"url": "http://127.0.0.1:1/"},
        "api": {"url": "http://127.0.0.1:1/api"},
        "idle": {"url": "http://127.0.0.1:1/idle"},
    })
    live = LiveState()
    live.set_services(cfg.services)
    return live


def _result(check: str, t: float, reason: Reason = Reason.OK, **kw: object) -> ProbeResult:
    return ProbeResult(service="svc", check=check, started=t, duration=0.0123, reason=reason,
                       status_code=200 if reason is Reason.OK else 503,
                       phases={"resolve": 0.0, "connect": 0.001, "tls": 0.002, "processing": 0.003,
                               "transfer": 1e-7}, **kw)  # type: ignore[arg-type]


def _drop_idle(live: LiveState) -> None:
    """A reload that removes a check."""
    service = live.services["svc"].service
    live.set_services((dataclasses.replace(service, checks=service.checks[:2]),))


@pytest.mark.parametrize("accept", ACCEPTS)
def test_fast_exposition_matches_prometheus_client(accept: str | None) -> None:
    live = _live()
    registry = make_registry(live, "here")
    # empty, then after every kind of change: results, states, windows, ttft, stream speed and
    # gap, steps, cert
    steps = [
        lambda: None,
        lambda: live.record(_result("web", 1_700_000_000.0, cert_expiry=1_800_000_000.0)),
        lambda: live.record(_result("api", 1_700_000_001.0, Reason.OVERLOADED, steps={"login": 0.5})),
        lambda: live.record(_result("web", 1_700_000_030.0, ttft=0.7)),
        lambda: live.record(_result("web", 1_700_000_031.0, ttft=0.6, output_tokens_per_second=41.5,
                                    stream_max_gap=0.25)),
        lambda: live.apply(StateChanged("svc", "api", State.DOWN, 1_700_000_002.0)),
        lambda: live.apply(WindowOpened(
            OutageWindow("svc", "api", "down", 1_700_000_001.0, reason="overloaded", severity="x"))),
        lambda: live.apply(WindowClosed(
            OutageWindow("svc", "api", "down", 1_700_000_001.0, 1_700_000_100.0, "overloaded", "x"))),
        lambda: live.record(_result("api", 1_700_000_200.0)),
        lambda: live.apply(GapOpened(Gap(1_700_000_300.0))),
        lambda: live.apply(StateChanged("svc", None, "major_outage", 1_700_000_300.0)),
        lambda: _drop_idle(live),
    ]
    for step in steps:
        step()
        fast = render(registry, accept)
        assert fast == _reference(live, "here", accept)
        assert render(registry, accept) == fast  # from the cache: still the same


def test_other_collectors_take_the_general_path() -> None:
    live = _live()
    registry = make_registry(live, "here")
    registry.register(AipulseCollector(_live(), "there"))
    body, _ = render(registry, None)
    assert b'location="there"' in body and b'location="here"' in body


async def test_checks_with_new_results_are_rendered_in_the_background() -> None:
    live = _live()
    registry = make_registry(live, "here")
    render(registry, None)  # starts the background renderer
    warmer = registry.fast._warmer  # type: ignore[attr-defined]
    try:
        live.record(_result("web", 1_700_000_000.0))
        live.record(_result("api", 1_700_000_001.0, Reason.TIMEOUT))
        fast = registry.fast  # type: ignore[attr-defined]
        assert fast.changed == {("svc", "web"), ("svc", "api")}
        deadline = asyncio.get_running_loop().time() + 5
        while fast.changed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert not fast.changed
        text = registry.fast.texts[("svc", "api")]  # type: ignore[attr-defined]
        assert text.probe_key is live.checks[("svc", "api")].last
        assert render(registry, None) == _reference(live, "here", None)
    finally:
        warmer.cancel()


async def test_a_scrape_of_many_checks_lets_other_tasks_run() -> None:
    """render_parts gives the loop a turn every RENDER_SLICE checks, and its parts make
    the same bytes as render and as prometheus_client."""
    n = 2 * RENDER_SLICE + 500
    cfg = make_config({f"c{i:05d}": {"url": f"http://127.0.0.1:1/{i}"} for i in range(n)})
    live = LiveState()
    live.set_services(cfg.services)
    for i in range(n):
        live.record(_result(f"c{i:05d}", 1_700_000_000.0 + i, Reason.OK if i % 3 else Reason.TIMEOUT))
    registry = make_registry(live, "here")
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    try:
        turns = 0
        parts, content_type = await render_parts(registry, None)
        body = b"".join(parts)
        during = turns
    finally:
        ticker.cancel()
        registry.fast._warmer.cancel()  # type: ignore[attr-defined]
    assert during >= 2  # at least one turn per full slice
    assert (body, content_type) == render(registry, None) == _reference(live, "here", None)
    assert body.count(b"aipulse_probe_success{") == n


async def test_a_scrape_larger_than_one_piece_arrives_whole(tmp_path: Path) -> None:
    """/metrics is sent in pieces of SEND_BYTES: over a real socket, plain (with its
    Content-Length) and gzipped (chunked), the bytes are exactly those rendered."""
    n = 1500
    cfg = make_config({f"c{i:05d}": {"url": f"http://127.0.0.1:1/{i}"} for i in range(n)})
    live = LiveState()
    live.set_services(cfg.services)
    for i in range(n):
        live.record(_result(f"c{i:05d}", 1_700_000_000.0 + i))
    registry = make_registry(live, "here")

    async def no_reload() -> None:
        return None

    runner = await server.start(server.make_app(live, registry, str(tmp_path / "none.db"), no_reload,
                                                WebConfig()), "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.bound_port(runner)}/metrics"
        async with httpx.AsyncClient() as client:
            plain = await client.get(url, headers={"Accept-Encoding": "identity"})
            zipped = await client.get(url, headers={"Accept-Encoding": "gzip"})
        expected = render(registry, None)[0]
        assert len(expected) > 2 * server.SEND_BYTES
        assert plain.content == expected and int(plain.headers["content-length"]) == len(expected)
        assert zipped.headers["content-encoding"] == "gzip" and zipped.content == expected
        assert zipped.num_bytes_downloaded < len(expected) / 10
    finally:
        await runner.cleanup()
        registry.fast._warmer.cancel()  # type: ignore[attr-defined]
