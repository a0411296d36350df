"""Our HTTP endpoints (aiohttp, on the probes' event loop).

    GET /metrics   Prometheus text, or OpenMetrics when the Accept header asks
    GET /healthz   200 while the event loop is alive
    GET /readyz    200 once the config is loaded and the first round is scheduled;
                   503 while no check is active (all skipped, or an empty shard)
    GET /api/v1/status, /api/v1/outages   see monitor.api
    POST /-/reload reload the config (as SIGHUP does), only with --web.enable-lifecycle
    GET /, /services/<id>   the HTML status page, see monitor.page
    GET /history, /feed.atom   past windows beside the vendor's incidents, see monitor.history
    GET /badge/<service>.svg, /badge/<service>/<check>.svg   SVG badges, see monitor.badge

With a web config (monitor.webconfig), every path needs basic auth (checked off the
loop, monitor.auth) and TLS is served. Connections are accepted by monitor.listener
(capped, idle ones evicted first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.registry import CollectorRegistry

from monitor import api, badge, history, page
from monitor.auth import PasswordChecker, Verdict
from monitor.listener import DEFAULT_MAX_CONNECTIONS, Listener, bind
from monitor.live import LiveState
from monitor.metrics import render_parts
from monitor.webconfig import WebConfig, WebConfigError, file_state, load_web_config

log = logging.getLogger("aipulse.web")

REGISTRY = web.AppKey("registry", CollectorRegistry)
RELOAD = web.AppKey("reload", Callable[[], Awaitable[str | None]])
KEEPALIVE_TIMEOUT = 75.0  # seconds; see start()
RELOAD_BODY_TIMEOUT = 10.0  # seconds to send POST /-/reload's (unexpected) body
FILE_CHECK_EVERY = 1.0  # seconds between looks at the web config's files


class WebSecurity:
    """The web config in force and what it needs at run time: the password checker,
    the rate limiter, and a look at its files (at most once a second, on a new
    connection or request) that applies a changed file or certificate at once."""

    def __init__(self, config: WebConfig, lifecycle: bool = False) -> None:
        self.config = config
        self.lifecycle = lifecycle  # POST /-/reload allowed (--web.enable-lifecycle)
        self.checker = PasswordChecker(config.users)
        self.listener: Listener | None = None
        self._bucket = _TokenBucket(config)
        self._files = file_state(config.files)
        self._looked = time.monotonic()

    def apply(self, new: WebConfig) -> None:
        """Use `new` from the next connection / request on. TLS cannot be turned on or
        off without a restart (the port would change its protocol under clients)."""
        if (new.ssl_context is None) != (self.config.ssl_context is None):
            log.warning("web config %s: TLS turned %s: takes effect after a restart; keeping the running "
                        "web config", new.path, "on" if new.ssl_context else "off")
            return
        if dict(new.users) != dict(self.config.users):
            self.checker.close()
            self.checker = PasswordChecker(new.users)
        if new.rate_limit != self.config.rate_limit:
            self._bucket = _TokenBucket(new)
        self.config = new
        self._files = file_state(new.files)

    def look_at_files(self) -> None:
        now = time.monotonic()
        if self.config.path is None or now - self._looked < FILE_CHECK_EVERY:
            return
        self._looked = now
        state = file_state(self.config.files)
        if state == self._files:
            return
        self._files = state  # one attempt (and one log line) per change
        try:
            new = load_web_config(self.config.path)
        except WebConfigError as exc:
            log.error("web config changed but cannot be used, keeping the running one: %s", exc)
            return
        log.info("web config %s or a file it names changed: applied", self.config.path)
        self.apply(new)

    def allow_request(self) -> bool:
        return self._bucket.take()

    def close(self) -> None:
        self.checker.close()


class _TokenBucket:
    """rate_limit: `burst` requests at once, then one per `interval` (Go's rate.Limiter)."""

    def __init__(self, config: WebConfig) -> None:
        self.limit = config.rate_limit
        self.tokens = float(self.limit.burst) if self.limit else 0.0
        self.at = time.monotonic()

    def take(self) -> bool:
        if self.limit is None:
            return True
        now = time.monotonic()
        self.tokens = min(float(self.limit.burst), self.tokens + (now - self.at) / self.limit.interval)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


WEB = web.AppKey("web", WebSecurity)


def _not_a_client_error(record: logging.LogRecord) -> bool:
    """aiohttp logs every request it cannot parse (a header over 8 KiB, garbage) as an
    ERROR with a traceback, so any client could fill the journal. The client got its
    400; that is not our error. Errors in our own handlers are still logged."""
    return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


logging.getLogger("aiohttp.server").addFilter(_not_a_client_error)


SEND_BYTES = 1 << 20  # /metrics is sent in pieces of about this size


async def metrics(request: web.Request) -> web.StreamResponse:
    parts, content_type = await render_parts(request.app[REGISTRY], request.headers.get("Accept"))
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = sum(map(len, parts))
    # gzip when the client asks (Prometheus does): ~20x smaller at 10,000 checks; aiohttp
    # compresses each piece in a thread, and then sends it chunked.
    response.enable_compression()
    await response.prepare(request)
    piece: list[bytes] = []
    size = 0
    try:
        for part in parts:  # never the whole 30 MB in one more buffer
            piece.append(part)
            size += len(part)
            if size >= SEND_BYTES:
                await response.write(b"".join(piece))
                piece, size = [], 0
        await response.write(b"".join(piece))
        await response.write_eof()
    except ConnectionResetError:
        # The scraper went away mid-answer (its scrape timeout, its shutdown): nothing
        # of ours failed, and a traceback per aborted scrape would fill the journal.
        pass
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    live = request.app[api.LIVE]
    if not live.ready:
        return web.Response(status=503, text="not ready\n")
    if not live.checks:  # running, but watching nothing: not what anyone deployed it for
        skipped = f" ({live.checks_skipped} skipped for a missing key)" if live.checks_skipped else ""
        return web.Response(status=503, text=f"not ready: no active checks{skipped}\n")
    return web.Response(text="ready\n")


def cross_site(request: web.Request) -> str | None:
    """Why a request looks sent by a browser on behalf of another site, or None.
    Browsers mark their requests with Sec-Fetch-Site (same-origin, same-site,
    cross-site, none = typed by the user) and, for POSTs, Origin; a page elsewhere,
    even on another port of this host, cannot fake either. Clients that are not
    browsers (curl, scripts, systemctl) send neither and are not refused."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != f"{request.scheme}://{request.host}".lower():
        return f"Origin {origin} is not this server"
    return None


async def reload(request: web.Request) -> web.Response:
    if not request.app[WEB].lifecycle:
        return web.json_response({"error": "lifecycle APIs are not enabled: start with "
                                  "`aipulse run --web.enable-lifecycle`, or send SIGHUP"}, status=403)
    if (why := cross_site(request)) is not None:
        log.warning("POST /-/reload refused: a cross-site browser request (%s)", why)
        return web.json_response({"error": f"cross-site request refused ({why})"}, status=403)
    if request.can_read_body:
        # No body is expected; read what came (up to client_max_size) so that a huge
        # one is refused with 413 before anything is reloaded.
        try:
            async with asyncio.timeout(RELOAD_BODY_TIMEOUT):
                await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "request body too large"}, status=413)
        except TimeoutError:
            return web.json_response({"error": "request body too slow"}, status=408)
    error = await request.app[RELOAD]()
    if error is not None:
        return web.json_response({"error": error}, status=500)
    return web.json_response({"status": "reloaded"})


@web.middleware
async def guard(request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every request: marked busy for the listener, rate limit, basic auth."""
    security = request.app[WEB]
    listener = security.listener
    with listener.busy(request.transport) if listener is not None else contextlib.nullcontext():
        security.look_at_files()
        if not security.allow_request():
            return web.Response(status=429, text="Too Many Requests\n")
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        verdict = await security.checker.check(request.headers.get("Authorization"),
                                               str(peer[0]) if peer else "?")
        if verdict is Verdict.BUSY:
            return web.json_response({"error": "too many password checks at once from this client; retry"},
                                     status=429, headers={"Retry-After": "1"})
        if verdict is Verdict.DENIED:
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="aipulse"'})
        return await handler(request)


async def _extra_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in request.app[WEB].config.headers:  # http_server_config.headers
        response.headers[name] = value


def make_app(live: LiveState, registry: CollectorRegistry, db_path: str,
             on_reload: Callable[[], Awaitable[str | None]], web_config: WebConfig, *,
             lifecycle: bool = False) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[guard])
    api.add_routes(app, live, db_path)
    app[REGISTRY] = registry
    app[RELOAD] = on_reload
    app[WEB] = WebSecurity(web_config, lifecycle)  # apply() a new one: from the next request on
    app.on_response_prepare.append(_extra_headers)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload)
    page.add_routes(app)  # GET / and /services/<id>
    history.add_routes(app)  # GET /history, /feed.atom
    badge.add_routes(app)  # GET /badge/<service>.svg, /badge/<service>/<check>.svg
    return app


