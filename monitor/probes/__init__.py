"""Probes: one module per kind, one signature, one result type.

    async def probe(check: CheckConfig, client: httpx.AsyncClient, redact: Redactor) -> ProbeResult

A probe never raises and never touches metrics or storage: it returns a ProbeResult.
`Prober` owns what probes share (TLS contexts, transports) and dispatches by kind.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy

import httpx

from monitor import __version__
from monitor.config import CheckConfig
from monitor.probes import flow, http, lean, stream
from monitor.probes.transport import ProbeTransport, verified_context
from monitor.reasons import Reason
from monitor.redact import Redactor
from monitor.result import ProbeResult

ProbeFn = Callable[[CheckConfig, httpx.AsyncClient, Redactor], Awaitable[ProbeResult]]

PROBES: dict[str, ProbeFn] = {"http": http.probe, "flow": flow.probe, "stream": stream.probe}

log = logging.getLogger("aipulse")

USER_AGENT = f"aipulse/{__version__} (availability monitor)"


class _NoCookies(DefaultCookiePolicy):
    """Keeps no cookie: what one probe is sent never reaches another."""

    def set_ok(self, cookie: Cookie, request: object) -> bool:
        return False


class Prober:
    """Runs probes over one shared transport (never keeping a connection).

    `http` and `stream` probes share one client that stores no cookie (building a
    client per probe cost about a fifth of a probe's CPU); a `flow` probe gets its
    own client, so cookies carry across its steps and no further.
    """

    def __init__(
        self, secrets: frozenset[str] = frozenset(), ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.redact = Redactor(secrets)
        self._transport = ProbeTransport(ssl_context or verified_context())
        self._shared = self._client(cookies=httpx.Cookies(CookieJar(_NoCookies())))
        self._lean = lean.LeanClient(self._transport._ssl_context, USER_AGENT)

    def _client(self, cookies: httpx.Cookies | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self._transport,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
            cookies=cookies,
            timeout=None,  # the probe's own deadline covers everything
            trust_env=False,
        )

    async def run(self, check: CheckConfig) -> ProbeResult:
        try:
            if check.kind == "http":
                return await lean.probe(check, self._lean, self.redact)
            client = self._client() if check.kind == "flow" else self._shared
            return await PROBES[check.kind](check, client, self.redact)
        except Exception as exc:  # a bug in a probe must not stop the scheduler
            # ... nor look like the service's outage: `internal` makes it unknown.
            log.exception("probe of %s/%s failed inside aipulse", check.service, check.id)
            return ProbeResult(
                service=check.service, check=check.id, started=time.time(), duration=0.0,
                reason=Reason.PROTOCOL, detail=self.redact(f"internal error: {type(exc).__name__}"),
                internal=True,
            )

    async def aclose(self) -> None:
        await self._transport.aclose()
