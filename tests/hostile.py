"""A hostile server for tests: what an attacked, broken or malicious service does to a client.

Raw asyncio sockets (no HTTP library would send most of these answers), on loopback
only, on its own event loop in a background thread like tests/targets.py. The plain
listener picks a behaviour by the request path; each TLS flavour has its own listener.

    /never            accept, read the request, never answer
    /drip-headers     the status line and headers one byte a second (?every=seconds)
    /reset-mid-body   headers and part of the body, then a TCP RST (SO_LINGER 0)
    /huge-header      a 1 MiB header line
    /many-headers     thousands of headers (?n=count, default 10000)
    /garbage-status   a status line that is not HTTP
    /http09           an HTTP/0.9-style reply: a body without a status line
    /endless-continue 100 Continue, forever
    /endless-trailers a chunked body that ends, then trailer lines forever
    /chunked-bomb     a chunk of 2**64 - 1 bytes, then zeros
    /endless-chunk-size  a chunk-size line that never ends (?digit=f or 0)
    /bad-content-length  Content-Length: -1
    /ok               a good answer (so a soak can mix good and hostile checks)
    /flap             500 during every other ?period= seconds of the clock, else 200

    TLS: expired, self_signed, wrong_host, tls10 (TLS 1.0 only), close_after_handshake,
    valid (a good certificate: every path above over TLS), and reset_in_handshake
    (always there: a plain socket that reads the ClientHello and resets)

What tests/targets.py already serves is not repeated here: a body dripped a byte a
second (/drip), an endless body (/endless), a gzip bomb (/gzip-bomb), a redirect loop
(/loop) and redirects to ftp: and file: (/redirect-ftp, /redirect-file).

`python tests/hostile.py` runs both servers (this one and tests/targets.py's, with all
five TLS flavours) in a process of their own and prints their ports as one JSON line,
for the load test and bench/soak.py, where a server in the test's own process would
compete with the daemon's measurements for the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme
from targets import in_thread

HUGE_HEADER = b"X-Huge: " + b"a" * (1 << 20) + b"\r\n"
TLS_FLAVOURS = ("expired", "self_signed", "wrong_host", "tls10", "close_after_handshake", "valid")
EXPIRED_NOT_AFTER = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass
class Hostile:
    port: int = 0
    tls_ports: dict[str, int] = field(default_factory=dict)
    connections: int = 0  # accepted so far, all listeners

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tls_url(self, flavour: str, path: str = "/ok") -> str:
        return f"https://localhost:{self.tls_ports[flavour]}{path}"


# ---------------------------------------------------------------------------- behaviours

Writer = asyncio.StreamWriter


async def _never(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    await asyncio.sleep(3600)


async def _drip_headers(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    every = float(query.get("every", "1"))
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"s" * 3600:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(every)


async def _reset_mid_body(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\n")
    writer.write(b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    _reset(writer)


async def _huge_header(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n" + HUGE_HEADER + b"Content-Length: 2\r\n\r\nok")
    await writer.drain()


async def _many_headers(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    n = int(query.get("n", "10000"))
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(n))
    writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")
    await writer.drain()


def _canned(reply: bytes) -> Callable[[asyncio.StreamReader, Writer, dict[str, str]], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
        writer.write(reply)
        await writer.drain()
    return handle


async def _flood(writer: Writer, data: bytes) -> None:
    """Write `data` again and again, as fast as the client reads, until it hangs up.
    (drain() returns at once while the client keeps up: sleep(0) lets the other
    connections of this server have their turn.)"""
    while not writer.is_closing():
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(0)


async def _endless_continue(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    """Interim responses, forever: the final one never comes."""
    await _flood(writer, b"HTTP/1.1 100 Continue\r\n\r\n" * 1000)


async def _endless_trailers(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    """A chunked body that ends, then trailer lines forever."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
    await _flood(writer, b"X-Trailer: v\r\n" * 5000)


