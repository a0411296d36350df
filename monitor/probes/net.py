"""The network under every probe: timed DNS, Happy Eyeballs connect, TLS with SNI.

No HTTP here (monitor.probes.client speaks HTTP/1.1 over what this module opens):

* `connect` resolves the host itself (timed as `resolve`; an IP literal is not
  resolved, as in blackbox_exporter), then connects to the addresses, racing IPv6 and
  IPv4 per RFC 8305 (aiohappyeyeballs, the library under aiohttp) when both exist, so
  an IPv6 black hole costs 250 ms instead of the whole deadline. `ip_protocol` ip4 or
  ip6 asks DNS for one family only.
* `start_tls` runs the handshake with the real host name for SNI and verification
  and notes the earliest expiry in the certificate chain. When verification fails it
  still learns the expiry of the chain it refused, over a second, unverified
  connection: an expired certificate reports when it expired.
* Every error is raised as `Failure(reason, detail)`, mapped here where it is met.

Connections are never kept: one per request, closed by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohappyeyeballs

from monitor.reasons import Failure, Reason

HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305 "Connection Attempt Delay"
# getaddrinfo blocks a thread per lookup. The event loop's default executor has
# min(32, CPUs + 4) threads (6 on 2 CPUs): when a resolver drops queries and glibc
# waits 5 s to retry, later lookups queued behind those few threads and timed out
# while "resolving" a name the resolver would have answered. Threads are cheap while
# they wait; these start only when needed.
RESOLVER_THREADS = 64
_resolver = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="aipulse-dns")
READ_SIZE = 256 * 1024
FAMILIES = {"auto": socket.AF_UNSPEC, "ip4": socket.AF_INET, "ip6": socket.AF_INET6}

# ProbeTrace.stage values: where a probe was when its deadline passed ("timed out
# after 10s waiting for response headers").
RESOLVING = "resolving"
CONNECTING = "connecting"
IN_TLS = "in TLS handshake"
SENDING = "sending request"
WAITING = "waiting for response headers"
READING = "reading body"


class ProbeTrace:
    """Phase clock of one probe (all hops of a redirect chain, all steps of a flow,
    added up) and what it saw: the final status, redirects, the address last
    connected to, the earliest certificate expiry."""

    __slots__ = ("address", "cert_expiry", "phases", "redirects", "stage", "status")

    def __init__(self) -> None:
        self.phases = dict.fromkeys(("resolve", "connect", "tls", "processing", "transfer"), 0.0)
        self.stage = "starting"
        self.status = 0  # of the last response seen
        self.redirects = 0
        self.address: tuple[str, int] | None = None
        self.cert_expiry: float | None = None

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] += max(0.0, seconds)


AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


async def connect(host: str, port: int, ip_protocol: str, trace: ProbeTrace) -> socket.socket:
    """A connected non-blocking TCP socket to `host`:`port`; phases resolve and connect."""
    loop = asyncio.get_running_loop()
    family = FAMILIES[ip_protocol]
    trace.stage = RESOLVING
    began = time.perf_counter()
    try:
        infos = _literal(host, port, family)
        if infos is None:
            try:
                infos = await loop.run_in_executor(_resolver, _getaddrinfo, host, port, family)
            except socket.gaierror as exc:
                raise Failure(Reason.DNS, f"cannot resolve {host}: {exc.strerror}") from None
            except UnicodeError:
                raise Failure(Reason.DNS, f"cannot resolve {host}: not a valid host name") from None
    finally:
        trace.add("resolve", time.perf_counter() - began)
    if not infos:
        wanted = {"ip4": " IPv4", "ip6": " IPv6"}.get(ip_protocol, "")
        raise Failure(Reason.DNS, f"cannot resolve {host}: no{wanted} address")
    trace.stage = CONNECTING
    trace.address = (str(infos[0][4][0]), port)
    began = time.perf_counter()
    try:
        if len(infos) == 1:  # the common case, without the race's tasks
            sock = _socket(infos[0])
            try:
                await loop.sock_connect(sock, infos[0][4])
            except BaseException:
                sock.close()
                raise
        else:
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1, socket_factory=_socket)
    except (OSError, RuntimeError) as exc:  # uvloop may raise RuntimeError
        addresses = ", ".join(dict.fromkeys(str(info[4][0]) for info in infos))
        raise Failure(Reason.CONNECT, f"{_why(exc)} ({addresses} port {port})") from None
    finally:
        trace.add("connect", time.perf_counter() - began)
    trace.address = (str(sock.getpeername()[0]), port)
    return sock


def _getaddrinfo(host: str, port: int, family: int) -> list[AddrInfo]:
    return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)  # type: ignore[return-value]


def _socket(info: AddrInfo) -> socket.socket:
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _literal(host: str, port: int, family: int) -> list[AddrInfo] | None:
    """[addrinfo] when `host` is an IP address literal (of the wanted family, else []),
    None when it is a name."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except OSError:
            continue
        if family not in (socket.AF_UNSPEC, fam):
            return []
        sockaddr = (host, port) if fam == socket.AF_INET else (host, port, 0, 0)
        return [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
    return None


def _why(exc: BaseException) -> str:
    """"Connection refused", not "[Errno 111] Connection refused"."""
    code = getattr(exc, "errno", None)
    if code:
        return os.strerror(code)
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ------------------------------------------------------------------ connections


class PlainConn:
    """Plain TCP read and written on the socket itself: no transport and protocol
    objects, no callbacks, fewer trips through the event loop than a transport."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def read(self) -> bytes:
        """The next bytes; b"" at the end of the stream."""
        try:
            data = await asyncio.get_running_loop().sock_recv(self.sock, READ_SIZE)
        except OSError as exc:
            raise Failure(Reason.PROTOCOL, f"connection broken: {_why(exc)}") from None
        # sock_recv returns without suspending when data is waiting: against a server
        # that floods, the probe would never give the loop (and its own deadline) a turn.
        await asyncio.sleep(0)
        return data

    async def write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)  # a request fits the socket buffer: done at once
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise Failure(Reason.PROTOCOL, f"connection broken while sending: {_why(exc)}") from None
        if sent < len(data):
            try:
                await asyncio.get_running_loop().sock_sendall(self.sock, data[sent:])
            except OSError as exc:
                raise Failure(Reason.PROTOCOL, f"connection broken while sending: {_why(exc)}") from None

    def close(self) -> None:
        self.sock.close()


class TLSConn(asyncio.Protocol):
    """A TLS connection (asyncio's SSL transport) read as `PlainConn` is."""

    __slots__ = ("_buffer", "_eof", "_error", "_waiter", "transport")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        if not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._buffer:
            data = bytes(self._buffer[:READ_SIZE])
            del self._buffer[:READ_SIZE]
            await asyncio.sleep(0)  # as PlainConn.read: a flood must not starve the loop
            return data
        if self._error is not None:
            raise Failure(Reason.PROTOCOL, f"connection broken: {_why(self._error)}")
        return b""

    async def write(self, data: bytes) -> None:
        if self.transport is None or self._error is not None or self.transport.is_closing():
            why = _why(self._error) if self._error is not None else "closed by the server"
            raise Failure(Reason.PROTOCOL, f"connection broken while sending: {why}")
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


Conn = PlainConn | TLSConn


async def start_tls(sock: socket.socket, context: ssl.SSLContext, server_name: str,
                    trace: ProbeTrace) -> TLSConn:
    """TLS over the connected `sock` (which it then owns); phase tls."""
    loop = asyncio.get_running_loop()
    conn = TLSConn()
    try:
        await loop.create_connection(lambda: conn, sock=sock)
    except BaseException:
        sock.close()
        raise
    trace.stage = IN_TLS
    began = time.perf_counter()
    try:
        # start_tls, not create_connection(ssl=...): under uvloop the latter logs every
        # refused handshake (an expired certificate is a probe result, not our error).
        assert conn.transport is not None
        transport = await loop.start_tls(conn.transport, conn, context, server_hostname=server_name,
                                         ssl_handshake_timeout=86400.0, ssl_shutdown_timeout=5.0)
        if transport is None:
            raise ConnectionAbortedError("closed during the TLS handshake")
    except BaseException as exc:
        conn.close()
        sock.close()
        if isinstance(exc, ssl.SSLCertVerificationError) and trace.address is not None:
            with contextlib.suppress(OSError, ValueError, ssl.SSLError):
                trace.cert_expiry = await refused_chain_expiry(server_name, trace.address)
        if isinstance(exc, (OSError, ssl.SSLError, EOFError)):
            raise Failure(Reason.TLS, _tls_why(exc)) from None
        raise
    finally:
        trace.add("tls", time.perf_counter() - began)
    conn.transport = transport  # type: ignore[assignment]
    trace.cert_expiry = chain_expiry(transport.get_extra_info("ssl_object"))
    return conn


def _tls_why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc).splitlines()[0][:300]
    if isinstance(exc, (EOFError, ConnectionAbortedError)) or getattr(exc, "errno", None) == errno.EPIPE:
        return "connection closed during the TLS handshake"
    return _why(exc)


def chain_expiry(ssl_object: Any, verified: bool = True) -> float | None:
    """The earliest notAfter of the chain: the verified chain (the certificates a
    client relies on) when verification ran, else the chain as presented."""
    if ssl_object is None:
        return None
    raw = getattr(ssl_object, "_sslobj", ssl_object)  # public in Python 3.13, private before
    chain = raw.get_verified_chain() if verified else []
    if not chain:
        chain = raw.get_unverified_chain() or []
    times = [ssl.cert_time_to_seconds(info["notAfter"]) for info in (c.get_info() for c in chain)
             if "notAfter" in info]
    return float(min(times)) if times else None


_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


async def refused_chain_expiry(server_name: str, address: tuple[str, int]) -> float | None:
    """The earliest notAfter of the chain `address` presents for `server_name`, read
    without verifying (after a verification failure). Runs under the caller's deadline."""
    _, writer = await asyncio.open_connection(address[0], address[1], ssl=_UNVERIFIED,
                                              server_hostname=server_name)
    try:
        return chain_expiry(writer.get_extra_info("ssl_object"), verified=False)
    finally:
        writer.transport.abort()
