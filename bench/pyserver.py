"""Fallback target when nginx is not installed: answers every request 200 "ok" and closes.

    python bench/pyserver.py 127.0.0.1:8080,127.0.0.2:8080
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nok\n")


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]
            self.transport.close()


async def main(spec: str) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for item in spec.split(","):
        host, _, port = item.rpartition(":")
        servers.append(await loop.create_server(Answer, host, int(port), backlog=4096))
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop
        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1]))
