"""Probes: one module per kind, one signature, one runner, one result type.

    async def probe(check: CheckConfig, probe: runner.Probe) -> Verdict   # (reason, detail)

`http`, `flow` and `stream` each speak their protocol through the one HTTP/1.1 client
(monitor.probes.client); `runner.run` owns the clock, the deadline and the result.
A probe never raises and never touches metrics or storage: it returns a ProbeResult.
`Prober` holds what probes share (TLS contexts, the secrets) and dispatches by kind.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import time

import certifi

from monitor import __version__
from monitor.config import CheckConfig, TLSConfig
from monitor.probes import flow, http, runner, stream
from monitor.probes.client import DEFAULT_OPTIONS, Client, Options, parse_url
from monitor.reasons import Reason
from monitor.redact import Redactor
from monitor.result import ProbeResult

KINDS: dict[str, runner.Kind] = {"http": http.probe, "flow": flow.probe, "stream": stream.probe}

log = logging.getLogger("aipulse")

USER_AGENT = f"aipulse/{__version__} (availability monitor)"


def verified_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifies certificates against Mozilla's roots (certifi, as httpx does), or only
    against `ca_file`."""
    return ssl.create_default_context(cafile=ca_file or certifi.where())


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The context for a check's `tls:` options."""
    context = verified_context(tls.ca_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class Prober:
    """Runs probes; keeps no connection and no cookie from one probe to the next."""

    def __init__(
        self, secrets: frozenset[str] = frozenset(), ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.client = Client(ssl_context or verified_context(), USER_AGENT, secrets)
        self._redact = Redactor(secrets)

    @property
    def redact(self) -> Redactor:
        return self._redact

    @redact.setter
    def redact(self, redactor: Redactor) -> None:
        """A reload's secrets: redacted from details, and never sent to another origin."""
        self._redact = redactor
        self.client.secrets = redactor.secrets

    async def run(self, check: CheckConfig) -> ProbeResult:
        try:
            return await runner.run(KINDS[check.kind], check, self.client, self.options(check), self.redact)
        except Exception as exc:  # a bug in a probe must not stop the scheduler
            # ... nor look like the service's outage: `internal` makes it unknown.
            log.exception("probe of %s/%s failed inside aipulse", check.service, check.id)
            return ProbeResult(
                service=check.service, check=check.id, started=time.time(), duration=0.0,
                reason=Reason.PROTOCOL, detail=self.redact(f"internal error: {type(exc).__name__}"),
                internal=True,
            )

    def options(self, check: CheckConfig) -> Options:
        if check.follow_redirects and check.ip_protocol == "auto" and check.proxy_url is None \
                and check.tls is None:
            return DEFAULT_OPTIONS
        return _options(check.follow_redirects, check.ip_protocol, check.proxy_url, check.tls,
                        _stamp(check.tls))

    async def aclose(self) -> None:
        """Nothing is kept open between probes; kept for the callers' symmetry."""


def _stamp(tls: TLSConfig | None) -> tuple[float, ...]:
    """When the TLS files last changed: a renewed client certificate or CA file is
    read again by the next probe."""
    if tls is None:
        return ()
    stamps = []
    for path in (tls.ca_file, tls.cert_file, tls.key_file):
        try:
            stamps.append(os.stat(path).st_mtime if path else 0.0)
        except OSError:
            stamps.append(-1.0)
    return tuple(stamps)


@functools.lru_cache(maxsize=1024)
def _options(follow_redirects: bool, ip_protocol: str, proxy_url: str | None,
             tls: TLSConfig | None, stamp: tuple[float, ...]) -> Options:
    return Options(
        follow_redirects=follow_redirects, ip_protocol=ip_protocol,
        proxy=parse_url(proxy_url) if proxy_url else None,
        ssl_context=tls_context(tls) if tls is not None and tls.needs_context else None,
        server_name=tls.server_name if tls is not None else None,
    )



