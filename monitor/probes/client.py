"""HTTP/1.1 for every request aipulse measures: `kind: http`, every `flow` step,
`kind: stream`, and vendor status pages. The only module that speaks HTTP on a socket.

Framing (status line, headers, Content-Length, chunked, trailers, 1xx) is parsed by
llhttp, Node's parser, through httptools: strict where RFC 9112 says a client must be
(two Content-Lengths, Content-Length with Transfer-Encoding, bad chunk sizes are
`protocol`), lenient where it lets a client be (a head with bare LF line endings).
What this module adds is what a monitor needs around it:

* one fresh connection per request (monitor.probes.net: timed DNS, Happy Eyeballs,
  TLS with SNI), `Connection: close`, an optional proxy (CONNECT for https);
* limits: the response head at most 100 KiB, at most 20 interim (1xx) responses,
  chunk framing and trailers at most 100 KiB plus a little per chunk, the body decoded
  (gzip, deflate, br) up to `max_body_bytes` (monitor.probes.decode);
* redirects (at most 10) with the rules of RFC 9110 §15.4: 303, and 301/302 of a
  POST, become GET and drop the body and its content headers; `Authorization` and the
  check's own headers never follow to another origin, and a request whose body or URL
  holds a secret does not follow a 307/308 there at all; a redirect's body is never read;
* a cookie jar per probe (the standard library's http.cookiejar, as httpx and
  requests use): what one probe is sent never reaches another;
* host names as IDNA 2008 (UTS 46), as browsers and httpx send them.

Every failure is raised as `Failure(reason, detail)`.
"""

from __future__ import annotations

import base64
import email.message
import functools
import http.cookiejar
import ssl
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

import httptools
import idna

from monitor.probes import net
from monitor.probes.decode import ACCEPT_ENCODING, BoundedDecoder
from monitor.probes.net import Conn, ProbeTrace
from monitor.reasons import Failure, Reason

MAX_HEAD = 100 * 1024  # bytes of status line and headers
MAX_INTERIM = 20  # 1xx responses before the final one (a server may send them forever)
MAX_FRAMING = 100 * 1024  # chunk-size lines and trailers, beyond 32 bytes per chunk
MAX_REDIRECTS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Dropped when a redirect turns the request into a GET (RFC 9110 §15.4).
CONTENT_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "content-language",
                             "content-location", "transfer-encoding", "digest", "content-digest"})
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY = _SAFE_PATH + "?"


# ------------------------------------------------------------------------ URLs


