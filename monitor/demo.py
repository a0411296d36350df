"""`aipulse demo`: a real aipulse daemon watches a simulated AI provider replay DeepSeek's
January 2025 incident, on this machine only.

`run_demo` starts `monitor.simulator.SimulatedProvider` with the `january_2025()`
scenario and an ordinary `Daemon` on the same event loop, with a config made for it
(one service, five checks: website, api, login, register and a streaming completion,
plus the simulated vendor's status page) and a throw-away database. It prints what
happens as it happens -- the story's phases, outage and degraded windows opening
and closing, checks going unknown behind a bot wall, the service's status, what the
vendor's status page says -- then a summary with every window and the detection lead.

Time: `duration` is wall-clock seconds. `speed` is how fast the simulated world runs:
one probe round is 1 s of scenario time, i.e. `1/speed` s of wall time, and every
delay and timeout is scaled the same way. The scenario is fitted to
`duration * speed` scenario seconds, so the whole incident always plays within
`duration`; a higher speed gives more probe rounds in the same time.

Window events come from the daemon's pipeline as they reach webhooks (the demo's feed
is one of the daemon's `receivers`, handed each event after it is stored), so nothing
is scraped from log lines; states and the vendor's view are read from its LiveState.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from monitor.config import Config, parse, parse_listen
from monitor.daemon import Daemon
from monitor.outage import OutageWindow, State, WindowClosed, WindowOpened
from monitor.simulator import (
    API_KEY,
    LOGIN_MARKER,
    MODELS,
    REGISTER_MARKER,
    Phase,
    SimulatedProvider,
    january_2025,
)
from monitor.status import (
    DEGRADED_PERFORMANCE,
    MAJOR_OUTAGE,
    OPERATIONAL,
    PARTIAL_OUTAGE,
    UNDER_MAINTENANCE,
)

SERVICE = "deepseek-sim"
TITLE = "DeepSeek (simulated)"
CHECKS = ("website", "api", "login", "register", "inference")
MAX_SPEED = 20.0  # beyond this, probe timeouts shrink to a few ms and loopback noise shows
MIN_ROUNDS = 30.0  # duration * speed: probe rounds the story needs to unfold
POLL = 0.05  # seconds between looks at the daemon's state

# Scenario seconds (divided by speed for the wire): one probe round per second.
INTERVAL = 1.0
TIMEOUT = 0.5
WEBSITE_TIMEOUT = 0.9
MAX_LATENCY = 0.3  # the simulator's slow website takes 0.6
STREAM_TIMEOUT = 0.9
MAX_TTFT = 0.6
IDLE_TIMEOUT = 0.3
STATUS_PAGE_INTERVAL = 2.0


class DemoError(ValueError):
    """A bad argument (`status` 2) or a daemon that could not start (1); the message says which."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _human(seconds: float) -> str:
    return _ms(seconds) if seconds < 1 else f"{seconds:.3g}s"


def demo_config(sim: SimulatedProvider, speed: float, host: str, port: int, db: str) -> Config:
    """The daemon's config: one service watching every surface of `sim`."""
    w = 1 / speed  # scenario seconds -> wall seconds
    stream_body = {"model": MODELS[0], "stream": True, "max_tokens": 1,
                   "messages": [{"role": "user", "content": "Hi"}]}
    text = f"""\
listen: "{host}:{port}"
location: demo
storage: {{path: {json.dumps(db)}}}
limits: {{per_host_rate: 10000}}      # every check hits one loopback host
status_page_interval: {_ms(STATUS_PAGE_INTERVAL * w)}
defaults: {{interval: {_ms(INTERVAL * w)}, timeout: {_ms(TIMEOUT * w)}, open_after: 3, close_after: 2}}
services:
  {SERVICE}:
    title: {TITLE}
    status_page: {sim.url("status")}
    checks:
      website:
        url: {sim.url("website")}
        timeout: {_ms(WEBSITE_TIMEOUT * w)}
        expect: {{status: [200], max_latency: {_ms(MAX_LATENCY * w)}}}
      api:                       # no key: a well-formed 401 proves the API answers
        url: {sim.url("api")}
        expect: {{status: [200, 401]}}
      login:
        url: {sim.url("login")}
        expect: {{status: [200], body_contains: "{LOGIN_MARKER}"}}
      register:
        url: {sim.url("register")}
        critical: false          # limited sign-ups hurt new users, not the service
        expect: {{status: [200], body_contains: "{REGISTER_MARKER}"}}
      inference:
        kind: stream
        format: openai
        url: {sim.url("stream")}
        headers: {{Authorization: "Bearer {API_KEY}"}}
        json: {json.dumps(stream_body)}
        timeout: {_ms(STREAM_TIMEOUT * w)}
        idle_timeout: {_ms(IDLE_TIMEOUT * w)}
        expect: {{max_ttft: {_ms(MAX_TTFT * w)}}}
"""
    return parse(text, "demo.yaml", env={})


