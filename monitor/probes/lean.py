"""`kind: http` on a lean HTTP/1.1 client of our own: same results, a quarter of the CPU.

httpx + httpcore + h11 + anyio spent about 0.7 ms of CPU on one probe of a local
server (thousands of Python calls: client, pool, locks, cancel scopes, the h11 state
machine); this module does the same exchange in a few dozen, on plain asyncio
transports. It is used for `kind: http` only; `flow` (cookies, extraction) and
`stream` (incremental SSE parsing) keep httpx, whose shared helpers (`failure`,
`fetch_refused_cert`, `judge`, `BoundedDecoder`) this module uses too, so reasons,
details, phases and limits are the same whichever client ran.

What it does, like the httpx path: resolve (timed; an IP literal is not resolved),
connect, TLS with SNI and verification, one request with `Connection: close`, the
response head, the body framed by Content-Length, chunked encoding or the end of the
connection, decoded (gzip/deflate) up to `max_body_bytes`, and up to 10 redirects
with httpx's rules (303, and 301/302 of a non-HEAD request, become GET; Authorization
and the check's own headers never follow to another origin; a redirect body is never
read). Errors are raised as the httpx exceptions `monitor.reasons` maps.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import httpx

from monitor.config import CheckConfig
from monitor.probes.http import MAX_REDIRECTS, failure, fetch_refused_cert, result_of
from monitor.probes.judge import judge
from monitor.probes.transport import BoundedDecoder, ProbeTrace, _expiry_of_ssl, _literal
from monitor.reasons import DNSError
from monitor.redact import Redactor
from monitor.result import ProbeResult

MAX_HEAD = 100 * 1024  # bytes of status line + headers (httpcore allows h11 as much)
MAX_INTERIM = 20  # 1xx responses before the final one (a server may send them forever)
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"


class Headers(dict[str, str]):
    """Response headers, case-insensitive (lowercase keys); repeated ones joined by ", "."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


@dataclass(slots=True)
class Target:
    """A URL taken apart for one request."""

    url: str
    scheme: str
    host: str  # for DNS, TLS SNI and certificate checks
    port: int
    authority: str  # the Host header
    target: str  # path and query

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


_targets: dict[str, Target] = {}


def parse_url(url: str, remember: bool = True) -> Target:
    """`url` taken apart; remembered (a check's own URL) unless `remember` is False
    (a redirect's Location, which a server could make different every time)."""
    cached = _targets.get(url)
    if cached is not None:
        return cached
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme}://'.")
    host = parts.hostname or ""
    if not host:
        raise httpx.UnsupportedProtocol(f"Request URL is missing a host: {url}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise httpx.UnsupportedProtocol(f"Invalid port in {url}") from exc
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    name = f"[{host}]" if ":" in host else host
    authority = name if parts.port is None or port == (443 if scheme == "https" else 80) else f"{name}:{port}"
    target = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE_QUERY)
    result = Target(url, scheme, host, port, authority, target)
    if remember and len(_targets) < 100_000:
        _targets[url] = result
    return result


class _Conn(asyncio.Protocol):
    """One connection's incoming bytes, for the coroutine reading them."""

    __slots__ = ("buffer", "eof", "error", "transport", "waiter")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> bool:
        """Wait until more bytes arrive: True, or False at the end of the stream (what
        is buffered stays for the caller). Raises httpx.ReadError when the connection
        broke instead of ending."""
        before = len(self.buffer)
        if not self.eof:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if len(self.buffer) > before:
            return True
        if self.error is not None:
            raise httpx.ReadError(str(self.error) or type(self.error).__name__) from self.error
        return False


    async def write(self, data: bytes) -> None:
        if self.transport is None or self.error is not None or self.transport.is_closing():
            error = self.error or ConnectionResetError("connection closed")
            raise httpx.WriteError(str(error)) from error
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _SockConn:
    """A plain-TCP connection read and written on the socket itself: no transport
    and protocol objects, no callbacks, fewer trips through the event loop."""

    __slots__ = ("buffer", "eof", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False

    async def more(self) -> bool:
        """As `_Conn.more`."""
        if self.eof:
            return False
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, 262144)
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        if not data:
            self.eof = True
            return False
        self.buffer += data
        # sock_recv returns without suspending when data is waiting: against a server
        # that floods, the probe would never give the loop (and its own deadline) a turn.
        await asyncio.sleep(0)
        return True

    async def write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)  # a request fits the socket buffer: done at once
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
        if sent < len(data):
            try:
                await asyncio.get_running_loop().sock_sendall(self.sock, data[sent:])
            except OSError as exc:
                raise httpx.WriteError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self.sock.close()


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self.body = b""


