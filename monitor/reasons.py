"""Failure reasons: the fixed vocabulary every probe result carries.

Every probe ends in exactly one reason. This module is the one place that shows
them all and where each comes from::

    ok                 every assertion held
    │
    ├── no response ───────────────────────────────────────────────────────────
    │   timeout        the probe's hard deadline passed (DNS, connect, TLS, headers or body)
    │   dns            the host name did not resolve
    │   connect        TCP connect refused, reset or unreachable
    │   tls            handshake failed or certificate invalid (expiry is still reported)
    │   protocol       not HTTP: garbage status line, reset mid-body, redirect loop,
    │                  redirect to an unsupported scheme
    │
    ├── a response we judge ───────────────────────────────────────────────────
    │   rate_limited   HTTP 429
    │   overloaded     HTTP 503, 529 (Anthropic), 498
    │   blocked        a bot wall: `cf-mitigated: challenge`, or a challenge page on 403/503
    │   http_4xx       any other 4xx that `expect.status` does not accept
    │   http_5xx       any other 5xx that `expect.status` does not accept
    │   assertion      status accepted, but a body/json/header/certificate assertion failed
    │   body_too_large the (decompressed) body exceeded `max_body_bytes`
    │
    └── streams (kind: stream) ────────────────────────────────────────────────
        stream_error     an error event or error chunk mid-stream
        stream_truncated the stream ended without its terminal marker

`reason_for_status` maps a response, `reason_for_exception` maps an exception; no
other code decides a reason.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from enum import StrEnum

import httpx


class Reason(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    BLOCKED = "blocked"
    ASSERTION = "assertion"
    BODY_TOO_LARGE = "body_too_large"
    PROTOCOL = "protocol"
    STREAM_ERROR = "stream_error"
    STREAM_TRUNCATED = "stream_truncated"


OVERLOADED_STATUSES = frozenset({503, 529, 498})

# Markers of bot-protection interstitials (Cloudflare, Akamai, Imperva, DataDome,
# PerimeterX). Checked only on 403/503 bodies, lowercased.
_CHALLENGE_MARKERS = (
    b"cf-chl-",
    b"challenge-platform",
    b"<title>just a moment...</title>",
    b"attention required! | cloudflare",
    b"_incapsula_resource",
    b"captcha-delivery.com",
    b"px-captcha",
    b"/_sec/cp_challenge",
)


def is_challenge(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """True when a response is a bot wall rather than the service's own answer."""
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return True
    if status in (403, 503, 429):
        head = body[:65536].lower()
        return any(marker in head for marker in _CHALLENGE_MARKERS)
    return False


def reason_for_status(status: int, headers: Mapping[str, str], body: bytes) -> Reason:
    """Reason for a response whose status `expect.status` did not accept."""
    if is_challenge(status, headers, body):
        return Reason.BLOCKED
    if status == 429:
        return Reason.RATE_LIMITED
    if status in OVERLOADED_STATUSES:
        return Reason.OVERLOADED
    if 400 <= status < 500:
        return Reason.HTTP_4XX
    if status >= 500:
        return Reason.HTTP_5XX
    # 1xx/2xx/3xx that the check did not accept: the service answered, but not as
    # expected.
    return Reason.ASSERTION


def exception_chain(exc: BaseException) -> list[BaseException]:
    """exc, its cause (or context), that one's cause, ..."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


# ProbeTrace.stage (monitor.probes.transport) while a TLS handshake runs.
IN_TLS_HANDSHAKE = "in TLS handshake"


def reason_for_exception(exc: BaseException, stage: str = "") -> Reason:
    """Map an exception raised while probing to the most specific reason. `stage` is
    where the probe was (ProbeTrace.stage): a peer that resets or hangs up during the
    TLS handshake (a TLS 1.0-only server does either) failed TLS, not TCP connect."""
    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, DNSError):
            return Reason.DNS
        if isinstance(e, (ssl.SSLError, ssl.CertificateError)):
            return Reason.TLS
    first = chain[0]
    if isinstance(first, (TimeoutError, httpx.TimeoutException)):
        return Reason.TIMEOUT
    if isinstance(first, BodyTooLarge):
        return Reason.BODY_TOO_LARGE
    if isinstance(first, httpx.ConnectError):
        return Reason.TLS if stage == IN_TLS_HANDSHAKE else Reason.CONNECT
    if isinstance(first, (httpx.TooManyRedirects, httpx.UnsupportedProtocol)):
        return Reason.PROTOCOL
    if isinstance(first, (httpx.RemoteProtocolError, httpx.ReadError, httpx.DecodingError)):
        return Reason.PROTOCOL
    if isinstance(first, (ConnectionError, OSError)):
        return Reason.CONNECT
    return Reason.PROTOCOL


class DNSError(OSError):
    """The host name did not resolve (raised by our resolver, see probes.transport)."""


class BodyTooLarge(Exception):
    """The decompressed body passed `max_body_bytes`."""