async def _chunked_bomb(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    """One chunk announced as 2**64 - 1 bytes long, then zeros."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n")
    await _flood(writer, bytes(1 << 16))


async def _endless_chunk_size(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    """A chunk-size line that never ends: ?digit=f overflows any size, 0 never does."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await _flood(writer, query.get("digit", "f").encode()[:1] * (1 << 16))


async def _flap(reader: asyncio.StreamReader, writer: Writer, query: dict[str, str]) -> None:
    period = float(query.get("period", "60"))
    down = int(time.time() // period) % 2 == 1
    reply = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail" if down
             else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    writer.write(reply)
    await writer.drain()


_not_found = _canned(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

BEHAVIOURS: dict[str, Callable[[asyncio.StreamReader, Writer, dict[str, str]], Awaitable[None]]] = {
    "/never": _never,
    "/drip-headers": _drip_headers,
    "/reset-mid-body": _reset_mid_body,
    "/huge-header": _huge_header,
    "/many-headers": _many_headers,
    "/garbage-status": _canned(b"HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nok"),
    "/http09": _canned(b"<html><body>hello from 1991</body></html>\n"),
    "/endless-continue": _endless_continue,
    "/endless-trailers": _endless_trailers,
    "/chunked-bomb": _chunked_bomb,
    "/endless-chunk-size": _endless_chunk_size,
    "/bad-content-length": _canned(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok"),
    "/ok": _canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"),
    "/flap": _flap,
}


def _reset(writer: Writer) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _dispatch(reader: asyncio.StreamReader, writer: Writer) -> None:
    """Read the request head, then behave as its path says."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("ascii", "replace")
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        await BEHAVIOURS.get(parts.path, _not_found)(reader, writer, query)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, TimeoutError):
        pass
    finally:
        writer.transport.abort()


async def _reset_in_handshake(reader: asyncio.StreamReader, writer: Writer) -> None:
    """A plain listener for TLS clients: read the ClientHello, answer with a TCP RST."""
    with contextlib.suppress(OSError):
        await asyncio.wait_for(reader.read(5), 10)
    _reset(writer)


async def _close_at_once(reader: asyncio.StreamReader, writer: Writer) -> None:
    """The TLS handshake completed (asyncio does it before calling us): hang up."""
    writer.transport.abort()


# ---------------------------------------------------------------------------- TLS

def _server_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def _self_signed_ctx() -> ssl.SSLContext:
    """A certificate for localhost that signs itself (issuer == subject)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    blob = trustme.Blob(pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with blob.tempfile() as path:
        ctx.load_cert_chain(path)
    return ctx


def _tls10_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server that speaks TLS 1.0 and nothing newer (OpenSSL 3 needs security level 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def tls_contexts(ca: trustme.CA, flavours: tuple[str, ...] = TLS_FLAVOURS) -> dict[str, ssl.SSLContext]:
    """Server contexts for each TLS flavour; `ca` signs all but the self-signed one."""
    made = {
        "expired": lambda: _server_ctx(ca.issue_cert(
            "localhost", not_before=EXPIRED_NOT_AFTER - dt.timedelta(days=90), not_after=EXPIRED_NOT_AFTER)),
        "self_signed": _self_signed_ctx,
        "wrong_host": lambda: _server_ctx(ca.issue_cert("elsewhere.example")),
        "tls10": lambda: _tls10_ctx(ca.issue_cert("localhost", "127.0.0.1")),
        "close_after_handshake": lambda: _server_ctx(ca.issue_cert("localhost", "127.0.0.1")),
        "valid": lambda: _server_ctx(ca.issue_cert("localhost", "127.0.0.1")),
    }
    return {name: made[name]() for name in flavours}


# ---------------------------------------------------------------------------- serving

@contextmanager
def serve_hostile(tls: dict[str, ssl.SSLContext] | None = None) -> Iterator[Hostile]:
    """Run the hostile server on 127.0.0.1 in a thread: the plain listener, plus one
    listener per TLS flavour in `tls` (name -> server context, see tls_contexts)."""
    hostile = Hostile()
    servers: list[asyncio.AbstractServer] = []

    def counted(handler: Callable[[asyncio.StreamReader, Writer], Awaitable[None]]
                ) -> Callable[[asyncio.StreamReader, Writer], Awaitable[None]]:
        async def wrapped(reader: asyncio.StreamReader, writer: Writer) -> None:
            hostile.connections += 1
            await handler(reader, writer)
        return wrapped

    async def start() -> None:
        plain = await asyncio.start_server(counted(_dispatch), "127.0.0.1", 0, backlog=4096)
        servers.append(plain)
        hostile.port = plain.sockets[0].getsockname()[1]
        reset = await asyncio.start_server(counted(_reset_in_handshake), "127.0.0.1", 0, backlog=4096)
        servers.append(reset)
        hostile.tls_ports["reset_in_handshake"] = reset.sockets[0].getsockname()[1]
        for name, ctx in (tls or {}).items():
            handler = _close_at_once if name == "close_after_handshake" else _dispatch
            server = await asyncio.start_server(counted(handler), "127.0.0.1", 0, ssl=ctx, backlog=4096,
                                                ssl_handshake_timeout=10)
            servers.append(server)
            hostile.tls_ports[name] = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        for server in servers:
            server.close()

    # quiet: peers vanish mid-handshake, as expected
    with in_thread(start, stop, "hostile-server", quiet=True):
        yield hostile


def standalone_main() -> None:
    """Both servers in this process; print {"hostile": port, "tls": {...}, "target": port}."""
    sys.path.insert(0, str(Path(__file__).parent))
    from targets import serve

    ca = trustme.CA()
    with serve() as target, serve_hostile(tls_contexts(ca)) as hostile:
        print(json.dumps({"hostile": hostile.port, "tls": hostile.tls_ports, "target": target.port}),
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.read()  # until the parent closes our stdin (or dies)


def spawn_standalone() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start `python tests/hostile.py` and return (the process, its ports). Closing the
    process's stdin stops it."""
    proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("the hostile server did not start")
    return proc, json.loads(line)


if __name__ == "__main__":
    standalone_main()