class _Feed:
    """Takes window events from the daemon's pipeline, after they are stored (as
    webhooks do), for the demo loop to print."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, WindowOpened | WindowClosed]] = deque()

    def publish(self, event: WindowOpened | WindowClosed) -> None:
        self.events.append((time.time(), event))


@dataclass
class _Unknown:
    since: float  # 0 while visible
    why: str
    total: float = 0.0


STATUS_WORDS = {  # the demo's tags and sentences for the status words (monitor.status)
    OPERATIONAL: ("UP", "is operational again: every check is up"),
    DEGRADED_PERFORMANCE: ("DEGRADED", "is degraded (slow, or a non-critical check is down)"),
    PARTIAL_OUTAGE: ("PARTIAL", "has a partial outage (some critical checks are down)"),
    MAJOR_OUTAGE: ("MAJOR", "has a major outage (every critical check is down)"),
    UNDER_MAINTENANCE: ("MAINT", "is under maintenance"),
}


class _Show:
    """Follows the daemon and the simulator, and prints what a newcomer wants to see."""

    def __init__(self, out: IO[str], sim: SimulatedProvider, daemon: Daemon, feed: _Feed,
                 speed: float, duration: float) -> None:
        self.out, self.sim, self.daemon, self.feed = out, sim, daemon, feed
        self.speed, self.duration = speed, duration
        self.t0 = time.time()
        self.phase: Phase | None = None
        self.windows: list[OutageWindow] = []  # closed windows
        self.open: dict[tuple[str, str | None], OutageWindow] = {}
        self.first_opened: float | None = None  # when our first service outage window was announced
        self.states: dict[str, State] = {}
        self.unknown: dict[str, _Unknown] = {}
        self.status: str | None = None
        self.vendor: tuple[str, tuple[str, ...]] | None = None
        self.vendor_seen: float | None = None  # when the vendor's page first showed an incident
        self.vendor_started: float | None = None  # that incident's started_at
        self.vendor_cleared: float | None = None

    # ------------------------------------------------------------------ output

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def rel(self, t: float) -> str:
        return f"+{max(0.0, t - self.t0):.1f}s"

    def event(self, subject: str, tag: str, text: str, at: float | None = None) -> None:
        self.say(f"{self.rel(time.time() if at is None else at):>7}  {subject:<9} {tag:<9} {text}")

    def header(self, port: int, host: str) -> None:
        base = f"http://{host}:{port}"
        self.say("aipulse demo: DeepSeek's January 2025 incident, replayed by a simulated provider")
        self.say("on this machine and watched by a real aipulse daemon. Nothing leaves this machine.")
        self.say()
        self.say(f"  status page       {base}/   (open it while the demo runs)")
        self.say(f"  metrics           {base}/metrics")
        self.say(f"  outage windows    {base}/api/v1/outages")
        self.say(f"  simulated vendor  {self.sim.base_url}/   (its status page: "
                 f"{self.sim.routes.get('status', '-')})")
        self.say()
        every = _human(INTERVAL / self.speed)
        speed = f"At speed {self.speed:g}x the" if self.speed != 1 else "The"
        self.say(f"Five checks ({', '.join(CHECKS[:-1])} and {CHECKS[-1]}, a streaming completion),")
        self.say(f"each probed every {every}. 3 failed probes in a row open a window, dated back to")
        self.say("the first failure; 2 good probes close it. A bot challenge is unknown: neither up")
        self.say(f"nor down. {speed} incident plays out in {self.duration:g}s; Ctrl-C stops early.")
        self.say()
        self.say(f"{'time':>7}  {'what':<9} {'state':<9} detail")

    # ------------------------------------------------------------------ follow

    async def follow(self, task: asyncio.Task[None], deadline: float) -> bool:
        """Print changes until `deadline` (loop time); True when the daemon stopped
        first (Ctrl-C, SIGTERM)."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            self.look()
            if task.done():
                return True
            await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))
        self.look()
        return False

    def look(self) -> None:
        self._phase()
        self._windows()
        self._states()
        self._service()
        self._vendor()

    def _phase(self) -> None:
        phase, since = self.sim.current()
        if phase is not self.phase:
            self.phase = phase
            self.event("story", "", phase.note, since)

    def _windows(self) -> None:
        live = self.daemon.live
        while self.feed.events:
            at, event = self.feed.events.popleft()
            w = event.window
            key = (w.service, w.check)
            if isinstance(event, WindowOpened):
                self.open[key] = w
                if w.check is None and w.kind == "down" and self.first_opened is None:
                    self.first_opened = at
            else:
                self.open.pop(key, None)
                self.windows.append(w)
            if w.check is None:
                continue  # the service's status line says it
            what = "outage" if w.kind == "down" else "slow"
            if isinstance(event, WindowOpened):
                if w.kind == "degraded":
                    why = f"slower than max_latency {_human(MAX_LATENCY / self.speed)}"
                else:
                    why = w.reason
                    stats = live.checks.get((w.service, w.check))
                    last = stats.last if stats is not None else None
                    if last is not None and last.reason.value == w.reason and last.detail:
                        why += f": {last.detail}"
                tag = "DOWN" if w.kind == "down" else "DEGRADED"
                self.event(w.check, tag, f"{what} since {self.rel(w.start)} ({why})", at)
            else:
                end = w.end if w.end is not None else w.start
                self.event(w.check, "UP", f"{what} for {end - w.start:.1f}s, "
                           f"{self.rel(w.start)} to {self.rel(end)}", at)

    def _states(self) -> None:
        for (service, check), stats in self.daemon.live.checks.items():
            if service != SERVICE:
                continue
            state = stats.state
            before = self.states.get(check)
            self.states[check] = state
            if state is before:
                continue
            now = time.time()
            if state is State.UNKNOWN and stats.last is not None:
                why = stats.last.reason.value + (f": {stats.last.detail}" if stats.last.detail else "")
                u = self.unknown.setdefault(check, _Unknown(now, why))
                u.since, u.why = now, why
                self.event(check, "UNKNOWN", f"cannot tell ({why})")
            elif before is State.UNKNOWN and (u := self.unknown.get(check)) is not None and u.since:
                spent = now - u.since
                u.total += spent
                u.since = 0.0
                self.event(check, state.value.upper(), f"visible again after {spent:.1f}s unknown")

    def _service(self) -> None:
        sstats = self.daemon.live.services.get(SERVICE)
        if sstats is None or sstats.status == self.status:
            return
        first = self.status is None
        self.status = sstats.status
        if first and sstats.status == OPERATIONAL:
            return
        tag, words = STATUS_WORDS.get(sstats.status, (sstats.status.upper(), sstats.status))
        self.event("service", tag, f"{TITLE} {words}")

    def _vendor(self) -> None:
        sstats = self.daemon.live.services.get(SERVICE)
        vendor = sstats.vendor if sstats is not None else None
        if sstats is None or vendor is None:
            return
        incidents = tuple(f"{i.status}: {i.name}" for i in vendor.incidents)
        key = (vendor.overall, incidents)
        if key == self.vendor:
            return
        self.vendor = key
        at = sstats.vendor_checked or time.time()
        tag = STATUS_WORDS.get(vendor.overall, (vendor.overall.upper(), ""))[0]
        if vendor.incidents:
            started = min((i.started for i in vendor.incidents if i.started is not None), default=None)
            if self.vendor_seen is None:
                self.vendor_seen, self.vendor_started = at, started
            for i in vendor.incidents:
                dated = f", started_at {self.rel(i.started)}" if i.started is not None else ""
                self.event("vendor", tag, f'its status page: "{i.name}" ({i.status}{dated})', at)
        else:
            if self.vendor_seen is not None:
                self.vendor_cleared = at
            self.event("vendor", tag, "its status page: " + (
                "all systems operational" if vendor.known else f"unreadable ({vendor.detail})"), at)

    # ----------------------------------------------------------------- summary

    def summary(self, interrupted: bool) -> None:
        now = time.time()
        windows = sorted([*self.windows, *self.open.values()], key=lambda w: (w.check is None, w.start))
        self.say()
        how = "interrupted after" if interrupted else "the demo ran for"
        self.say(f"Summary: {how} {now - self.t0:.1f}s; times are since the story began.")
        self.say()
        rows = [("CHECK", "KIND", "START", "END", "DURATION", "REASON")]
        for w in windows:
            end = self.rel(w.end) if w.end is not None else "open"
            reason = w.severity if w.check is None else "ok (slow)" if w.reason == "ok" else w.reason
            rows.append((w.check or "(service)", w.kind, self.rel(w.start), end, f"{w.duration(now):.1f}s",
                         reason))
        if len(rows) == 1:
            self.say("  no windows opened")
        else:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                self.say("  " + "  ".join(c.ljust(n) for c, n in zip(r, widths, strict=True)).rstrip())
        for check, u in self.unknown.items():
            total = u.total + (now - u.since if u.since else 0.0)
            self.say(f"  {check}: no window; unknown for {total:.1f}s ({u.why})")
        self.say()
        self._lead()

    def _lead(self) -> None:
        sstats = self.daemon.live.services.get(SERVICE)
        ours = min((w for w in [*self.windows, *self.open.values()] if w.check is None and w.kind == "down"),
                   key=lambda w: w.start, default=None)
        if ours is None:
            self.say("Detection lead: none (no service outage window opened).")
            return
        if self.vendor_seen is None:
            self.say("Detection lead: not known yet: the vendor's status page had posted no incident")
            self.say("by the time the demo stopped (which is the point: it lags).")
            return
        lead = sstats.detection_lead if sstats is not None else None
        if lead is None and self.vendor_started is not None:
            lead = self.vendor_started - ours.start
        vendor_start = self.vendor_started if self.vendor_started is not None else self.vendor_seen
        self.say(f"Detection lead: {lead:+.1f}s (aipulse_detection_lead_seconds: the vendor's incident "
                 "start minus ours)" if lead is not None else "Detection lead: unknown")
        rows = [
            ("our service outage window starts", ours.start, "first failed probe"),
            ("aipulse opened it", self.first_opened, "after 3 failed probes in a row"),
            ("the vendor's incident starts", vendor_start, "its started_at"),
            ("the vendor's page first shows it", self.vendor_seen, "our poll of its summary.json"),
        ]
        for label, at, note in rows:
            if at is not None:
                self.say(f"  {label:<34} {self.rel(at):>7}   {note}")
        if self.vendor_cleared is not None:
            self.say(f"  {'the vendor resolves it':<34} {self.rel(self.vendor_cleared):>7}   "
                     "no open incident on its page")
        if lead is not None and lead > 0:
            self.say(f"aipulse saw the outage {lead:.1f}s before the vendor's status page did. Real vendor "
                     "pages lag 15-45 minutes.")