class Served:
    """A running server: `cleanup()` stops it."""

    def __init__(self, runner: web.AppRunner, listener: Listener, security: WebSecurity) -> None:
        self.runner, self.listener, self.security = runner, listener, security

    def reconfigure(self, web_config: WebConfig | None, max_connections: int) -> None:
        """A reload: a new web config (None: keep it) from the next request on, a new cap."""
        if web_config is not None:
            self.security.apply(web_config)
        self.listener.max_connections = max_connections

    async def cleanup(self) -> None:
        await self.listener.close()
        await self.runner.cleanup()
        self.security.close()


async def start(app: web.Application, host: str, port: int, *,
                max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Served:
    """Start serving (TLS when the app's web config has it); call `cleanup()` to stop."""
    # keepalive_timeout also bounds how long a connection may take to send its first
    # request (aiohttp starts the timer on connect): a slowloris holds a socket for at
    # most this long, not aiohttp's default hour. 75 s outlives a 60 s scrape interval.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    security = app[WEB]
    assert runner.server is not None
    try:
        sockets = await bind(host, port)
    except OSError:
        await runner.cleanup()
        raise
    listener = Listener(runner.server, sockets, max_connections=max_connections,
                        ssl_context=lambda: security.config.ssl_context,
                        allowed_sans=lambda: security.config.allowed_sans,
                        on_accept=security.look_at_files)
    security.listener = listener
    listener.start()
    return Served(runner, listener, security)


def bound_port(served: Served) -> int:
    """The port actually bound (useful with port 0)."""
    return served.listener.port
