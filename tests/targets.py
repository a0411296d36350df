"""Real local HTTP(S) targets for tests: an aiohttp server on loopback in its own thread.

Routes behave like the services we monitor, good and bad. The server runs on its own
event loop in a background thread, so a probe under test shares nothing with it but
the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

# Traffic nobody on this project wrote (../shared/fixtures/real/SOURCES.md says whence).
REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real"
ZERO_MIB = bytes(1 << 20)
# 64 MiB of zeros gzipped at level 9 is ~64 KiB on the wire.
GZIP_BOMB = gzip.compress(bytes(64 << 20), compresslevel=9)


@dataclass
class Target:
    """Shared state: tests flip `mode` to change what a route answers."""

    mode: dict[str, str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    hooks: list[dict[str, object]] = field(default_factory=list)  # accepted webhook deliveries
    hook_attempts: int = 0
    port: int = 0
    tls_port: int | None = None

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://localhost:{self.tls_port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"


def build_app(target: Target) -> web.Application:
    routes = web.RouteTableDef()

    def hit(name: str) -> None:
        target.hits[name] = target.hits.get(name, 0) + 1

    @routes.get("/ok")
    async def ok(request: web.Request) -> web.Response:
        hit("ok")
        return web.Response(text="hello from aipulse target", headers={"X-Service": "target-1"})

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        hit(f"status/{code}")
        return web.Response(status=code, text=json.dumps({"error": {"message": f"status {code}"}}),
                            content_type="application/json")

    @routes.get("/json")
    async def json_route(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "model-a"}, {"id": "model-b"}]})

    @routes.get("/switch/{name}")
    async def switch(request: web.Request) -> web.StreamResponse:
        """Answers by target.mode[name]: ok, 500, 503, hang, slow."""
        name = request.match_info["name"]
        hit(f"switch/{name}")
        mode = target.mode.get(name, "ok")
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode.startswith("slow"):
            await asyncio.sleep(float(mode[4:] or "0.3"))
            return web.Response(text="slow but fine")
        if mode.isdigit():
            return web.Response(status=int(mode), text="failing")
        return web.Response(text="fine")

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "1")))
        return web.Response(text="slow")

    @routes.get("/hang")
    async def hang(request: web.Request) -> web.Response:
        hit("hang")
        await asyncio.sleep(3600)
        return web.Response(text="never")

    @routes.get("/drip")
    async def drip(request: web.Request) -> web.StreamResponse:
        """Headers at once, then one byte per `every` seconds, forever."""
        every = float(request.query.get("every", "1"))
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                await resp.write(b"x")
                await asyncio.sleep(every)
        return resp

    @routes.get("/endless")
    async def endless(request: web.Request) -> web.StreamResponse:
        """1 GiB of zeros (the probe must stop at max_body_bytes)."""
        resp = web.StreamResponse()
        resp.content_length = 1 << 30
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):
                await resp.write(ZERO_MIB)
        return resp

    @routes.get("/gzip-bomb")
    async def gzip_bomb(request: web.Request) -> web.Response:
        return web.Response(body=GZIP_BOMB, headers={"Content-Encoding": "gzip",
                                                      "Content-Type": "text/plain"})

    @routes.get("/gzip-ok")
    async def gzip_ok(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"compressed hello"),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    @routes.get("/redirect/{n}")
    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound("/ok" if n <= 1 else f"/redirect/{n - 1}")

    @routes.route("*", "/redirect-to")
    async def redirect_to(request: web.Request) -> web.Response:
        """Any method: ?status= (default 302) to ?url=."""
        return web.Response(status=int(request.query.get("status", "302")),
                            headers={"Location": request.query["url"]})

    @routes.route("*", "/echo-request")
    async def echo_request(request: web.Request) -> web.Response:
        """What arrived: method, headers and body (text), as JSON."""
        hit("echo-request")
        body = await request.read()
        return web.json_response({"method": request.method, "headers": dict(request.headers),
                                  "body": body.decode("utf-8", "replace")})

    @routes.get("/cookie-gate")
    async def cookie_gate(request: web.Request) -> web.Response:
        """A sign-in page that sets its cookie on a redirect to itself (302 + Set-Cookie +
        Location: itself) and answers 200 once the cookie comes back."""
        hit("cookie-gate")
        if request.cookies.get("gate") == "open":
            return web.Response(text="welcome behind the gate")
        return web.Response(status=302, headers={"Location": "/cookie-gate",
                                                 "Set-Cookie": "gate=open; Path=/; HttpOnly"})

    @routes.get("/br")
    async def brotli_body(request: web.Request) -> web.Response:
        """blackbox_exporter's TestContentLength body, Brotli-encoded (shared fixture)."""
        return web.Response(body=(REAL / "blackbox" / "hello_world_x10.br").read_bytes(),
                            headers={"Content-Encoding": "br", "Content-Type": "text/plain"})

    @routes.get("/gzip-truncated")
    async def gzip_truncated(request: web.Request) -> web.Response:
        """A gzip stream cut short, inside a body whose framing is whole (Content-Length)."""
        whole = gzip.compress(b"hello world, compressed and then cut " * 50)
        return web.Response(body=whole[: len(whole) // 2],
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    @routes.get("/zstd")
    async def zstd_body(request: web.Request) -> web.Response:
        """An encoding we never asked for and cannot decode."""
        return web.Response(body=b"(\xb5/\xfd not really zstd",
                            headers={"Content-Encoding": "zstd", "Content-Type": "text/plain"})

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @routes.get("/redirect-ftp")
    async def redirect_ftp(request: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://127.0.0.1/file")

    @routes.get("/redirect-file")
    async def redirect_file(request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    @routes.get("/challenge")
    async def challenge(request: web.Request) -> web.Response:
        return web.Response(status=403, text="<html>checking</html>",
                            headers={"cf-mitigated": "challenge"}, content_type="text/html")

    @routes.get("/challenge-page")
    async def challenge_page(request: web.Request) -> web.Response:
        return web.Response(
            status=503, content_type="text/html",
            text="<html><head><title>Just a moment...</title></head>"
                 "<body><script src='/cdn-cgi/challenge-platform/h/b/orchestrate/jsch/v1'>"
                 "</script></body></html>",
        )

    sessions: dict[str, str] = {}  # token -> session cookie

    @routes.post("/login")
    async def login(request: web.Request) -> web.Response:
        """A login form API: JSON credentials in, a token in JSON and a session cookie out."""
        hit("login")
        creds = await request.json()
        if creds.get("password") != "correct horse":
            return web.json_response({"error": "bad credentials"}, status=401)
        token = f"tok-{len(sessions) + 1:04d}-{creds.get('user')}"
        sessions[token] = f"sess-{len(sessions) + 1:04d}"
        resp = web.json_response({"data": {"token": token, "expires_in": 3600}})
        resp.set_cookie("session", sessions[token])
        return resp

    @routes.get("/protected")
    async def protected(request: web.Request) -> web.Response:
        hit("protected")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in sessions or request.cookies.get("session") != sessions[token]:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"models": ["model-a"], "request_id": request.query.get("rid", "")})

    @routes.post("/logout")
    async def logout(request: web.Request) -> web.Response:
        hit("logout")
        return web.Response(status=204)

    @routes.get("/api/v2/summary.json")
    async def summary(request: web.Request) -> web.Response:
        """An Atlassian Statuspage v2 summary; mode["incident_started"] (RFC 3339) opens an
        incident on the API component, mode["statuspage"] == "html" answers a page shell."""
        if target.mode.get("statuspage") == "html":
            return web.Response(text="<!doctype html><html><body>moved</body></html>",
                                content_type="text/html")
        started = target.mode.get("incident_started")
        api_status = "major_outage" if started else "operational"
        incidents = [{
            "id": "inc1", "name": "Elevated errors on the API", "status": "investigating",
            "impact": "major", "started_at": started, "created_at": started, "resolved_at": None,
            "components": [{"id": "c-api"}],
        }] if started else []
        return web.json_response({
            "page": {"id": "p1", "name": "Acme AI", "url": "https://status.acme.example"},
            "components": [
                {"id": "c-api", "name": "API (api.acme.example)", "status": api_status, "group": False},
                {"id": "c-web", "name": "Website", "status": "operational", "group": False},
            ],
            "incidents": incidents,
            "scheduled_maintenances": [],
            "status": {"indicator": "major" if started else "none", "description": "..."},
        })

    refused_once: set[str] = set()

    @routes.post("/hook")
    async def hook(request: web.Request) -> web.Response:
        """A webhook receiver; with mode["hook"] == "fail-first" every delivery's first
        attempt gets a 503."""
        target.hook_attempts += 1
        delivery = request.headers.get("X-Aipulse-Delivery", "")
        if target.mode.get("hook") == "fail-first" and delivery not in refused_once:
            refused_once.add(delivery)
            return web.Response(status=503, text="try again")
        target.hooks.append({"delivery": delivery, **await request.json()})
        return web.Response(text="ok")

    @routes.get("/echo-headers")
    async def echo_headers(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers))

    app = web.Application()
    app.add_routes(routes)
    return app


@contextmanager
def in_thread(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
              name: str = "test-server", quiet: bool = False) -> Iterator[None]:
    """Run `start()` on a new event loop in a daemon thread and keep that loop running
    while the block runs; then `stop()`, cancel what is left and close the loop.
    `quiet`: drop the loop's own error reports (peers that vanish mid-handshake)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failed: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        if quiet:
            loop.set_exception_handler(lambda loop, context: None)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:
            failed.append(exc)
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(stop())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=main, daemon=True, name=name)
    thread.start()
    assert started.wait(10), f"{name} did not start"
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def listen(runner: web.AppRunner, ssl_context: ssl.SSLContext | None = None) -> int:
    """A listener for a set-up runner on 127.0.0.1, any free port; returns the port."""
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


@contextmanager
def serve(ssl_context: ssl.SSLContext | None = None, plain: bool = True) -> Iterator[Target]:
    """Run the target app on 127.0.0.1 (and on TLS when given a context) in a thread."""
    target = Target()
    runner = web.AppRunner(build_app(target), access_log=None, shutdown_timeout=0.1)

    async def start() -> None:
        await runner.setup()
        if plain:
            target.port = await listen(runner)
        if ssl_context is not None:
            target.tls_port = await listen(runner, ssl_context)

    with in_thread(start, runner.cleanup, "target"):
        yield target


@contextmanager
def serve_raw(reply: bytes, close: bool = True) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that reads a request head and writes `reply` verbatim
    (for answers no HTTP library would send: garbage status lines and the like)."""
    servers: list[asyncio.AbstractServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            if close:
                writer.close()

    async def start() -> None:
        servers.append(await asyncio.start_server(handle, "127.0.0.1", 0))

    async def stop() -> None:
        servers[0].close()

    with in_thread(start, stop, "raw-server"):
        yield servers[0].sockets[0].getsockname()[1]
