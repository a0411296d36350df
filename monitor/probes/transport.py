"""The HTTP transport under every probe: explicit DNS, phase timings, bounded bodies.

httpx/httpcore do the HTTP. This module only adds what a monitor needs on top:

* `TimedBackend` resolves the host itself (timed as `resolve`) and then connects to
  the address, so `connect` is TCP alone. The request URL is unchanged, so the Host
  header and TLS SNI keep the real name and the certificate is verified against it.
* `ProbeTrace` receives httpcore's trace events for one probe and turns them into the
  blackbox_exporter phases `resolve, connect, tls, processing, transfer`.
* `BoundedDecoder` decompresses gzip/deflate with a ceiling, so a gzip bomb costs at
  most `max_body_bytes` of memory (httpx's own decoders inflate a whole chunk at once).
* No keep-alive: every probe opens a fresh connection, so connect and TLS are
  measured every time and the certificate seen is the one served now.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
import time
import zlib
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from monitor.reasons import BodyTooLarge, DNSError

_current: contextvars.ContextVar[ProbeTrace | None] = contextvars.ContextVar(
    "aipulse_probe_trace", default=None
)


class ProbeTrace:
    """Phase clock for one probe (all hops of a redirect chain added up)."""

    __slots__ = ("_marks", "address", "cert_expiry", "phases", "redirects", "server_name", "stage",
                 "status")

    def __init__(self) -> None:
        self.phases = dict.fromkeys(("resolve", "connect", "tls", "processing", "transfer"), 0.0)
        self.stage = "starting"
        self.status = 0  # of the last response seen
        self.redirects = 0
        self.address: tuple[str, int] | None = None  # the address last connected to
        self.server_name = ""  # ... and the host name it was resolved from
        self.cert_expiry: float | None = None
        self._marks: dict[str, float] = {}

    def activate(self) -> contextvars.Token[ProbeTrace | None]:
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[ProbeTrace | None]) -> None:
        _current.reset(token)

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] += max(0.0, seconds)

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace callback: `connection.connect_tcp.started`, ..."""
        now = time.perf_counter()
        _, _, name = event.partition(".")
        step, _, edge = name.rpartition(".")
        if edge == "started":
            self._marks[step] = now
            self.stage = _STAGES.get(step, self.stage)
            return
        began = self._marks.pop(step, None)
        if began is None:
            return
        if step == "connect_tcp":
            # resolve was added by TimedBackend inside this span
            self.add("connect", now - began - self._marks.pop("resolve_span", 0.0))
        elif step == "start_tls":
            self.add("tls", now - began)
            if edge == "complete":
                self.cert_expiry = _expiry_of(info.get("return_value"))
        elif step == "send_request_headers":
            self._marks["request_sent"] = began
        elif step == "receive_response_headers":  # complete, or failed on timeout
            self.add("processing", now - self._marks.pop("request_sent", began))
            if edge == "complete":
                self.stage = "reading body"


_STAGES = {
    "connect_tcp": "connecting",
    "start_tls": "in TLS handshake",
    "send_request_headers": "sending request",
    "receive_response_headers": "waiting for response headers",
    "receive_response_body": "reading body",
}


def _expiry_of(stream: Any) -> float | None:
    return _expiry_of_ssl(stream.get_extra_info("ssl_object") if stream is not None else None)


def _expiry_of_ssl(ssl_object: Any) -> float | None:
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if cert and "notAfter" in cert:
        return float(ssl.cert_time_to_seconds(cert["notAfter"]))
    return None


