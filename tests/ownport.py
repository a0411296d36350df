"""Helpers for tests of our own port: raw requests on fresh connections, small local
servers for one test, bcrypt hashes and web config files."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web
from targets import in_thread, listen


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hashed(password: str, cost: int = 10) -> str:
    """A real bcrypt hash, as htpasswd writes it ($2y$)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$", 1)


def write_web_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def request(port: int, path: str = "/healthz", method: str = "GET", headers: dict[str, str] | None = None,
            tls: ssl.SSLContext | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, float]:
    """One request on a fresh connection (`Connection: close`): status, headers (lower-case
    names), body, and the seconds from connect to the last byte."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if method == "POST":
        head += "Content-Length: 0\r\n"
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls is not None else raw
    with sock:
        sock.sendall((head + "\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    elapsed = time.perf_counter() - t0
    if not data.startswith(b"HTTP/"):
        raise ConnectionError(f"no HTTP response: {data[:100]!r}")
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), fields, body, elapsed


@contextmanager
def serve_app(app: web.Application, host: str = "127.0.0.1") -> Iterator[int]:
    """Serve an aiohttp app on `host`, any free port, in a thread; yields the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    ports: list[int] = []

    async def start() -> None:
        await runner.setup()
        ports.append(await listen(runner))

    with in_thread(start, runner.cleanup, "test-app"):
        yield ports[0]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
