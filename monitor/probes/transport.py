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
from httpcore._backends.auto import AutoBackend

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
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if cert and "notAfter" in cert:
        return float(ssl.cert_time_to_seconds(cert["notAfter"]))
    return None


class TimedBackend(httpcore.AsyncNetworkBackend):
    """Resolve explicitly (timed), then connect to the first address that answers."""

    def __init__(self) -> None:
        self._inner = AutoBackend()

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
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
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
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            if trace is not None:
                trace.address = (address, port)
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - probes never use unix sockets
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:  # pragma: no cover
        await self._inner.sleep(seconds)


class ProbeTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that never keeps a connection."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        # Same pool httpx builds, plus our network backend; handle_async_request and
        # the httpcore -> httpx exception mapping are inherited unchanged.
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
