"""Accepting connections on our port, at most `max_connections` at once.

aiohttp (through `loop.create_server`) accepts every connection it is offered: 1,100
idle sockets from one local user took all 1,024 descriptors of the daemon, so probes
failed with "Too many open files" (a false outage) and asyncio logged a traceback for
every refused accept. Prometheus caps its listener (`--web.max-connections`, 512);
so does this one, in the spirit of Go's netutil.LimitListener, with one change: at the
cap, a new client is let in by closing the connection that has been idle longest
(no request being handled: a keep-alive connection between scrapes, or one that
never finished its request). Idle sockets then cost an attacker their connection,
not us our port, and a scrape still gets in. Only when every connection is inside a
request does accepting wait, and the pending clients wait in the kernel's backlog,
costing no descriptor.

Each accepted socket is handed to `loop.connect_accepted_socket` with the TLS
context of that moment, so a certificate renewed on disk is served from the next
connection on (exporter-toolkit re-reads it per connection too).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("aipulse.web")

DEFAULT_MAX_CONNECTIONS = 512  # as Prometheus's --web.max-connections
HANDSHAKE_TIMEOUT = 10.0  # seconds for a TLS handshake
FDS_PER_PROBE = 2  # a probe may race IPv4 and IPv6 (RFC 8305)
FDS_SPARE = 128  # database, logs, journal, notifications, vendor pages, Python itself
_RESOURCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_budget(max_connections: int, nofile: int, max_in_flight: int) -> int:
    """How many connections our server may hold: `max_connections`, but never into
    the descriptors that `max_in_flight` probes need (and a spare); at least 8."""
    reserved = FDS_PER_PROBE * max_in_flight + FDS_SPARE
    return max(8, min(max_connections, nofile - reserved))


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard limit (as Go programs such as
    Prometheus do at start); returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


async def bind(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets for `host` (every address it resolves to; "" or 0.0.0.0 for
    all IPv4, :: for all IPv6) and `port` (0 = any free port, the same on each)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # the same port on every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:  # as asyncio words it: names the address
                raise OSError(exc.errno, f"error while attempting to bind on address {address[:2]!r}: "
                              f"{(exc.strerror or str(exc)).lower()}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Connection:
    __slots__ = ("busy", "since", "task", "transport")

    def __init__(self, since: float) -> None:
        self.since = since  # accepted, or last request finished
        self.busy = 0  # requests being handled
        self.task: asyncio.Task[None] | None = None  # connecting (TLS handshake)
        self.transport: asyncio.BaseTransport | None = None


class Listener:
    """Serves `protocol_factory` (aiohttp's runner.server) on `sockets`."""

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], sockets: list[socket.socket], *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 ssl_context: Callable[[], ssl.SSLContext | None] = lambda: None,
                 allowed_sans: Callable[[], frozenset[str] | None] = lambda: None,
                 on_accept: Callable[[], None] = lambda: None) -> None:
        self.protocol_factory = protocol_factory
        self.sockets = sockets
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.allowed_sans = allowed_sans
        self.on_accept = on_accept
        self.evicted = 0  # connections closed to make room (for tests and benchmarks)
        self._connections: dict[_Connection, None] = {}  # in accept order
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._accept(s), name="aipulse-accept")
                       for s in self.sockets]

    async def close(self) -> None:
        """Stop accepting and drop connections still in their TLS handshake; open
        connections are aiohttp's to close (runner.cleanup())."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self.sockets:
            sock.close()
        pending = [c.task for c in self._connections if c.task is not None and not c.task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    @contextlib.contextmanager
    def busy(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Mark the connection as handling a request: it is not idle, not evicted."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is None:
            yield
            return
        conn.busy += 1
        try:
            yield
        finally:
            conn.busy -= 1
            conn.since = time.monotonic()

    # -- accepting -----------------------------------------------------------------

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if len(self._connections) >= self.max_connections:
                await _readable(loop, sock)  # someone is waiting: make room, or wait for it
                if len(self._connections) >= self.max_connections and not self._evict_idlest():
                    self._room.clear()
                    await self._room.wait()
                    continue
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _RESOURCE:  # out of descriptors all the same: wait, once a line
                    log.error("cannot accept a connection on our port: %s", exc)
                    await asyncio.sleep(0.5)
                continue  # ECONNABORTED and the like: that client gave up
            self.on_accept()
            record = _Connection(time.monotonic())
            self._connections[record] = None
            record.task = loop.create_task(self._connect(conn, record))

    async def _connect(self, sock: socket.socket, record: _Connection) -> None:
        loop = asyncio.get_running_loop()
        ctx = self.ssl_context()
        try:
            await loop.connect_accepted_socket(
                lambda: _Tracked(self, record, self.protocol_factory()), sock, ssl=ctx,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if ctx is not None else None)
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # a client's failed handshake: its problem
            log.debug("connection not established: %s", exc)
            sock.close()
            self._forget(record)
        finally:
            record.task = None

    def _evict_idlest(self) -> bool:
        idle = (c for c in self._connections if not c.busy)
        victim = min(idle, key=lambda c: c.since, default=None)
        if victim is None:
            return False
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 1000 == 0:
            log.warning("%d connections open on our port (the cap, --web.max-connections): closing the "
                        "longest idle to let new ones in (%d so far)", self.max_connections, self.evicted)
        self._forget(victim)
        if victim.transport is not None:
            victim.transport.abort()
        elif victim.task is not None:
            victim.task.cancel()
        return True

    def _forget(self, record: _Connection) -> None:
        self._connections.pop(record, None)
        if record.transport is not None:
            self._by_transport.pop(record.transport, None)
        self._room.set()

    def _admit(self, record: _Connection, transport: asyncio.BaseTransport) -> bool:
        """Connection made (TLS done): check the client certificate's SANs if asked."""
        if record not in self._connections:  # evicted during the handshake
            transport.abort()
            return False
        record.transport = transport
        self._by_transport[transport] = record
        sans = self.allowed_sans()
        if sans is not None and not _san_allowed(transport.get_extra_info("peercert"), sans):
            log.warning("TLS client refused: no allowed SAN in its certificate (client_allowed_sans)")
            transport.abort()
            return False
        return True


class _Tracked(asyncio.Protocol):
    """aiohttp's protocol for one connection, as seen by the listener."""

    def __init__(self, listener: Listener, record: _Connection, inner: asyncio.Protocol) -> None:
        self.listener, self.record, self.inner = listener, record, inner
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.listener._admit(self.record, transport):
            self.made = True
            self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener._forget(self.record)
        if self.made:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.made:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.made else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _san_allowed(peercert: Any, allowed: frozenset[str]) -> bool:
    """Whether a verified client certificate names one of `allowed` in its SANs
    (DNS, IP, e-mail or URI, compared exactly, IPs in their canonical form)."""
    if not peercert:
        return False
    normal = {_canonical(a) for a in allowed}
    return any(_canonical(value) in normal for _, value in peercert.get("subjectAltName", ()))


def _canonical(value: str) -> str:
    value = value.strip()
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return value
