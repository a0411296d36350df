"""`kind: http`: one request (plus up to 10 redirects) under one hard deadline.

`send`, `read_body` and `failure` are the request machinery the flow and stream
probes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import httpx

from monitor.config import CheckConfig
from monitor.probes.judge import judge
from monitor.probes.transport import BoundedDecoder, ProbeTrace, fetch_cert_expiry
from monitor.reasons import Reason, exception_chain, reason_for_exception
from monitor.redact import Redactor
from monitor.result import ProbeResult

MAX_REDIRECTS = 10


async def probe(check: CheckConfig, client: httpx.AsyncClient, redact: Redactor) -> ProbeResult:
    """Probe `check` once. Never raises (except CancelledError on shutdown)."""
    started = time.time()
    t0 = time.perf_counter()
    trace = ProbeTrace()
    token = trace.activate()
    try:
        async with asyncio.timeout(check.timeout):
            try:
                response = await send(client, check.method, check.url, check.headers, check.body, trace)
                body = await read_body(response, check.max_body_bytes, trace)
            except Exception as exc:
                await fetch_refused_cert(exc, trace)
                raise
        duration = time.perf_counter() - t0
        reason, detail = judge(
            check.expect, response.status_code, response.headers, body, trace.cert_expiry, time.time()
        )
    except Exception as exc:
        duration = time.perf_counter() - t0
        reason, detail = failure(exc, check, trace)
    finally:
        trace.deactivate(token)
    return result_of(check, trace, started, duration, reason, redact(detail))


async def send(client: httpx.AsyncClient, method: str, url: str, headers: tuple[tuple[str, str], ...],
               body: bytes | None, trace: ProbeTrace) -> httpx.Response:
    """Send a request, following up to 10 redirects; returns the final response with
    its body unread. Intermediate bodies are never read (a redirect cannot make us
    download anything)."""
    request = client.build_request(method, url, headers=headers, content=body,
                                   extensions={"trace": trace})
    origin = _origin(request.url)
    response = await client.send(request, stream=True)
    while (following := response.next_request) is not None:
        await response.aclose()
        if trace.redirects == MAX_REDIRECTS:
            raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
        trace.redirects += 1
        if _origin(following.url) != origin:
            # httpx drops Authorization on a cross-origin redirect; x-api-key and the
            # like are ours to drop: a redirect must never carry a key elsewhere.
            for name, _ in headers:
                following.headers.pop(name, None)
        response = await client.send(following, stream=True)
    trace.status = response.status_code
    return response


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


async def read_body(response: httpx.Response, limit: int, trace: ProbeTrace) -> bytes:
    """The decompressed body, at most `limit` bytes (else BodyTooLarge); closes the response."""
    t_body = time.perf_counter()
    decoder = BoundedDecoder(response.headers.get("content-encoding", ""), limit)
    try:
        async for chunk in response.aiter_raw():
            decoder.feed(chunk)
    finally:
        trace.add("transfer", time.perf_counter() - t_body)
        await response.aclose()
    return decoder.body()


async def fetch_refused_cert(exc: Exception, trace: ProbeTrace) -> None:
    """After a TLS failure, still learn the expiry of the certificate we refused (of
    the host we were talking to, which after a redirect may not be the check's)."""
    if reason_for_exception(exc, trace.stage) is Reason.TLS and trace.address is not None:
        with contextlib.suppress(OSError, ValueError):
            trace.cert_expiry = await fetch_cert_expiry(trace.server_name, trace.address)


def result_of(check: CheckConfig, trace: ProbeTrace, started: float, duration: float, reason: Reason,
              detail: str, **extra: object) -> ProbeResult:
    """The result of one probe of any kind: the verdict, and what its trace saw. `detail`
    comes redacted; `extra` holds kind-specific fields (ttft, step, steps)."""
    return ProbeResult(
        service=check.service, check=check.id, started=started, duration=duration, reason=reason,
        detail=detail, status_code=trace.status, phases=trace.phases, redirects=trace.redirects,
        cert_expiry=trace.cert_expiry, degraded=is_slow(reason, duration, check),
        **extra,  # type: ignore[arg-type]
    )


def is_slow(reason: Reason, duration: float, check: CheckConfig) -> bool:
    limit = check.expect.max_latency
    return reason is Reason.OK and limit is not None and duration > limit


def failure(exc: BaseException, check: CheckConfig, trace: ProbeTrace) -> tuple[Reason, str]:
    """(reason, detail) for an exception raised while probing."""
    reason = reason_for_exception(exc, trace.stage)
    if reason is Reason.TIMEOUT:
        return reason, f"timed out after {check.timeout:g}s {trace.stage}"
    if reason is Reason.BODY_TOO_LARGE:
        return reason, f"body larger than {check.max_body_bytes} bytes"
    if reason is Reason.CONNECT and trace.address is not None:
        errno_exc = next((e for e in exception_chain(exc) if isinstance(e, OSError) and e.errno), None)
        why = os.strerror(errno_exc.errno) if errno_exc and errno_exc.errno else "connection failed"
        return reason, f"{why} ({trace.address[0]} port {trace.address[1]})"
    # httpx wraps the cause in a bare ReadError/ConnectError: say what really happened
    # ("[Errno 104] Connection reset by peer", "[SSL: ...] ..."), not the wrapper's name.
    chain = exception_chain(exc)
    text = next((str(e) for e in chain if str(e)), f"{type(chain[-1]).__name__} {trace.stage}")
    return reason, text.splitlines()[0][:300]