@dataclass(frozen=True, slots=True)
class URL:
    """An http(s) URL taken apart for one request."""

    text: str
    scheme: str
    host: str  # ASCII (IDNA 2008), lowercase, no brackets: for DNS, SNI and certificates
    port: int
    authority: str  # the Host header
    target: str  # path and query, percent-encoded
    userinfo: tuple[str, str] | None = None  # user:pass@, percent-decoded

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def ascii_text(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def parse_url(text: str) -> URL:
    """`text` taken apart; Failure(protocol) when it cannot be requested."""
    return _parse_cached(text) if len(text) < 2048 else _parse(text)


def _parse(text: str) -> URL:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise Failure(Reason.PROTOCOL, f"invalid URL {text[:100]!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Failure(Reason.PROTOCOL, f"unsupported protocol '{scheme}://' in {text[:100]!r}")
    host = ascii_host(parts.hostname or "")
    default = 443 if scheme == "https" else 80
    port = port or default
    name = f"[{host}]" if ":" in host else host
    authority = name if port == default else f"{name}:{port}"
    target = quote(parts.path or "/", safe=_SAFE_PATH)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE_QUERY)
    userinfo = None
    if parts.username is not None:
        userinfo = (unquote(parts.username), unquote(parts.password or ""))
    return URL(text, scheme, host, port, authority, target, userinfo)


_parse_cached = functools.lru_cache(maxsize=65536)(_parse)  # check URLs are parsed once


def ascii_host(host: str) -> str:
    """The host as DNS and TLS want it: IDNA 2008 with UTS 46 mapping, as browsers
    (`faß.de` is `xn--fa-hia.de`, not IDNA 2003's `fass.de`)."""
    if not host:
        raise Failure(Reason.PROTOCOL, "URL has no host")
    if host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise Failure(Reason.PROTOCOL, f"invalid host name {host!r}: {exc}") from None


# ------------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class Options:
    """How to reach a target: a check's HTTP options."""

    follow_redirects: bool = True
    ip_protocol: str = "auto"  # auto | ip4 | ip6
    proxy: URL | None = None
    ssl_context: ssl.SSLContext | None = None  # None: the client's default (verified)
    server_name: str | None = None  # TLS SNI and verification name, when not the URL's host


DEFAULT_OPTIONS = Options()


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()  # the check's own headers
    body: bytes | None = None


class Headers(dict[str, str]):
    """Response headers, case-insensitive (lowercase keys); repeated ones joined by ", "
    (Set-Cookie is also kept line by line, in `set_cookie`)."""

    __slots__ = ("set_cookie",)

    def __init__(self) -> None:
        super().__init__()
        self.set_cookie: list[str] = []

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class Cookies:
    """One probe's cookie jar: RFC 6265 domain, path, secure and expiry rules, by the
    standard library's http.cookiejar (the jar httpx and requests use). The jar is
    made when the first cookie arrives (most probes never see one)."""

    __slots__ = ("jar",)

    def __init__(self) -> None:
        self.jar: http.cookiejar.CookieJar | None = None

    def header_for(self, url: URL) -> str | None:
        if self.jar is None or not len(self.jar):
            return None
        request = urllib.request.Request(url.ascii_text)
        self.jar.add_cookie_header(request)
        return request.unredirected_hdrs.get("Cookie")

    def store(self, url: URL, set_cookie: list[str]) -> None:
        if self.jar is None:
            self.jar = http.cookiejar.CookieJar()
        request = urllib.request.Request(url.ascii_text)
        self.jar.extract_cookies(_JarResponse(set_cookie), request)  # type: ignore[arg-type]

    def get(self, name: str) -> str | None:
        if self.jar is None:
            return None
        return next((c.value for c in self.jar if c.name == name and c.value is not None), None)


class _JarResponse:
    """What CookieJar.extract_cookies reads of a response: its Set-Cookie lines."""

    def __init__(self, set_cookie: list[str]) -> None:
        self._message = email.message.Message()
        for line in set_cookie:
            self._message["Set-Cookie"] = line

    def info(self) -> email.message.Message:
        return self._message


class Client:
    """What every request shares: default TLS context, User-Agent, the secrets a
    redirect must not carry elsewhere. Keeps no connection."""

    def __init__(self, ssl_context: ssl.SSLContext, user_agent: str,
                 secrets: frozenset[str] = frozenset()) -> None:
        self.ssl_context = ssl_context
        self.user_agent = user_agent
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    async def aclose(self) -> None:
        """Nothing to close: no connection outlives its request."""

    def holds_secret(self, data: str | bytes | None) -> bool:
        if not data or not self.secrets:
            return False
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return any(s in text or quote(s, safe="") in text for s in self.secrets)


async def send(client: Client, request: Request, trace: ProbeTrace, *, limit: int,
               cookies: Cookies | None = None, options: Options = DEFAULT_OPTIONS) -> Response:
    """Send `request`, following redirects; the final response, its body unread
    (`Response.read()` or `next_chunk()`; close it). A redirect's body is never read."""
    method, body = request.method, request.body
    url = parse_url(request.url)
    configured = {name.lower() for name, _ in request.headers}
    headers = list(request.headers)
    if url.userinfo is not None and "authorization" not in configured:
        user, password = url.userinfo
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers.append(("Authorization", f"Basic {token}"))
    origin = url.origin
    while True:
        response = await _exchange(client, method, url, headers, body, trace, limit, cookies, options)
        location = response.headers.get("location") if response.status in REDIRECTS else None
        if location is None or not options.follow_redirects:
            return response
        response.close()  # never read a redirect's body
        if trace.redirects == MAX_REDIRECTS:
            raise Failure(Reason.PROTOCOL, f"more than {MAX_REDIRECTS} redirects")
        trace.redirects += 1
        status = response.status
        following = parse_url(urljoin(url.text, location.strip()))
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method, body = "GET", None
            headers = [(k, v) for k, v in headers if k.lower() not in CONTENT_HEADERS]
        if following.origin != url.origin:
            if status in (307, 308) and (client.holds_secret(body) or client.holds_secret(url.text)):
                raise Failure(Reason.PROTOCOL, (
                    f"HTTP {status} redirect to another origin ({following.scheme}://{following.authority}) "
                    "not followed: it would re-send a secret the request holds"))
            if client.holds_secret(following.text):
                raise Failure(Reason.PROTOCOL, (
                    f"HTTP {status} redirect to another origin ({following.scheme}://{following.authority}) "
                    "not followed: its URL holds a secret"))
            if not (following.host == url.host and url.scheme == "http" and following.scheme == "https"):
                headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        if following.origin != origin:
            # A redirect never carries the check's own headers (its keys) to another origin.
            headers = [(k, v) for k, v in headers if k.lower() not in configured]
        url = following


async def _exchange(client: Client, method: str, url: URL, headers: list[tuple[str, str]],
                    body: bytes | None, trace: ProbeTrace, limit: int, cookies: Cookies | None,
                    options: Options) -> Response:
    conn = await _open(client, url, options, trace)
    try:
        trace.stage = net.SENDING
        began = time.perf_counter()
        cookie = cookies.header_for(url) if cookies is not None else None
        await conn.write(_head(client, method, url, headers, body, cookie, options))
        trace.stage = net.WAITING
        message = _Message(conn)
        try:
            await message.read_head()
        finally:  # also on a timeout: the phase shows where the time went
            trace.add("processing", time.perf_counter() - began)
        response = Response(url, conn, message, method, limit)
        if response.headers.set_cookie and cookies is not None:
            cookies.store(url, response.headers.set_cookie)
    except BaseException:
        conn.close()
        raise
    if not (response.status in REDIRECTS and options.follow_redirects and "location" in response.headers):
        trace.status = response.status  # the final response
    return response


def _head(client: Client, method: str, url: URL, headers: list[tuple[str, str]], body: bytes | None,
          cookie: str | None, options: Options) -> bytes:
    names = {name.lower() for name, _ in headers}
    target = url.text if options.proxy is not None and url.scheme == "http" else url.target
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {url.authority}")
    for name, default in (("User-Agent", client.user_agent), ("Accept", "*/*"),
                          ("Accept-Encoding", ACCEPT_ENCODING)):
        if name.lower() not in names:
            lines.append(f"{name}: {default}")
    lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
    if cookie and "cookie" not in names:
        lines.append(f"Cookie: {cookie}")
    if options.proxy is not None and url.scheme == "http" and options.proxy.userinfo is not None:
        lines.append(f"Proxy-Authorization: {_basic(options.proxy.userinfo)}")
    if (body is not None or method in ("POST", "PUT", "PATCH")) and "content-length" not in names:
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return head + body if body else head


def _basic(userinfo: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{userinfo[0]}:{userinfo[1]}".encode()).decode("ascii")


async def _open(client: Client, url: URL, options: Options, trace: ProbeTrace) -> Conn:
    """A connection to `url`'s origin (through the proxy, if any), TLS done for https."""
    proxy = options.proxy
    hop = proxy or url
    sock = await net.connect(hop.host, hop.port, options.ip_protocol, trace)
    if proxy is not None and url.scheme == "https":
        began = time.perf_counter()
        try:
            await _tunnel(net.PlainConn(sock), url, proxy, trace)
        except BaseException:
            sock.close()
            raise
        finally:
            trace.add("connect", time.perf_counter() - began)
    if url.scheme != "https":
        return net.PlainConn(sock)
    context = options.ssl_context or client.ssl_context
    return await net.start_tls(sock, context, options.server_name or url.host, trace)


async def _tunnel(conn: net.PlainConn, url: URL, proxy: URL, trace: ProbeTrace) -> None:
    """CONNECT through an HTTP proxy (RFC 9110 §9.3.6); any 2xx opens the tunnel."""
    trace.stage = net.CONNECTING
    lines = [f"CONNECT {url.host}:{url.port} HTTP/1.1", f"Host: {url.host}:{url.port}"]
    if proxy.userinfo is not None:
        lines.append(f"Proxy-Authorization: {_basic(proxy.userinfo)}")
    await conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    message = _Message(conn)
    await message.read_head()
    if not 200 <= message.status < 300:
        raise Failure(Reason.CONNECT, f"proxy {proxy.authority} refused CONNECT to {url.authority}: "
                                      f"HTTP {message.status}")


# ------------------------------------------------------------------------ responses


class _Message:
    """One response as llhttp (httptools) parses it from one connection."""

    __slots__ = ("body", "body_bytes", "chunks", "complete", "conn", "eof", "error", "fed", "head_done",
                 "interim", "parser", "raw_headers", "status")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = httptools.HttpResponseParser(self)
        # RFC 9112 §2.2: a recipient MAY accept a bare LF as a line terminator (httpx,
        # Go and curl do); everything else llhttp checks strictly.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.eof = False
        self.interim = 0
        self.body: list[bytes] = []  # raw (still encoded) body pieces not yet taken
        self.body_bytes = 0
        self.chunks = 0
        self.fed = 0
        self.error: Failure | None = None  # a framing error in the body, raised once its start is read

    # llhttp callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # after the head: trailers, which we do not keep
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim += 1  # an interim response: the real one follows
            self.raw_headers = []
        else:
            self.status = status
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    def on_chunk_header(self) -> None:
        self.chunks += 1

    async def _feed_more(self) -> bool:
        """Read once and parse it: False at the end of the stream."""
        data = await self.conn.read()
        if not data:
            self.eof = True
            return False
        self.fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.head_done = self.complete = True  # 101 Switching Protocols: the head is all
        except httptools.HttpParserError as exc:
            if not self.complete:  # bytes after a whole response are not ours to judge
                failure = Failure(Reason.PROTOCOL, f"invalid HTTP response: {exc}")
                if not self.head_done:
                    raise failure from None
                self.error = failure  # the body: what came before the error is read first
        return True

    async def read_head(self) -> None:
        while not self.head_done:
            if not await self._feed_more():
                where = "without sending a response" if not self.fed else "before the end of its head"
                raise Failure(Reason.PROTOCOL, f"server closed the connection {where}")
            if self.interim > MAX_INTERIM:
                raise Failure(Reason.PROTOCOL, f"more than {MAX_INTERIM} interim (1xx) responses")
            if not self.head_done and self.fed - self.body_bytes > MAX_HEAD:
                raise Failure(Reason.PROTOCOL, f"response head larger than {MAX_HEAD // 1024} KiB")

    async def read_body(self) -> bytes | None:
        """The next raw body piece, b"" at the end of the body, None when what was read
        held framing only."""
        if self.body:
            data = b"".join(self.body) if len(self.body) > 1 else self.body[0]
            self.body.clear()
            return data
        if self.complete:
            return b""
        if self.error is not None:
            raise self.error
        if not await self._feed_more():
            if self._until_close():
                return b""
            raise Failure(Reason.PROTOCOL, "server closed the connection before the end of the body "
                                           f"({self._progress()})")
        if self.fed - self.body_bytes > MAX_HEAD + MAX_FRAMING + 32 * self.chunks:
            raise Failure(Reason.PROTOCOL, f"chunk framing or trailers larger than {MAX_FRAMING // 1024} KiB")
        return None

    def _until_close(self) -> bool:
        """True when the body is framed by the end of the connection (RFC 9112 §6.3:
        no Content-Length, and no Transfer-Encoding ending in chunked)."""
        headers = dict((k.lower(), v) for k, v in self.raw_headers)
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            return not coding.lower().rstrip().endswith(b"chunked")
        return b"content-length" not in headers

    def _progress(self) -> str:
        length = next((v for k, v in self.raw_headers if k.lower() == b"content-length"), None)
        if length is not None:
            return f"{self.body_bytes} of {int(length)} bytes"
        return f"chunked, {self.body_bytes} bytes"


class Response:
    """A response whose head has arrived; the body is read with `read` or `next_chunk`."""

    __slots__ = ("_conn", "_decoder", "_done", "_message", "headers", "status", "url")

    def __init__(self, url: URL, conn: Conn, message: _Message, method: str, limit: int) -> None:
        self.url = url
        self.status = message.status
        self.headers = headers = Headers()
        for raw_name, raw_value in message.raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip(" \t")
            old = dict.get(headers, name)
            dict.__setitem__(headers, name, value if old is None else f"{old}, {value}")
            if name == "set-cookie":
                headers.set_cookie.append(value)
        self._conn = conn
        self._message = message
        self._decoder = BoundedDecoder(headers.get("content-encoding") or "", limit)
        # No body: HEAD, 204, 304 (llhttp knows the statuses, not that we sent HEAD).
        self._done = method == "HEAD" or (message.complete and not message.body)

    @property
    def undecodable(self) -> bool:
        """The body is in an encoding we cannot decode (kept as sent)."""
        return self._decoder.undecodable

    async def next_chunk(self) -> bytes | None:
        """The next decoded piece of the body (possibly b""), or None at its end."""
        if self._done:
            return None
        raw = await self._message.read_body()
        if raw is None:
            return b""
        if not raw:
            self._done = True
            self._decoder.finish()
            return None
        self._decoder.feed(raw)
        return self._decoder.drain()

    async def read(self, trace: ProbeTrace) -> bytes:
        """The whole decoded body (phase transfer); closes the connection."""
        trace.stage = net.READING
        began = time.perf_counter()
        pieces = []
        try:
            while (piece := await self.next_chunk()) is not None:
                pieces.append(piece)
        finally:
            trace.add("transfer", time.perf_counter() - began)
            self.close()
        return b"".join(pieces)

    def close(self) -> None:
        self._conn.close()


async def get(client: Client, url: str, headers: tuple[tuple[str, str], ...], trace: ProbeTrace,
              limit: int) -> tuple[Response, bytes]:
    """GET `url` and read its body (redirects followed, a fresh cookie jar)."""
    response = await send(client, Request("GET", url, headers), trace, limit=limit, cookies=Cookies())
    return response, await response.read(trace)