class TimedBackend(httpcore.AsyncNetworkBackend):
    """Resolve explicitly (timed), then connect to the first address that answers.

    Streams are plain asyncio transports (`AsyncioStream`), not anyio's: a probe
    costs less than half the CPU this way. An IP literal is not resolved at all
    (no thread hop for getaddrinfo; `resolve` is 0, as in blackbox_exporter).
    """

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        trace = _current.get()
        began = time.perf_counter()
        if trace is not None:
            trace.stage = "resolving"
            trace.server_name = host
        loop = asyncio.get_running_loop()
        try:
            addresses = _literal(host, port)
            if addresses is None:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = [(family, sockaddr) for family, *_, sockaddr in infos]
        except socket.gaierror as exc:
            raise DNSError(f"cannot resolve {host}: {exc.strerror}") from None
        finally:
            if trace is not None:
                resolved = time.perf_counter() - began
                trace.add("resolve", resolved)
                trace._marks["resolve_span"] = resolved
        if trace is not None:
            trace.stage = "connecting"
        last: Exception | None = None
        for family, sockaddr in addresses:
            if trace is not None:
                trace.address = (str(sockaddr[0]), port)
            try:
                return await _connect(loop, family, sockaddr, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        if last is None:
            raise DNSError(f"cannot resolve {host}: no address")
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - probes never use unix sockets
        raise httpcore.UnsupportedProtocol("unix sockets are not probed")

    async def sleep(self, seconds: float) -> None:  # pragma: no cover
        await asyncio.sleep(seconds)


def _literal(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]] | None:
    """[(family, sockaddr)] when `host` is an IP address literal, else None."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
    return None


async def _connect(loop: asyncio.AbstractEventLoop, family: int, sockaddr: tuple[Any, ...],
                   timeout: float | None, local_address: str | None,
                   socket_options: Iterable[Any] | None) -> AsyncioStream:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        if local_address:
            sock.bind((local_address, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, sockaddr)
            transport, protocol = await loop.create_connection(_StreamProtocol, sock=sock)
    except TimeoutError as exc:
        sock.close()
        raise httpcore.ConnectTimeout(exc) from exc
    except OSError as exc:
        sock.close()
        raise httpcore.ConnectError(exc) from exc
    except BaseException:
        sock.close()
        raise
    return AsyncioStream(transport, protocol)  # type: ignore[arg-type]


class _StreamProtocol(asyncio.Protocol):
    """Buffers what arrives until `AsyncioStream.read` takes it."""

    __slots__ = ("_buffer", "_closed", "_drained", "_eof", "_error", "_waiter", "transport")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's network stream over a plain asyncio transport (TCP, or TLS on top)."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p._buffer:
            if p._error is not None:
                raise httpcore.ReadError(p._error) from p._error
            if p._eof:
                return b""
            p._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await p._waiter
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(exc) from exc
            finally:
                p._waiter = None
            if not p._buffer:
                if p._error is not None:
                    raise httpcore.ReadError(p._error) from p._error
                return b""
        data = bytes(p._buffer[:max_bytes])
        del p._buffer[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        p = self._protocol
        if p._closed or self._transport.is_closing():
            error = p._error or ConnectionResetError("connection closed")
            raise httpcore.WriteError(error) from error
        self._transport.write(buffer)
        if p._drained is not None:
            try:
                async with asyncio.timeout(timeout):
                    await p._drained
            except TimeoutError as exc:
                raise httpcore.WriteTimeout(exc) from exc

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname,
                    ssl_handshake_timeout=None, ssl_shutdown_timeout=5.0)
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout(exc) from exc
        except (OSError, ssl.SSLError, ConnectionError, EOFError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(exc) from exc
        except BaseException:
            self._transport.abort()
            raise
        if transport is None:  # the connection closed during the handshake
            error = ConnectionResetError("connection closed during the TLS handshake")
            raise httpcore.ConnectError(error) from error
        return AsyncioStream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            return bool(self._protocol._buffer) or self._protocol._eof
        return None


class ProbeTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that never keeps a connection."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        # Same pool httpx builds, plus our network backend; handle_async_request and
        # the httpcore -> httpx exception mapping are inherited unchanged.
        self._ssl_context = ssl_context
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=None,
            max_keepalive_connections=0,
            network_backend=TimedBackend(),
        )


def verified_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=True, trust_env=False)


def unverified_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def fetch_cert_expiry(host: str, address: tuple[str, int]) -> float | None:
    """notAfter of the certificate `address` serves for `host`, without verifying it.

    Used after a failed verification so an expired or self-signed certificate still
    reports its expiry. Runs under the caller's deadline.
    """
    from cryptography import x509

    _, writer = await asyncio.open_connection(
        address[0], address[1], ssl=_UNVERIFIED, server_hostname=host
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()
    if not der:
        return None
    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


_UNVERIFIED = unverified_context()


class BoundedDecoder:
    """Content-Encoding decoder that never produces more than `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._z: Any = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._z = zlib.decompressobj()
            self._raw_deflate_fallback = True
        else:  # identity, or an encoding we did not ask for: keep the bytes as sent
            self._z = None
        self._first = True

    def feed(self, data: bytes) -> None:
        if self._z is None:
            self._append(data)
            return
        try:
            self._inflate(data)
        except zlib.error:
            if self._first and getattr(self, "_raw_deflate_fallback", False):
                # Some servers send raw deflate without the zlib header.
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self._raw_deflate_fallback = False
                self._inflate(data)
            else:
                raise httpx.DecodingError("invalid compressed body") from None
        self._first = False

    def _inflate(self, data: bytes) -> None:
        while data:
            out = self._z.decompress(data, self.limit - self.size + 1)
            self._append(out)
            data = self._z.unconsumed_tail

    def _append(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyTooLarge(f"body larger than {self.limit} bytes")
        if data:
            self.chunks.append(data)

    def body(self) -> bytes:
        return b"".join(self.chunks)

    def drain(self) -> bytes:
        """What was decoded since the last drain (for reading a stream as it comes)."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data
