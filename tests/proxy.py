"""A forward HTTP proxy for tests, on 127.0.0.1 in its own thread: absolute-form
requests for http:// targets and CONNECT tunnels for https:// ones (RFC 9110 §9.3.6),
with Basic proxy authentication when given a user. Records each request line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from targets import in_thread


@dataclass
class Proxy:
    port: int = 0
    requests: list[str] = field(default_factory=list)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextmanager
def serve_proxy(user: str | None = None, password: str = "") -> Iterator[Proxy]:
    proxy = Proxy()
    servers: list[asyncio.AbstractServer] = []
    wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: list[asyncio.StreamWriter] = []
        try:
            await relay(reader, writer, upstream)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for w in (writer, *upstream):
                w.transport.abort()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    upstream: list[asyncio.StreamWriter]) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        proxy.requests.append(f"{method} {target}")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if wanted is not None and headers.get("proxy-authorization") != wanted:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1" if host == "localhost" else host,
                                                                 int(port))
            upstream.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        else:
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            upstream.append(up_writer)
            path = url.path + (f"?{url.query}" if url.query else "")
            kept = [line for line in lines[1:] if line and not line.lower().startswith("proxy-authorization")]
            head = "\r\n".join([f"{method} {path} HTTP/1.1", *kept]) + "\r\n\r\n"
            up_writer.write(head.encode("latin-1"))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def start() -> None:
        servers.append(await asyncio.start_server(handle, "127.0.0.1", 0))
        proxy.port = servers[0].sockets[0].getsockname()[1]

    async def stop() -> None:
        servers[0].close()

    with in_thread(start, stop, "proxy", quiet=True):
        yield proxy
