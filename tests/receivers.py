"""Real local receivers for notification targets: an HTTP server (json://, ntfy://,
mmost:// Slack-style webhooks) and an SMTP server (aiosmtpd) for mailto://, both on
127.0.0.1, on the running event loop or in a thread of their own."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
import warnings
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from targets import in_thread


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    action: Any
    at: float  # time.monotonic() when it arrived

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivered(self) -> bool:
        return self.action == "ok"


@dataclass
class HttpReceiver:
    """Records every POST; answers each path's planned actions in turn, then 200.

    Actions: "ok", an int status, ("echo", status) (the status, with the request path in
    the body, as many servers' error pages do), "hang" (until `release` is set)."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    plan: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    release: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None

    def delivered(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.delivered and (path is None or r.path == path)]

    def let_go(self) -> None:
        """Release hanging requests (from any thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.release.set)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        plan = self.plan[request.path]
        action = plan.popleft() if plan else "ok"
        seen = Request(request.path, dict(request.headers), body, action, time.monotonic())
        self.requests.append(seen)
        if action == "hang":
            await self.release.wait()
            seen.action = "ok"  # answered at last
            return web.json_response({"ok": True})
        if isinstance(action, tuple) and action[0] == "echo":
            return web.Response(status=action[1], text=f"Cannot POST {request.path}")
        if isinstance(action, int):
            return web.Response(status=action, text=f"status {action}")
        return web.json_response({"ok": True})


async def _start_http() -> tuple[HttpReceiver, web.AppRunner]:
    rec = HttpReceiver(loop=asyncio.get_running_loop())
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    return rec, runner


@asynccontextmanager
async def http_receiver() -> AsyncIterator[HttpReceiver]:
    """On the running loop; `url` is host:port (the test writes the scheme)."""
    rec, runner = await _start_http()
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


@contextmanager
def http_receiver_thread() -> Iterator[HttpReceiver]:
    """In a thread of its own (for a daemon in a subprocess)."""
    box: list[tuple[HttpReceiver, web.AppRunner]] = []

    async def start() -> None:
        box.append(await _start_http())

    async def stop() -> None:
        box[0][0].release.set()
        await box[0][1].cleanup()

    with in_thread(start, stop, "http-receiver"):
        yield box[0][0]


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    login: str | None
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())

    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return str(part.get_content())


@dataclass
class SmtpReceiver:
    """An SMTP server; with `password`, AUTH (PLAIN/LOGIN, no TLS on loopback) must give it."""

    password: str | None = None
    port: int = 0
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == self.password
        self.logins.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "", ok))
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        login = self.logins[-1][0] if self.logins and self.logins[-1][1] else None
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), login, msg))
        return "250 OK"


@asynccontextmanager
async def smtp_receiver(password: str | None = None) -> AsyncIterator[SmtpReceiver]:
    rec = SmtpReceiver(password=password)
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        if password is None:
            return SMTP(rec, hostname="aipulse-test", loop=loop)
        with warnings.catch_warnings():  # "AUTH while not requiring TLS": on loopback, on purpose
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(rec, hostname="aipulse-test", loop=loop, auth_required=True,
                        auth_require_tls=False, authenticator=rec.authenticate)

    server = await loop.create_server(factory, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        server.close()
        await server.wait_closed()

