"""Judge a response against a check's `expect` (pure: no I/O, clock passed in)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from monitor.config import Expect
from monitor.reasons import Reason, reason_for_status


def judge(
    expect: Expect,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    cert_expiry: float | None,
    now: float,
    undecodable: str = "",
) -> tuple[Reason, str]:
    """(reason, detail) for one response. `headers` must be case-insensitive;
    `undecodable` names the body's Content-Encoding when we could not decode it."""
    if not expect.accepts(status) or (
        # A challenge page is never the service's answer, even on an accepted status.
        reason_for_status(status, headers, body) is Reason.BLOCKED
    ):
        reason = reason_for_status(status, headers, body)
        if reason is Reason.BLOCKED:
            return reason, f"HTTP {status}: bot challenge page"
        return reason, f"HTTP {status} not expected"
    for name, pattern in expect.headers:
        value = headers.get(name)
        if value is None:
            return Reason.ASSERTION, f"header {name} missing"
        if not pattern.search(value):
            return Reason.ASSERTION, f"header {name} does not match /{pattern.pattern}/"
    if expect.needs_body:
        if undecodable:
            return Reason.PROTOCOL, f"body is encoded as {undecodable!r}, which aipulse cannot decode"
        text = body.decode("utf-8", errors="replace")
        for needle in expect.body_contains:
            if needle not in text:
                return Reason.ASSERTION, f"body does not contain {needle!r}"
        if expect.body_regex is not None and not expect.body_regex.search(text):
            return Reason.ASSERTION, f"body does not match /{expect.body_regex.pattern}/"
        for needle in expect.body_not_contains:
            if needle in text:
                return Reason.ASSERTION, f"body contains {needle!r}"
        if expect.body_not_regex is not None and expect.body_not_regex.search(text):
            return Reason.ASSERTION, f"body matches /{expect.body_not_regex.pattern}/"
        if expect.json:
            try:
                doc = json.loads(text)
            except ValueError:
                return Reason.ASSERTION, "body is not JSON"
            for assertion in expect.json:
                found = assertion.compiled.findall(doc)
                if not found:
                    return Reason.ASSERTION, f"JSONPath {assertion.path} matched nothing"
                if assertion.expected not in found:
                    return Reason.ASSERTION, (
                        f"JSONPath {assertion.path} is {_short(found[0])}, "
                        f"expected {_short(assertion.expected)}"
                    )
    if expect.cert_min_days is not None and cert_expiry is not None:
        days = (cert_expiry - now) / 86400
        if days < expect.cert_min_days:
            return Reason.ASSERTION, (
                f"certificate expires in {days:.1f} days (minimum {expect.cert_min_days:g})"
            )
    return Reason.OK, ""


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
