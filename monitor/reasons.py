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
    │   protocol       not HTTP/1.1 as RFC 9112 frames it: garbage status line, two
    │                  Content-Lengths, reset mid-body, truncated compressed body, an
    │                  encoding we cannot decode, redirect loop or unsupported scheme,
    │                  a redirect that would carry a secret to another origin
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

`reason_for_status` maps a response; errors on the wire are mapped where they are met
(monitor.probes.net and monitor.probes.client raise `Failure(reason, detail)`), so this
module knows no HTTP library.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


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


class Failure(Exception):
    """A probe ended in `reason`: raised where the cause is known (monitor.probes.net,
    monitor.probes.client), at the edge where an OS or parser error is met, and turned
    into the result by the runner. `detail` is human text (redacted before it is kept)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
