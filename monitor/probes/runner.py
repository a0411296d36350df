"""The one probe runner (as blackbox_exporter's prober/handler.go): it owns the clock,
the trace, the deadline and the result; a kind only speaks its protocol and returns a
verdict, `(reason, detail)`.

    async def kind(check: CheckConfig, probe: Probe) -> Verdict

A kind sends its requests through `probe` (the shared client, this probe's trace,
cookie jar and HTTP options) and may leave kind-specific result fields in
`probe.fields` (ttft, step, ...), secrets it learned in `probe.secrets`, and what its
deadline should say in `probe.on_timeout`. It raises `Failure` for what ends it early;
the runner turns that, the deadline, or the verdict into the one ProbeResult.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from monitor.config import CheckConfig
from monitor.probes import client
from monitor.probes.client import Client, Cookies, Options, Request, Response
from monitor.probes.net import ProbeTrace
from monitor.reasons import Failure, Reason
from monitor.redact import Redactor
from monitor.result import ProbeResult

Verdict = tuple[Reason, str]


class Probe:
    """One run of one check, as its kind sees it."""

    __slots__ = ("check", "client", "cookies", "degraded", "fields", "on_timeout", "options", "secrets",
                 "trace")

    def __init__(self, check: CheckConfig, shared: Client, options: Options) -> None:
        self.check = check
        self.client = shared
        self.options = options
        self.trace = ProbeTrace()
        self.cookies = Cookies()  # this probe's only: nothing carries over to the next
        self.fields: dict[str, Any] = {}  # kind-specific ProbeResult fields
        self.secrets: list[str] = []  # values learned while probing (flow extractions)
        self.degraded = False  # slower than the kind allows, but not failed
        # What the deadline says: given "timed out after 10s <stage>", the verdict.
        self.on_timeout: Callable[[str], Verdict] | None = None

    async def send(self, method: str, url: str, headers: tuple[tuple[str, str], ...],
                   body: bytes | None) -> Response:
        """The final response (redirects followed unless the check says not), body unread."""
        return await client.send(self.client, Request(method, url, headers, body), self.trace,
                                 limit=self.check.max_body_bytes, cookies=self.cookies,
                                 options=self.options)

    async def fetch(self, method: str, url: str, headers: tuple[tuple[str, str], ...],
                    body: bytes | None) -> tuple[Response, bytes]:
        """As `send`, and the whole decoded body."""
        response = await self.send(method, url, headers, body)
        return response, await response.read(self.trace)


Kind = Callable[[CheckConfig, Probe], Awaitable[Verdict]]


async def run(kind: Kind, check: CheckConfig, shared: Client, options: Options,
              redact: Redactor) -> ProbeResult:
    """Run `kind` on `check` once under its deadline. Never raises, but CancelledError
    on shutdown and errors that are aipulse's own (the caller reports those)."""
    started = time.time()
    t0 = time.perf_counter()
    probe = Probe(check, shared, options)
    try:
        async with asyncio.timeout(check.timeout) as deadline:
            reason, detail = await kind(check, probe)
    except TimeoutError:
        if not deadline.expired():
            raise  # not our deadline: a bug, not the service's doing
        said = f"timed out after {check.timeout:g}s {probe.trace.stage}"
        reason, detail = probe.on_timeout(said) if probe.on_timeout else (Reason.TIMEOUT, said)
    except Failure as failure:
        reason, detail = failure.reason, failure.detail
    duration = time.perf_counter() - t0
    if probe.secrets:
        redact = redact.with_secrets(probe.secrets)
    trace = probe.trace
    limit = check.expect.max_latency
    slow = reason is Reason.OK and (probe.degraded or (limit is not None and duration > limit))
    return ProbeResult(
        service=check.service, check=check.id, started=started, duration=duration, reason=reason,
        detail=redact(detail), status_code=trace.status, phases=trace.phases, redirects=trace.redirects,
        cert_expiry=trace.cert_expiry, degraded=slow, **probe.fields,
    )