class LeanClient:
    """What every lean probe shares: the TLS context and the default headers."""

    def __init__(self, ssl_context: ssl.SSLContext, user_agent: str) -> None:
        self.ssl_context = ssl_context
        self.defaults = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"),
                         ("User-Agent", user_agent))

    def request_headers(self, configured: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        names = {name.lower() for name, _ in configured}
        return [*((k, v) for k, v in self.defaults if k.lower() not in names), *configured]


async def probe(check: CheckConfig, client: LeanClient, redact: Redactor) -> ProbeResult:
    """Probe `check` once (kind: http). Never raises (except CancelledError on shutdown)."""
    started = time.time()
    t0 = time.perf_counter()
    trace = ProbeTrace()
    try:
        async with asyncio.timeout(check.timeout):
            try:
                response = await fetch(client, check, trace)
            except Exception as exc:
                await fetch_refused_cert(exc, trace)
                raise
        duration = time.perf_counter() - t0
        reason, detail = judge(check.expect, response.status, response.headers, response.body,
                               trace.cert_expiry, time.time())
    except Exception as exc:
        duration = time.perf_counter() - t0
        reason, detail = failure(exc, check, trace)
    return result_of(check, trace, started, duration, reason, redact(detail))


async def fetch(client: LeanClient, check: CheckConfig, trace: ProbeTrace) -> Response:
    """The final response of `check`'s request (redirects followed), body read and decoded."""
    method, body = check.method, check.body
    headers = client.request_headers(check.headers)
    target = parse_url(check.url)
    origin = target.origin
    while True:
        conn = await _open(client, target, trace)
        try:
            response = await _exchange(conn, method, target, headers, body, trace, check.max_body_bytes)
        finally:
            conn.close()
        location = response.headers.get("location") if response.status in REDIRECTS else None
        if location is None:
            return response
        if trace.redirects == MAX_REDIRECTS:
            raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
        trace.redirects += 1
        status = response.status
        if (status == 303 and method != "HEAD") or (status == 302 and method != "HEAD") or (
                status == 301 and method == "POST"):
            method, body = "GET", None
            headers = [(k, v) for k, v in headers
                       if k.lower() not in ("content-length", "transfer-encoding", "content-type")]
        following = parse_url(urljoin(target.url, location.strip()), remember=False)
        if following.origin != target.origin and not (
                following.host == target.host and target.scheme == "http" and following.scheme == "https"
                and target.port == 80 and following.port == 443):
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        if following.origin != origin:
            # A redirect must never carry the check's headers (keys) to another origin.
            configured = {name.lower() for name, _ in check.headers}
            headers = [(k, v) for k, v in headers if k.lower() not in configured]
        target = following


async def _open(client: LeanClient, target: Target, trace: ProbeTrace) -> _Conn | _SockConn:
    """Resolve, connect and (https) handshake; phases and stage kept in `trace`."""
    loop = asyncio.get_running_loop()
    trace.stage = "resolving"
    trace.server_name = target.host
    began = time.perf_counter()
    try:
        addresses = _literal(target.host, target.port)
        if addresses is None:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            addresses = [(family, sockaddr) for family, *_, sockaddr in infos]
    except socket.gaierror as exc:
        raise DNSError(f"cannot resolve {target.host}: {exc.strerror}") from None
    finally:
        trace.add("resolve", time.perf_counter() - began)
    if not addresses:
        raise DNSError(f"cannot resolve {target.host}: no address")
    trace.stage = "connecting"
    began = time.perf_counter()
    try:
        last: OSError | None = None
        for family, sockaddr in addresses:
            trace.address = (str(sockaddr[0]), target.port)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, sockaddr)
                break
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
        else:
            assert last is not None
            raise httpx.ConnectError(str(last) or type(last).__name__) from last
    finally:
        trace.add("connect", time.perf_counter() - began)
    if target.scheme != "https":
        return _SockConn(sock)
    conn = _Conn()
    try:
        await loop.create_connection(lambda: conn, sock=sock)
    except BaseException:
        sock.close()
        raise
    trace.stage = "in TLS handshake"
    began = time.perf_counter()
    try:
        assert conn.transport is not None
        transport = await loop.start_tls(conn.transport, conn, client.ssl_context,
                                         server_hostname=target.host, ssl_handshake_timeout=None,
                                         ssl_shutdown_timeout=5.0)
    except (OSError, ssl.SSLError, ConnectionError, EOFError) as exc:
        if conn.transport is not None:
            conn.transport.abort()
        raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()
        raise
    finally:
        trace.add("tls", time.perf_counter() - began)
    if transport is None:
        error = ConnectionResetError("connection closed during the TLS handshake")
        raise httpx.ConnectError(str(error)) from error
    conn.transport = transport  # type: ignore[assignment]
    trace.cert_expiry = _expiry_of_ssl(transport.get_extra_info("ssl_object"))
    return conn


