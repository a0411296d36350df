"""`kind: http`: one request (plus up to 10 redirects) under one hard deadline."""

from __future__ import annotations

import asyncio
import os
import time

import httpx

from monitor.config import CheckConfig
from monitor.probes.judge import judge
from monitor.probes.transport import BoundedDecoder, ProbeTrace, fetch_cert_expiry
from monitor.reasons import Reason, reason_for_exception
from monitor.redact import Redactor
from monitor.result import ProbeResult

MAX_REDIRECTS = 10


async def probe(check: CheckConfig, client: httpx.AsyncClient, redact: Redactor) -> ProbeResult:
    """Probe `check` once. Never raises (except CancelledError on shutdown)."""
    started = time.time()
    t0 = time.perf_counter()
    trace = ProbeTrace()
    token = trace.activate()
    status = 0
    redirects = 0
    try:
        async with asyncio.timeout(check.timeout):
            try:
                request = client.build_request(
                    check.method, check.url, headers=check.headers, content=check.body,
                    extensions={"trace": trace},
                )
                response = await client.send(request, stream=True)
                while response.next_request is not None:
                    await response.aclose()
                    if redirects == MAX_REDIRECTS:
                        raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
                    redirects += 1
                    response = await client.send(response.next_request, stream=True)
                status = response.status_code
                t_body = time.perf_counter()
                decoder = BoundedDecoder(
                    response.headers.get("content-encoding", ""), check.max_body_bytes
                )
                try:
                    async for chunk in response.aiter_raw():
                        decoder.feed(chunk)
                finally:
                    trace.add("transfer", time.perf_counter() - t_body)
                    await response.aclose()
            except Exception as exc:
                reason = reason_for_exception(exc)
                if reason is Reason.TLS and trace.address is not None:
                    # Report the expiry of a certificate we refused, too.
                    trace.cert_expiry = await _try_fetch_expiry(check, trace)
                raise
        duration = time.perf_counter() - t0
        reason, detail = judge(
            check.expect, status, response.headers, decoder.body(), trace.cert_expiry, time.time()
        )
    except Exception as exc:
        duration = time.perf_counter() - t0
        reason = reason_for_exception(exc)
        detail = _describe(exc, reason, check, trace)
    finally:
        trace.deactivate(token)
    degraded = (
        reason is Reason.OK
        and check.expect.max_latency is not None
        and duration > check.expect.max_latency
    )
    return ProbeResult(
        service=check.service,
        check=check.id,
        started=started,
        duration=duration,
        reason=reason,
        detail=redact(detail),
        status_code=status,
        phases=trace.phases,
        redirects=redirects,
        cert_expiry=trace.cert_expiry,
        degraded=degraded,
    )


async def _try_fetch_expiry(check: CheckConfig, trace: ProbeTrace) -> float | None:
    assert trace.address is not None
    try:
        return await fetch_cert_expiry(check.host, trace.address)
    except (OSError, ValueError):
        return None


def _describe(exc: BaseException, reason: Reason, check: CheckConfig, trace: ProbeTrace) -> str:
    if reason is Reason.TIMEOUT:
        return f"timed out after {check.timeout:g}s {trace.stage}"
    if reason is Reason.BODY_TOO_LARGE:
        return f"body larger than {check.max_body_bytes} bytes"
    if reason is Reason.CONNECT and trace.address is not None:
        errno_exc = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno), None)
        why = os.strerror(errno_exc.errno) if errno_exc and errno_exc.errno else "connection failed"
        return f"{why} ({trace.address[0]} port {trace.address[1]})"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
