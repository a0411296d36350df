"""A simulated AI provider on loopback, for `aipulse demo`, tests and benchmarks.

`SimulatedProvider` serves, on 127.0.0.1 (port 0 by default) and on the running
event loop, the surfaces aipulse watches on a real vendor:

    website    GET  /                       HTML home page
    api        GET  /v1/models              JSON model list; 401 JSON error without the key
    stream     POST /v1/chat/completions    OpenAI-style SSE: role-only chunk, tokens, [DONE]
    login      GET  /sign_in                HTML containing LOGIN_MARKER
    register   GET  /sign_up                HTML containing REGISTER_MARKER
    status     GET  /api/v2/summary.json    the vendor's own Atlassian Statuspage v2 summary

What each surface does is set by the current `Phase` (one mode per surface, plus the
vendor's status page state). A `Scenario` is a timeline of phases in *scenario
seconds*; the simulator's position in it is `(clock() - start) * speed`, so at
`speed=6` one scenario second passes in 1/6 s of wall time, and every delay the
simulator makes (a slow page, a hang, keep-alive spacing) is divided by `speed` as
well. `set_phase()` pins a phase by hand (tests, benchmarks); `set_phase(None)`
returns to the timeline. `clock` is injectable (epoch seconds, default `time.time`).

`january_2025()` is the built-in scenario, after DeepSeek on 27-28 January 2025
(reference: ai-services.md section 0): the API fails first (503s and hangs, streams
stall on keep-alives), then the website slows, login sits behind a Cloudflare
challenge and registrations are "temporarily limited"; the vendor's status page
acknowledges it only some time later, and resolves it late too.

Surface modes:

    website   ok | slow (answers after `Timings.slow`) | down (503)
    api       ok | overloaded (503 JSON) | hang (no answer for `Timings.hang`) | flaky (503, hang, ...)
    stream    ok | overloaded (503 JSON before the stream) | error (200, keep-alives, then an
              error chunk) | stall (200, keep-alives only) | flaky (overloaded, error, stall, ...)
    login     ok | challenge (403, `cf-mitigated: challenge`, "Just a moment..." page)
    register  ok | limited (200, "temporarily limited" notice instead of the form)
    vendor    operational | investigating | identified | monitoring   (the status page)

The vendor incident's `started_at` is, by default, the time the vendor posted it (as
most incidents are dated); `Scenario(vendor_backdate=True)` dates it back to the
first troubled phase instead, as some vendors do after the fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from aiohttp import web

from monitor.units import rfc3339

SURFACES = ("website", "api", "stream", "login", "register", "status")
DEFAULT_ROUTES: dict[str, str] = {
    "website": "/",
    "api": "/v1/models",
    "stream": "/v1/chat/completions",
    "login": "/sign_in",
    "register": "/sign_up",
    "status": "/api/v2/summary.json",
}
MODES: dict[str, tuple[str, ...]] = {
    "website": ("ok", "slow", "down"),
    "api": ("ok", "overloaded", "hang", "flaky"),
    "stream": ("ok", "overloaded", "error", "stall", "flaky"),
    "login": ("ok", "challenge"),
    "register": ("ok", "limited"),
    "vendor": ("operational", "investigating", "identified", "monitoring"),
}
FLAKY = {"api": ("overloaded", "hang"), "stream": ("overloaded", "error", "stall")}

API_KEY = "sk-simulated-demo-key"
MODELS = ("deepseek-chat", "deepseek-reasoner")
LOGIN_MARKER = "Log in to DeepSeek"
REGISTER_MARKER = "Create your account"
LIMITED_NOTICE = ("Due to large-scale malicious attacks on DeepSeek's services, we are temporarily "
                  "limiting registrations to ensure continued service. Existing users can log in as usual.")
TOKENS = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?")


@dataclass(frozen=True, slots=True)
class Phase:
    """What every surface does for a while. `note` says it in words (the demo prints it)."""

    name: str
    note: str = ""
    website: str = "ok"
    api: str = "ok"
    stream: str = "ok"
    login: str = "ok"
    register: str = "ok"
    vendor: str = "operational"

    def __post_init__(self) -> None:
        for surface, allowed in MODES.items():
            mode = getattr(self, surface)
            if mode not in allowed:
                raise ValueError(f"phase {self.name}: {surface} mode {mode!r} is not one of {allowed}")

    @property
    def troubled(self) -> bool:
        """True when any surface misbehaves (the vendor's page aside)."""
        return any(getattr(self, s) != "ok" for s in ("website", "api", "stream", "login", "register"))


NORMAL = Phase("normal", "everything answers normally")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A timeline: `steps` are (scenario seconds, phase), the first at 0; it lasts `length`."""

    steps: tuple[tuple[float, Phase], ...]
    length: float
    name: str = "scenario"
    vendor_backdate: bool = False  # incident started_at: first troubled phase, not the posting time

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError("a scenario starts with a phase at 0")
        if any(b[0] < a[0] for a, b in itertools.pairwise(self.steps)):
            raise ValueError("scenario steps must be in time order")
        if self.length < self.steps[-1][0]:
            raise ValueError("scenario length ends before its last step")

    def phase_at(self, t: float) -> tuple[float, Phase]:
        """The step in force at scenario time `t`: (its start, its phase)."""
        current = self.steps[0]
        for step in self.steps:
            if step[0] > t:
                break
            current = step
        return current

    def fit(self, length: float) -> Scenario:
        """The same story, stretched or compressed to last `length` scenario seconds."""
        k = length / self.length
        return replace(self, steps=tuple((at * k, phase) for at, phase in self.steps), length=length)

    def marks(self, t: float) -> tuple[float | None, float | None]:
        """(start of the trouble, start of the vendor's incident) in force at time `t`,
        in scenario seconds; None when there is none."""
        trouble = vendor = None
        for at, phase in self.steps:
            if at > t:
                break
            if phase.troubled and trouble is None:
                trouble = at
            elif not phase.troubled and phase.vendor == "operational":
                trouble = None
            if phase.vendor != "operational" and vendor is None:
                vendor = at
            elif phase.vendor == "operational":
                vendor = None
        return trouble, vendor


def january_2025() -> Scenario:
    """DeepSeek, 27-28 January 2025, told in 180 scenario seconds (fit() it to taste)."""
    attack = Phase("api-attack", "attack begins: API answers 503 or hangs, streams stall on keep-alives",
                   api="flaky", stream="flaky")
    wide = replace(attack, name="attack-widens",
                   note="attack widens: website slows, login behind a bot challenge, sign-ups limited",
                   website="slow", login="challenge", register="limited")
    posted = replace(wide, name="vendor-investigating",
                     note="the vendor's status page finally posts an incident", vendor="investigating")
    mitigated = Phase("mitigated", "mitigation works: API, streams, website, login recover; sign-ups "
                      "still limited", register="limited", vendor="investigating")
    monitoring = replace(mitigated, name="vendor-monitoring",
                         note="the vendor's status page moves to monitoring", vendor="monitoring")
    reopened = Phase("registrations-reopen", "sign-ups reopen: everything answers normally",
                     vendor="monitoring")
    resolved = Phase("vendor-resolved", "the vendor's status page resolves the incident")
    return Scenario(
        steps=((0.0, NORMAL), (20.0, attack), (35.0, wide), (55.0, posted), (95.0, mitigated),
               (110.0, monitoring), (125.0, reopened), (150.0, resolved)),
        length=180.0, name="DeepSeek, January 2025",
    )


@dataclass(frozen=True, slots=True)
class Timings:
    """Delays the simulator makes, in scenario seconds (divided by `speed` on the wire)."""

    slow: float = 0.45  # website in mode slow
    hang: float = 60.0  # how long a hang lasts (the client gives up long before)
    first_token: float = 0.05  # stream: role chunk at once, first token after this
    token_gap: float = 0.01
    keepalive_every: float = 0.15
    keepalives_before_error: int = 2


@dataclass
class _Manual:
    phase: Phase
    since: float  # epoch
    trouble: float | None
    vendor: float | None


class SimulatedProvider:
    """The simulated vendor. `async with SimulatedProvider(...) as sim:` or `await
    sim.start()` / `await sim.stop()`; `sim.url("api")` is a surface's URL."""

    def __init__(self, scenario: Scenario | None = None, *, speed: float = 1.0, host: str = "127.0.0.1",
                 port: int = 0, routes: Mapping[str, str | None] | None = None,
                 clock: Callable[[], float] = time.time, timings: Timings | None = None,
                 api_key: str = API_KEY, title: str = "DeepSeek") -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        unknown = set(routes or {}) - set(SURFACES)
        if unknown:
            raise ValueError(f"unknown surfaces in routes: {sorted(unknown)} (known: {SURFACES})")
        self.scenario = scenario or Scenario(((0.0, NORMAL),), 0.0, name="steady")
        self.speed = speed
        self.host, self.port = host, port
        self.routes = {k: v for k, v in {**DEFAULT_ROUTES, **(routes or {})}.items() if v}
        self.clock = clock
        self.timings = timings or Timings()
        self.api_key = api_key
        self.title = title
        self.hits: Counter[str] = Counter()
        self.started: float | None = None  # epoch (per clock) the timeline started
        self._manual: _Manual | None = None
        self._turns: dict[str, itertools.cycle[str]] = {k: itertools.cycle(v) for k, v in FLAKY.items()}
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> SimulatedProvider:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=0.2, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self.restart()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimulatedProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def restart(self) -> None:
        """Start the timeline over from 0 now."""
        self.started = self.clock()

    # ------------------------------------------------------------------- control

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, surface: str) -> str:
        return self.base_url + self.routes[surface]

    def elapsed(self) -> float:
        """Scenario seconds since the timeline started."""
        return 0.0 if self.started is None else (self.clock() - self.started) * self.speed

    def epoch(self, t: float) -> float:
        """The clock time at which scenario time `t` happens (happened)."""
        return (self.started if self.started is not None else self.clock()) + t / self.speed

    def set_phase(self, phase: Phase | str | None, **modes: str) -> Phase | None:
        """Pin a phase (a Phase, or the name of one in the scenario, or None to go back to
        the timeline). Keyword arguments change single modes: `set_phase(NORMAL, api="hang")`."""
        if phase is None and not modes:
            self._manual = None
            return None
        if phase is None:
            phase = self.phase
        elif isinstance(phase, str):
            named = [p for _, p in (*self.scenario.steps, (0.0, NORMAL)) if p.name == phase]
            if not named:
                raise ValueError(f"no phase {phase!r} in {self.scenario.name} "
                                 f"(known: {', '.join(p.name for _, p in self.scenario.steps)})")
            phase = named[0]
        if modes:
            phase = replace(phase, name=f"{phase.name}+manual", **modes)
        now = self.clock()
        before = self._state()
        acknowledged = phase.vendor != "operational"
        # The trouble lasts while a surface misbehaves or the vendor's incident is open.
        trouble = (before[2] or now) if phase.troubled else (before[2] if acknowledged else None)
        vendor = (before[3] or now) if acknowledged else None
        self._manual = _Manual(phase, now, trouble, vendor)
        return phase

    @property
    def phase(self) -> Phase:
        return self._state()[0]

    def current(self) -> tuple[Phase, float]:
        """The phase in force and since when (clock time: for the timeline, when its step
        was due, however late anyone looks)."""
        phase, since, _, _ = self._state()
        return phase, since

    def _state(self) -> tuple[Phase, float, float | None, float | None]:
        """(phase, since (epoch), trouble since (epoch), vendor incident posted (epoch))."""
        if self._manual is not None:
            m = self._manual
            return m.phase, m.since, m.trouble, m.vendor
        t = self.elapsed()
        at, phase = self.scenario.phase_at(t)
        trouble, vendor = self.scenario.marks(t)
        return (phase, self.epoch(at), None if trouble is None else self.epoch(trouble),
                None if vendor is None else self.epoch(vendor))

    def incident_started(self) -> float | None:
        """The open vendor incident's `started_at` (epoch), or None when none is open."""
        _, _, trouble, posted = self._state()
        if posted is None:
            return None
        return trouble if self.scenario.vendor_backdate and trouble is not None else posted

    def _turn(self, surface: str, mode: str) -> str:
        return next(self._turns[surface]) if mode == "flaky" else mode

    async def _sleep(self, scenario_seconds: float) -> None:
        await asyncio.sleep(scenario_seconds / self.speed)

    # -------------------------------------------------------------------- routes

    def app(self) -> web.Application:
        app = web.Application()
        handlers = {
            "website": ("GET", self._website), "api": ("GET", self._api), "stream": ("POST", self._stream),
            "login": ("GET", self._login), "register": ("GET", self._register),
            "status": ("GET", self._status),
        }
        for surface, path in self.routes.items():
            method, handler = handlers[surface]
            app.router.add_route(method, path, handler)
        return app

    def _page(self, title: str, body: str, status: int = 200, **headers: str) -> web.Response:
        html = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title></head>"
                f"<body><main>{body}</main><footer>{self.title} (simulated by aipulse)</footer>"
                "</body></html>")
        return web.Response(text=html, status=status, content_type="text/html", headers=headers)

    async def _website(self, request: web.Request) -> web.Response:
        self.hits["website"] += 1
        mode = self.phase.website
        if mode == "down":
            return self._page("503 Service Unavailable", "<h1>Service temporarily unavailable</h1>", 503)
        if mode == "slow":
            await self._sleep(self.timings.slow)
        return self._page(f"{self.title} | Into the Unknown",
                          f"<h1>{self.title}</h1><p>Chat with {self.title}. "
                          f"<a href='{self.routes.get('login', '/')}'>Start now</a></p>")

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    @staticmethod
    def _json_error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                                 status=status)

    def _unauthorized(self) -> web.Response:
        return self._json_error(401, "Authentication Fails, Your api key is invalid",
                                "authentication_error", "invalid_request_error")

    def _overloaded(self) -> web.Response:
        return self._json_error(503, "Server is busy. Please try again later.", "service_unavailable_error",
                                "server_overloaded")

    async def _api(self, request: web.Request) -> web.Response:
        self.hits["api"] += 1
        mode = self._turn("api", self.phase.api)
        if mode == "overloaded":
            return self._overloaded()
        if mode == "hang":
            await self._sleep(self.timings.hang)
            return self._overloaded()
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "deepseek"} for m in MODELS]})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.hits["stream"] += 1
        mode = self._turn("stream", self.phase.stream)
        if mode == "overloaded":
            return self._overloaded()
        if not self._authorized(request):
            return self._unauthorized()
        try:
            req = await request.json()
        except ValueError:
            return self._json_error(400, "Failed to deserialize the JSON body", "invalid_request_error")
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            return self._json_error(400, "messages: field required", "invalid_request_error")
        model = str(req.get("model") or MODELS[0])
        max_tokens = req.get("max_tokens")
        n = max(1, min(len(TOKENS), max_tokens if isinstance(max_tokens, int) else len(TOKENS)))
        finish = "length" if n < len(TOKENS) else "stop"
        cid = f"chatcmpl-sim-{next(self._ids)}"
        if not req.get("stream"):
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(TOKENS[:n])},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
        except ConnectionError:  # the probe gave up before the stream began (its deadline)
            return resp

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                    "system_fingerprint": "fp_simulated",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish_reason}]}
            return f"data: {json.dumps(body)}\n\n".encode()

        t = self.timings
        with contextlib.suppress(ConnectionError):
            if mode in ("error", "stall"):
                # Queued behind the attack: DeepSeek keeps the connection open with comments.
                count = t.keepalives_before_error if mode == "error" else int(t.hang / t.keepalive_every)
                for _ in range(count):
                    await resp.write(b": keep-alive\n\n")
                    await self._sleep(t.keepalive_every)
                if mode == "error":
                    err = {"error": {"message": "Server is busy. Please try again later.",
                                     "type": "server_error", "param": None, "code": "server_overloaded"}}
                    await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                return resp
            await resp.write(chunk({"role": "assistant", "content": ""}))
            await self._sleep(t.first_token)
            for i, token in enumerate(TOKENS[:n]):
                if i:
                    await self._sleep(t.token_gap)
                await resp.write(chunk({"content": token}))
            await resp.write(chunk({}, finish))
            await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _login(self, request: web.Request) -> web.Response:
        self.hits["login"] += 1
        if self.phase.login == "challenge":
            return self._page("Just a moment...",
                              "<h1>Checking if the site connection is secure</h1>"
                              "<script src='/cdn-cgi/challenge-platform/h/b/orchestrate/chl_page/v1'>"
                              "</script>",
                              403, **{"cf-mitigated": "challenge", "Server": "cloudflare"})
        return self._page(f"{self.title} - Log in",
                          f"<h1>{LOGIN_MARKER}</h1><form method=post><input name=email>"
                          "<input name=password type=password><button>Log in</button></form>")

    async def _register(self, request: web.Request) -> web.Response:
        self.hits["register"] += 1
        if self.phase.register == "limited":
            return self._page(f"{self.title} - Sign up",
                              f"<h1>Registration is temporarily limited</h1><p>{LIMITED_NOTICE}</p>")
        return self._page(f"{self.title} - Sign up",
                          f"<h1>{REGISTER_MARKER}</h1><form method=post><input name=phone>"
                          "<button>Send code</button></form>")

    async def _status(self, request: web.Request) -> web.Response:
        """The vendor's page: Statuspage v2 summary.json, behind reality by the scenario."""
        self.hits["status"] += 1
        phase, since, _, posted = self._state()
        vendor = phase.vendor
        started = self.incident_started()
        if vendor in ("investigating", "identified"):
            api, web_chat, indicator = "major_outage", "partial_outage", "major"
        else:
            api = web_chat = "operational"
            indicator = "major" if vendor == "monitoring" else "none"
        components = [
            {"id": "sim-api", "name": "API Service", "status": api},
            {"id": "sim-web", "name": "Web Chat Service", "status": web_chat},
        ]
        incidents = []
        if started is not None and posted is not None:
            message = (LIMITED_NOTICE if vendor != "monitoring"
                       else "A fix has been implemented and we are monitoring the results.")
            incidents.append({
                "id": "sim-incident-1", "name": "Large-scale malicious attacks",
                "status": vendor, "impact": "major", "shortlink": self.base_url + "/incidents/sim-incident-1",
                "created_at": rfc3339(posted), "updated_at": rfc3339(since),
                "started_at": rfc3339(started), "monitoring_at": None, "resolved_at": None,
                "page_id": "simdeepseek", "components": components[:1],
                "incident_updates": [{"id": "sim-update-1", "status": vendor, "body": message,
                                      "incident_id": "sim-incident-1", "created_at": rfc3339(since),
                                      "display_at": rfc3339(since), "affected_components": None}],
            })
        now = rfc3339(self.clock())
        for c in components:
            c.update({"created_at": now, "updated_at": now, "position": 1, "description": None,
                      "showcase": True, "start_date": None, "group_id": None, "page_id": "simdeepseek",
                      "group": False, "only_show_if_degraded": False})
        return web.json_response({
            "page": {"id": "simdeepseek", "name": f"{self.title} Service (simulated)", "url": self.base_url,
                     "time_zone": "Asia/Shanghai", "updated_at": now},
            "components": components,
            "incidents": incidents,
            "scheduled_maintenances": [],
            "status": {"indicator": indicator, "description": {
                "none": "All Systems Operational", "major": "Partial System Outage"}[indicator]},
        })


def modes(phase: Phase) -> dict[str, str]:
    """A phase's surface modes by name (for display)."""
    return {f.name: getattr(phase, f.name) for f in fields(phase) if f.name in MODES}


__all__ = ["API_KEY", "DEFAULT_ROUTES", "LIMITED_NOTICE", "LOGIN_MARKER", "MODELS", "NORMAL",
           "REGISTER_MARKER", "SURFACES", "Phase", "Scenario", "SimulatedProvider", "Timings",
           "january_2025", "modes"]