def _validate(duration: float, speed: float) -> None:
    if not 0 < duration < 86400 * 365:  # also nan and inf
        raise DemoError("--duration must be more than 0 seconds and less than a year")
    if not 0 < speed <= MAX_SPEED:
        raise DemoError(f"--speed must be more than 0 and at most {MAX_SPEED:g}")
    if duration * speed < MIN_ROUNDS:
        raise DemoError(f"--duration x --speed must be at least {MIN_ROUNDS:g} (the story needs about "
                        f"{MIN_ROUNDS:g} probe rounds); try --duration {MIN_ROUNDS / speed:g}")


@contextlib.contextmanager
def _quiet_logs(verbose: bool) -> Iterator[None]:
    """The demo prints its own lines; the daemon's log lines would say the same twice."""
    logger = logging.getLogger("aipulse")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _ready(daemon: Daemon, task: asyncio.Task[None], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (daemon.live.ready and daemon.port):
        if task.done():
            task.result()  # raises why it stopped
            raise DemoError("the daemon stopped before it was ready", status=1)
        if loop.time() > deadline:
            raise DemoError("the daemon did not become ready", status=1)
        await asyncio.sleep(0.01)


async def run_demo(duration: float = 180, speed: float = 1.0, listen: str = "127.0.0.1:9478",
                   out: IO[str] = sys.stdout, *, verbose: bool = False) -> int:
    """Run the demo; returns the exit status (0, or 130 when stopped by Ctrl-C/SIGTERM)."""
    _validate(duration, speed)
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise DemoError(f"--listen: {exc}") from None
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    scenario = january_2025().fit(duration * speed)
    with _quiet_logs(verbose), tempfile.TemporaryDirectory(prefix="aipulse-demo-") as tmp:
        async with SimulatedProvider(scenario, speed=speed) as sim:
            feed = _Feed()
            daemon = Daemon(demo_config(sim, speed, host, port, str(Path(tmp) / "demo.db")), receivers=[feed])
            task = asyncio.create_task(daemon.run(), name="aipulse-demo-daemon")
            try:
                try:
                    await _ready(daemon, task)
                except OSError as exc:
                    raise DemoError(f"cannot start the daemon on {listen}: {exc.strerror or exc} "
                                    "(try --listen 127.0.0.1:0 for any free port)", status=1) from None
                sim.restart()  # the story starts now that the monitor watches
                show = _Show(out, sim, daemon, feed, speed, duration)
                show.header(daemon.port or port, shown_host)
                loop = asyncio.get_running_loop()
                interrupted = await show.follow(task, loop.time() + duration)
            finally:
                daemon.stop()
                if not task.done():
                    await asyncio.wait([task])
                if not task.cancelled():
                    task.exception()  # retrieved here; raised below unless already raising
            task.result()  # the daemon's own failure, if any
            show.look()
            show.summary(interrupted)
    return 130 if interrupted else 0
