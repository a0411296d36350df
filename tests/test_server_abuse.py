"""Our own HTTP server under bad clients: size limits, slowloris, bad parameters,
unknown paths and path traversal. A real daemon, raw sockets where a polite client
library would refuse to send the request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import RunningDaemon, start_daemon, wait_for
from prometheus_client import CollectorRegistry
from targets import Target

from monitor import server
from monitor.live import LiveState
from monitor.webconfig import WebConfig


@pytest.fixture(scope="module")
def daemon(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    config = {"services": {"svc": {"title": "Service", "checks": {
        "api": {"url": target.url("/ok"), "interval": "1s", "timeout": "900ms"}}}}}
    with start_daemon(config, tmp_path_factory.mktemp("abuse"), run_args=("--web.enable-lifecycle",)) as d:
        yield d


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send `data` (from a thread, so a server that stops reading cannot block us) and
    return the response's first line and how long it took to arrive."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    t0 = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    head = b""
    try:
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    finally:
        elapsed = time.monotonic() - t0
        sock.close()
        sender.join(5)
    return head.split(b"\r\n", 1)[0], elapsed


def get_raw(port: int, target: str) -> tuple[int, str, str]:
    """GET `target` exactly as written (no normalisation): status, content type, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers.get("content-type", ""), body.decode("utf-8", "replace")


# ---------------------------------------------------------------------------- size limits

@pytest.mark.parametrize(("request_bytes", "statuses"), [
    pytest.param(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 300_000,
                 {413}, id="reload_with_a_100MB_body"),
    pytest.param(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"10000\r\n" + b"x" * 65536 + b"\r\n" + b"10000\r\n" + b"x" * 65536 + b"\r\n",
                 {413}, id="reload_with_a_chunked_body"),
    pytest.param(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
                 {400, 431}, id="1MB_header"),
    pytest.param(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
                 + b"\r\n", {400, 431}, id="5000_headers"),
    pytest.param(b"GET /api/v1/outages?service=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                 {400, 414}, id="100KB_request_line"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n",
                 {400}, id="not_http"),
])
def test_oversized_or_broken_requests_get_a_4xx_at_once(daemon: RunningDaemon, request_bytes: bytes,
                                                         statuses: set[int]) -> None:
    status_line, elapsed = exchange(daemon.port, request_bytes)
    assert int(status_line.split()[1]) in statuses, status_line
    assert elapsed < 1.0, elapsed
    assert b"config reloaded" not in daemon.log.read_bytes()  # a refused body reloads nothing
    assert daemon.get("/healthz").status_code == 200


def test_an_empty_reload_still_works(daemon: RunningDaemon) -> None:
    response = httpx.post(daemon.url("/-/reload"), timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "reloaded"})


# ---------------------------------------------------------------------------- slow clients

def test_slowloris_cannot_block_scrapes(daemon: RunningDaemon) -> None:
    """50 connections each send a header byte a second; scrapes still answer at once."""
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        times = []
        with httpx.Client(timeout=5) as client:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                for s in socks:
                    s.sendall(b"s")
                for _ in range(5):
                    t0 = time.perf_counter()
                    response = client.get(daemon.url("/metrics"))
                    times.append(time.perf_counter() - t0)
                    assert response.status_code == 200
                time.sleep(max(0.0, 1 - 5 * max(times[-5:])))
        print(f"slowloris: {len(times)} scrapes, median {sorted(times)[len(times) // 2] * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms")
        assert len(times) >= 15
        assert max(times) < 0.2, times
        # The slow clients are still waiting, unanswered: nothing was served to them.
        for s in socks:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in socks:
            s.close()


async def test_a_connection_that_never_finishes_its_request_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's keep-alive timer runs from connect: a slowloris is hung up on after
    KEEPALIVE_TIMEOUT (75 s in production; 1 s here), not after aiohttp's default hour."""
    monkeypatch.setattr(server, "KEEPALIVE_TIMEOUT", 1.0)

    async def no_reload() -> None:
        return None

    app = server.make_app(LiveState(), CollectorRegistry(), str(tmp_path / "none.db"), no_reload, WebConfig())
    runner = await server.start(app, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port(runner))
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(b"s")

        dripping = asyncio.create_task(drip())
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, never answered
        assert 0.9 <= time.monotonic() - t0 < 3.0
        dripping.cancel()
        writer.close()
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("query", [
    "since=garbage", "since=-1d", "since=" + "9" * 400 + "d", "since=nan", "since=inf", "since=%00",
    "since=2025-01-01T00:00:00",
    "until=yesterday", "since=1h&until=1d", "limit=abc", "limit=1e3", "limit=0", "limit=-5",
    "limit=99999999999999999999999", "limit=", "foo=1", "service=s&Service=t",
])
def test_bad_query_parameters_get_a_400_json_error(daemon: RunningDaemon, query: str) -> None:
    response = daemon.get(f"/api/v1/outages?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error"} and response.json()["error"]


@pytest.mark.parametrize("query", [
    "since=1" + "0" * 30 + "s", "since=0001-01-01T00:00:00Z",
    "since=9999-12-31T23:59:59Z", "check=%ff%fe", "service=%00", "limit=1&limit=abc",
])
def test_odd_but_valid_query_parameters_answer_json(daemon: RunningDaemon, query: str) -> None:
    response = daemon.get(f"/api/v1/outages?{query}")
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["outages"], list)


@pytest.mark.parametrize(("method", "path", "json_body"), [
    ("GET", "/nothing", False), ("GET", "/metrics/extra", False), ("POST", "/metrics", False),
    ("GET", "/api", True), ("GET", "/api/v2/status", True), ("GET", "/api/v1/outages/1", True),
    ("POST", "/api/v1/status", True), ("DELETE", "/api/v1/outages", True),
])
def test_unknown_paths_are_404_and_json_under_api(daemon: RunningDaemon, method: str, path: str,
                                                  json_body: bool) -> None:
    response = httpx.request(method, daemon.url(path), timeout=5)
    assert response.status_code in (404, 405), response.text
    if json_body:
        assert response.status_code == 404
        assert "error" in response.json()


TRAVERSALS = [
    "/services/../../etc/passwd", "/services/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
    "/services/%2e%2e/%2e%2e/etc/passwd", "/services/%2e%2e%5c%2e%2e%5cetc%5cpasswd",
    "//etc/passwd", "/./../../../etc/passwd", "/api/../../../etc/passwd",
    "/api/v1/..%2f..%2f..%2fetc%2fpasswd",
    "/services/....//....//etc/passwd", "/services/%252e%252e%252fetc%252fpasswd", "/..;/etc/passwd",
    "/services/..\\..\\etc\\passwd", "/etc/passwd", "/proc/self/environ", "/static/../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_traversal(daemon: RunningDaemon, path: str) -> None:
    status, content_type, body = get_raw(daemon.port, path)
    assert status in (400, 404), (status, body[:300])
    assert "root:" not in body and "PATH=" not in body and "Errno" not in body
    if path.startswith("/api/") and status == 404:
        assert content_type.startswith("application/json") and "error" in json.loads(body)


def test_an_unknown_service_page_escapes_what_it_echoes(daemon: RunningDaemon) -> None:
    response = daemon.get("/services/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert response.status_code == 404
    assert "<script>alert(1)" not in response.text


def test_the_daemon_is_still_healthy_after_all_that(daemon: RunningDaemon) -> None:
    wait_for(lambda: (daemon.value("aipulse_probe_success", service="svc", check="api") or 0) == 1)
    log = daemon.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-2000:]