async def _exchange(conn: _Conn | _SockConn, method: str, target: Target, headers: list[tuple[str, str]],
                    body: bytes | None, trace: ProbeTrace, limit: int) -> Response:
    """Send one request; read the response head and (unless it redirects) the body."""
    trace.stage = "sending request"
    began = time.perf_counter()
    host = next((value for name, value in headers if name.lower() == "host"), target.authority)
    lines = [f"{method} {target.target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in ("host", "connection")]
    if (body is not None or method in ("POST", "PUT", "PATCH")) and not any(
            name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    await conn.write(head + body if body else head)
    trace.stage = "waiting for response headers"
    try:
        for _ in range(MAX_INTERIM + 1):
            response, rest = await _read_head(conn)
            if 100 <= response.status < 200 and response.status != 101:
                conn.buffer[:0] = rest  # an interim response: the real one follows
                continue
            break
        else:
            raise httpx.RemoteProtocolError(f"more than {MAX_INTERIM} interim (1xx) responses")
    finally:  # also on a timeout: the phase shows where the time went
        trace.add("processing", time.perf_counter() - began)
    if response.status in REDIRECTS and "location" in response.headers:
        return response  # never read a redirect's body
    trace.status = response.status  # the final response
    trace.stage = "reading body"
    began = time.perf_counter()
    try:
        response.body = await _read_body(conn, response, method, rest, limit)
    finally:
        trace.add("transfer", time.perf_counter() - began)
    return response


async def _read_head(conn: _Conn | _SockConn) -> tuple[Response, bytearray]:
    searched = 0
    while True:
        end = conn.buffer.find(b"\r\n\r\n", max(0, searched - 3))
        if end >= 0:
            break
        searched = len(conn.buffer)
        if searched > MAX_HEAD:
            raise httpx.RemoteProtocolError("Receive buffer too long")
        if not await conn.more():
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    raw = bytes(conn.buffer[:end])
    rest = conn.buffer[end + 4:]
    conn.buffer = bytearray()
    lines = raw.split(b"\r\n")
    m = _STATUS.fullmatch(lines[0])
    if m is None:
        raise httpx.RemoteProtocolError(f"illegal status line: {lines[0][:60]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise httpx.RemoteProtocolError(f"illegal header line: {line[:60]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        old = dict.get(headers, key)
        dict.__setitem__(headers, key, text if old is None else f"{old}, {text}")
    return Response(int(m.group(1)), headers), rest


async def _read_body(conn: _Conn | _SockConn, response: Response, method: str, rest: bytearray,
                     limit: int) -> bytes:
    decoder = BoundedDecoder(response.headers.get("content-encoding") or "", limit)
    conn.buffer[:0] = rest
    status = response.status
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in (response.headers.get("transfer-encoding") or "").lower():
        await _read_chunked(conn, decoder)
        return decoder.body()
    length = response.headers.get("content-length")
    if length is not None:
        try:
            remaining = int(length.split(",")[0])
        except ValueError:
            raise httpx.RemoteProtocolError(f"invalid Content-Length {length[:40]!r}") from None
        if remaining < 0:
            raise httpx.RemoteProtocolError(f"invalid Content-Length {length[:40]!r}")
        await _feed_exactly(conn, remaining, decoder)
        return decoder.body()
    while True:  # until the server closes the connection
        if conn.buffer:
            data = bytes(conn.buffer)
            conn.buffer.clear()
            decoder.feed(data)
        if not await conn.more() and not conn.buffer:
            return decoder.body()


async def _feed_exactly(conn: _Conn | _SockConn, n: int, decoder: BoundedDecoder) -> None:
    """Pass the next `n` body bytes to `decoder` (the decoder enforces the size cap)."""
    while n > 0:
        if not conn.buffer and not await conn.more():
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        take = bytes(conn.buffer[:n])
        del conn.buffer[:n]
        n -= len(take)
        decoder.feed(take)


async def _read_chunked(conn: _Conn | _SockConn, decoder: BoundedDecoder) -> None:
    async def line() -> bytes:
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > MAX_HEAD:
                raise httpx.RemoteProtocolError("chunk header too long")
            if not await conn.more():
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body")
        text = bytes(conn.buffer[:end])
        del conn.buffer[:end + 2]
        return text

    while True:
        size_text = (await line()).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise httpx.RemoteProtocolError(f"invalid chunk size {size_text[:20]!r}") from None
        if size == 0:
            trailers = 0
            while trailer := await line():  # trailers, up to the empty line
                trailers += len(trailer) + 2
                if trailers > MAX_HEAD:
                    raise httpx.RemoteProtocolError("trailers too long")
            return
        await _feed_exactly(conn, size, decoder)
        if await line():
            raise httpx.RemoteProtocolError("chunk not followed by CRLF")

