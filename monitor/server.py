"""Our HTTP endpoints (aiohttp, on the probes' event loop).

    GET /metrics   Prometheus text, or OpenMetrics when the Accept header asks
    GET /healthz   200 while the event loop is alive
    GET /readyz    200 once the config is loaded and the first round is scheduled;
                   503 while no check is active (all skipped, or an empty shard)
    GET /api/v1/status, /api/v1/outages   see monitor.api
    POST /-/reload reload the config (as SIGHUP does)
    GET /, /services/<id>   the HTML status page, see monitor.page
    GET /history, /feed.atom   past windows beside the vendor's incidents, see monitor.history
    GET /badge/<service>.svg, /badge/<service>/<check>.svg   SVG badges, see monitor.badge

With a web config (monitor.webconfig), every path needs basic auth and TLS is served.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.registry import CollectorRegistry

from monitor import api, badge, history, page
from monitor.live import LiveState
from monitor.metrics import render_parts
from monitor.webconfig import WebConfig

REGISTRY = web.AppKey("registry", CollectorRegistry)
RELOAD = web.AppKey("reload", Callable[[], Awaitable[str | None]])
WEB = web.AppKey("web", WebConfig)
KEEPALIVE_TIMEOUT = 75.0  # seconds; see start()


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


async def reload(request: web.Request) -> web.Response:
    if request.can_read_body:
        # No body is expected; read what came (up to client_max_size) so that a huge
        # one is refused with 413 before anything is reloaded.
        try:
            await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "request body too large"}, status=413)
    error = await request.app[RELOAD]()
    if error is not None:
        return web.json_response({"error": error}, status=500)
    return web.json_response({"status": "reloaded"})


@web.middleware
async def basic_auth(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if not request.app[WEB].allows(request.headers.get("Authorization")):
        return web.json_response({"error": "unauthorized"}, status=401,
                                 headers={"WWW-Authenticate": 'Basic realm="aipulse"'})
    return await handler(request)


def make_app(live: LiveState, registry: CollectorRegistry, db_path: str,
             on_reload: Callable[[], Awaitable[str | None]], web_config: WebConfig) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[basic_auth])
    api.add_routes(app, live, db_path)
    app[REGISTRY] = registry
    app[RELOAD] = on_reload
    app[WEB] = web_config  # replaced on reload: new users apply to the next request
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload)
    page.add_routes(app)  # GET / and /services/<id>
    history.add_routes(app)  # GET /history, /feed.atom
    badge.add_routes(app)  # GET /badge/<service>.svg, /badge/<service>/<check>.svg
    return app


async def start(app: web.Application, host: str, port: int,
                ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Start serving; returns the runner (call `cleanup()` to stop)."""
    # keepalive_timeout also bounds how long a connection may take to send its first
    # request (aiohttp starts the timer on connect): a slowloris holds a socket for at
    # most this long, not aiohttp's default hour. 75 s outlives a 60 s scrape interval.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with port 0)."""
    for site in runner.sites:
        server = site._server  # aiohttp keeps the asyncio server here
        if server is not None and server.sockets:  # type: ignore[union-attr]
            return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    raise RuntimeError("not listening")
