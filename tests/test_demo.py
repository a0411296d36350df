"""`aipulse demo` and its simulated provider (monitor.simulator), over loopback only.

The simulator's routes are checked phase by phase with direct HTTP calls (phases set
by hand with `set_phase`, time with an injected clock); then the real command runs
as a subprocess, end to end, and must tell the story on its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from monitor import statuspage
from monitor.cli import main
from monitor.reasons import is_challenge
from monitor.simulator import (
    API_KEY,
    LOGIN_MARKER,
    NORMAL,
    REGISTER_MARKER,
    Phase,
    Scenario,
    SimulatedProvider,
    Timings,
    january_2025,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "deepseek-chat", "stream": True, "max_tokens": 3,
        "messages": [{"role": "user", "content": "Hi"}]}
FAST = Timings(slow=0.3, hang=5.0, keepalive_every=0.05)


class FakeClock:
    def __init__(self, now: float = 1_737_984_000.0) -> None:  # 2025-01-27T13:20:00Z
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedProvider]:
    async with SimulatedProvider(january_2025(), timings=FAST) as s:
        s.set_phase(NORMAL)
        yield s


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


def sse(text: str) -> list[str]:
    """The non-blank lines of an SSE body."""
    return [line for line in text.splitlines() if line]


def vendor_view(response: httpx.Response) -> statuspage.VendorStatus:
    return statuspage.parse(response.content, response.headers["content-type"], response.status_code,
                            response.headers)


# ----------------------------------------------------------------- normal phase


async def test_normal_phase_answers_like_a_healthy_vendor(sim: SimulatedProvider,
                                                          client: httpx.AsyncClient) -> None:
    home = await client.get(sim.url("website"))
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert "<title>DeepSeek" in home.text

    # The API without a key: a well-formed 401 JSON error, like the real vendor.
    denied = await client.get(sim.url("api"))
    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    models = await client.get(sim.url("api"), headers=AUTH)
    assert models.status_code == 200
    assert models.json()["object"] == "list" and models.json()["data"][0]["id"] == "deepseek-chat"

    login = await client.get(sim.url("login"))
    assert login.status_code == 200 and LOGIN_MARKER in login.text
    register = await client.get(sim.url("register"))
    assert register.status_code == 200 and REGISTER_MARKER in register.text

    status = await client.get(sim.url("status"))
    assert status.status_code == 200
    doc = status.json()
    assert {"page", "components", "incidents", "scheduled_maintenances", "status"} <= set(doc)
    assert doc["incidents"] == [] and doc["status"]["indicator"] == "none"
    assert vendor_view(status).overall == "operational"
    assert sim.hits["website"] == 1 and sim.hits["api"] == 2


async def test_stream_is_openai_sse(sim: SimulatedProvider, client: httpx.AsyncClient) -> None:
    assert (await client.post(sim.url("stream"), json=CHAT)).status_code == 401  # no key
    r = await client.post(sim.url("stream"), json=CHAT, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = sse(r.text)
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first = chunks[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": ""}  # role only: not a token
    tokens = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert len(tokens) == 3 and all(tokens)  # max_tokens honoured
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    plain = await client.post(sim.url("stream"), json={**CHAT, "stream": False}, headers=AUTH)
    assert plain.json()["choices"][0]["message"]["content"]
    bad = await client.post(sim.url("stream"), content=b"not json", headers=AUTH)
    assert bad.status_code == 400


# --------------------------------------------------------------- incident phases


async def test_api_overloaded_and_hanging(sim: SimulatedProvider, client: httpx.AsyncClient) -> None:
    sim.set_phase(NORMAL, api="overloaded")
    r = await client.get(sim.url("api"), headers=AUTH)
    assert r.status_code == 503 and "error" in r.json()

    sim.set_phase(NORMAL, api="hang")
    with pytest.raises(httpx.ReadTimeout):
        await client.get(sim.url("api"), timeout=0.3)

    sim.set_phase(NORMAL, api="flaky")  # 503 and hangs in turn
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append((await client.get(sim.url("api"), timeout=0.3)).status_code)
        except httpx.ReadTimeout:
            outcomes.append("hang")
    assert outcomes == [503, "hang", 503, "hang"]


async def test_stream_under_incident(sim: SimulatedProvider, client: httpx.AsyncClient) -> None:
    sim.set_phase(NORMAL, stream="overloaded")
    r = await client.post(sim.url("stream"), json=CHAT, headers=AUTH)
    assert r.status_code == 503 and r.json()["error"]

    # Keep-alive comments, then an error chunk and no [DONE].
    sim.set_phase(NORMAL, stream="error")
    r = await client.post(sim.url("stream"), json=CHAT, headers=AUTH)
    lines = sse(r.text)
    assert r.status_code == 200 and lines[0] == ": keep-alive"
    assert "error" in json.loads(lines[-1].removeprefix("data: "))
    assert "data: [DONE]" not in lines

    # Only keep-alives: headers come at once, the first token never does.
    sim.set_phase(NORMAL, stream="stall")
    seen: list[str] = []
    async with client.stream("POST", sim.url("stream"), json=CHAT, headers=AUTH) as r:
        assert r.status_code == 200
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.4):
                async for line in r.aiter_lines():
                    if line:
                        seen.append(line)
    assert len(seen) >= 3 and set(seen) == {": keep-alive"}


async def test_website_slow_login_challenge_registrations_limited(
        sim: SimulatedProvider, client: httpx.AsyncClient) -> None:
    sim.set_phase("attack-widens")
    assert sim.phase.website == "slow"
    started = time.monotonic()
    home = await client.get(sim.url("website"))
    assert home.status_code == 200 and time.monotonic() - started >= FAST.slow * 0.9

    login = await client.get(sim.url("login"))
    assert login.status_code == 403 and login.headers["cf-mitigated"] == "challenge"
    assert LOGIN_MARKER not in login.text
    assert is_challenge(login.status_code, login.headers, login.content)

    register = await client.get(sim.url("register"))
    assert register.status_code == 200  # the page answers, but the form is gone
    assert REGISTER_MARKER not in register.text and "temporarily limit" in register.text

    sim.set_phase(NORMAL, website="down")
    assert (await client.get(sim.url("website"))).status_code == 503


# ------------------------------------------------------------------- vendor page


async def test_vendor_page_acknowledges_late_and_dates_its_incident(client: httpx.AsyncClient) -> None:
    clock = FakeClock()
    async with SimulatedProvider(january_2025(), clock=clock) as sim:
        trouble = clock.now
        sim.set_phase("api-attack")  # the outage is real, the vendor's page says nothing yet
        assert vendor_view(await client.get(sim.url("status"))).overall == "operational"
        clock.now += 35
        posted = clock.now
        sim.set_phase("vendor-investigating")
        clock.now += 5
        view = vendor_view(await client.get(sim.url("status")))
        assert view.overall == "major_outage"
        (incident,) = view.incidents
        assert incident.status == "investigating" and incident.started == posted
        assert statuspage.detection_lead(trouble, view) == 35  # we would have known 35 s earlier
        sim.set_phase("vendor-monitoring")
        view = vendor_view(await client.get(sim.url("status")))
        assert view.incidents[0].status == "monitoring" and view.incidents[0].started == posted
        sim.set_phase(NORMAL)  # resolved: gone from summary.json
        resolved = await client.get(sim.url("status"))
        assert resolved.json()["incidents"] == [] and vendor_view(resolved).overall == "operational"

    # A vendor that back-dates started_at to when the trouble began.
    backdated = Scenario(january_2025().steps, 180.0, vendor_backdate=True)
    async with SimulatedProvider(backdated, clock=clock) as sim:
        trouble = clock.now
        sim.set_phase("api-attack")
        clock.now += 35
        sim.set_phase("vendor-investigating")
        assert vendor_view(await client.get(sim.url("status"))).incidents[0].started == trouble


# ------------------------------------------------------------- timeline and clock


async def test_timeline_follows_the_clock_scaled_by_speed(client: httpx.AsyncClient) -> None:
    clock = FakeClock()
    scenario = january_2025().fit(36.0)  # 180 -> 36 scenario seconds: steps at 4, 7, 11, ...
    async with SimulatedProvider(scenario, speed=2.0, clock=clock) as sim:
        start = clock.now
        names = []
        for wall in (0.0, 1.5, 2.5, 4.0, 6.0, 10.0, 11.5, 13.0, 16.0, 17.9):  # x2: scenario seconds
            clock.now = start + wall
            names.append(sim.phase.name)
        assert names == ["normal", "normal", "api-attack", "attack-widens", "vendor-investigating",
                         "mitigated", "vendor-monitoring", "registrations-reopen", "vendor-resolved",
                         "vendor-resolved"]
        assert sim.elapsed() == pytest.approx(35.8)
        # The incident is dated when its step was due (scenario 11 s = wall 5.5 s), not when polled.
        clock.now = start + 7.0
        view = vendor_view(await client.get(sim.url("status")))
        assert view.incidents[0].started == pytest.approx(start + 5.5, abs=0.001)
        phase, since = sim.current()
        assert phase.name == "vendor-investigating" and since == pytest.approx(start + 5.5)
        # Manual control pins a phase; None goes back to the timeline.
        sim.set_phase(NORMAL)
        assert (await client.get(sim.url("api"))).status_code == 401
        sim.set_phase(None)
        assert sim.phase.name == "vendor-investigating"
        with pytest.raises(ValueError, match="no phase"):
            sim.set_phase("no-such-phase")
        with pytest.raises(ValueError, match="mode"):
            Phase("bad", api="exploding")


async def test_routes_are_configurable(client: httpx.AsyncClient) -> None:
    async with SimulatedProvider(routes={"api": "/models", "register": None}) as sim:
        assert sim.url("api").endswith("/models")
        assert (await client.get(sim.url("api"))).status_code == 401
        assert (await client.get(f"{sim.base_url}/v1/models")).status_code == 404
        assert (await client.get(f"{sim.base_url}/sign_up")).status_code == 404
        assert "register" not in sim.routes
    with pytest.raises(ValueError, match="unknown surfaces"):
        SimulatedProvider(routes={"billing": "/billing"})


# ------------------------------------------------------------------ the command


def test_demo_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--speed", "50"]) == 2
    assert "--speed" in capsys.readouterr().err
    assert main(["demo", "--duration", "5"]) == 2
    assert "--duration" in capsys.readouterr().err
    assert main(["demo", "--listen", "nowhere"]) == 2
    assert "--listen" in capsys.readouterr().err


def _seconds(text: str) -> float:
    return float(text.removeprefix("+").removesuffix("s"))


def test_demo_plays_the_incident_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--duration", "20", "--speed", "10",
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=40, cwd=tmp_path,
    )
    took = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert took < 30, f"took {took:.1f}s"
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr

    # URLs of our status page and metrics, with the port actually bound.
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)/(metrics)?\s", out)
    assert urls and all(port != "0" for port, _ in urls)
    assert re.search(r"status page\s+http://127\.0\.0\.1:\d+/\s", out)
    assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", out)

    # As it happens: the api outage opens and closes, the website is slow for a while.
    assert re.search(r"^\s*\+[\d.]+s\s+api\s+DOWN\s+outage since \+[\d.]+s", out, re.M), out
    assert re.search(r"^\s*\+[\d.]+s\s+api\s+UP\s+outage for [\d.]+s", out, re.M), out
    assert re.search(r"^\s*\+[\d.]+s\s+website\s+DEGRADED\s+slow since", out, re.M), out
    assert re.search(r"^\s*\+[\d.]+s\s+login\s+UNKNOWN\s+cannot tell \(blocked", out, re.M), out
    assert re.search(r"^\s*\+[\d.]+s\s+vendor\s+MAJOR\s+its status page: .*investigating", out, re.M), out

    # The summary: closed windows per check, and how much earlier we knew.
    summary = out[out.index("Summary:"):]
    table = list(re.finditer(
        r"^  (?P<check>\S+)\s+(?P<kind>down|degraded)\s+(?P<start>\+[\d.]+s)\s+(?P<end>\+[\d.]+s|open)"
        r"\s+(?P<duration>[\d.]+)s\s+(?P<reason>\S+)", summary, re.M))
    assert all(row["end"] != "open" for row in table), summary  # every window closed before the end
    rows = {row["check"]: row for row in table}
    api = rows["api"]
    assert api["kind"] == "down" and api["end"] != "open"
    assert api["reason"] in ("overloaded", "timeout")
    assert _seconds(api["end"]) > _seconds(api["start"]) and float(api["duration"]) > 2
    assert re.search(r"^  website\s+degraded\s+\+[\d.]+s\s+\+[\d.]+s", summary, re.M), summary
    assert rows["register"]["reason"] == "assertion"
    lead = re.search(r"^Detection lead: \+([\d.]+)s", summary, re.M)
    assert lead is not None, summary
    assert float(lead.group(1)) > 1.0  # positive: we saw it before the vendor's page did
