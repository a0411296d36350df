"""The HTTP probe against real local servers: every reason, phases, deadlines, limits."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import EXPIRED_NOT_AFTER, SOON_NOT_AFTER
from helpers import make_check
from targets import Target, serve_raw

from monitor.config import CheckConfig
from monitor.probes import Prober
from monitor.reasons import Reason
from monitor.result import PHASES, ProbeResult


async def run(check: CheckConfig, ssl_context: ssl.SSLContext | None = None) -> ProbeResult:
    prober = Prober(ssl_context=ssl_context)
    try:
        return await prober.run(check)
    finally:
        await prober.aclose()


async def probe_url(url: str, ssl_context: ssl.SSLContext | None = None, **keys: Any) -> ProbeResult:
    return await run(make_check(url, **keys), ssl_context)


# --- every reason a plain HTTP target can produce --------------------------------

@pytest.mark.parametrize(
    ("path", "keys", "reason", "status"),
    [
        ("/ok", {}, Reason.OK, 200),
        ("/status/404", {}, Reason.HTTP_4XX, 404),
        ("/status/401", {"expect": {"status": [200, 401]}}, Reason.OK, 401),
        ("/status/500", {}, Reason.HTTP_5XX, 500),
        ("/status/502", {}, Reason.HTTP_5XX, 502),
        ("/status/429", {}, Reason.RATE_LIMITED, 429),
        ("/status/503", {}, Reason.OVERLOADED, 503),
        ("/status/529", {}, Reason.OVERLOADED, 529),
        ("/status/498", {}, Reason.OVERLOADED, 498),
        ("/challenge", {}, Reason.BLOCKED, 403),
        ("/challenge-page", {}, Reason.BLOCKED, 503),
        # a challenge is never the service's answer, even when 403 is accepted
        ("/challenge", {"expect": {"status": ["4xx"]}}, Reason.BLOCKED, 403),
        ("/ok", {"expect": {"status": ["3xx"]}}, Reason.ASSERTION, 200),
        ("/ok", {"expect": {"body_contains": "hello"}}, Reason.OK, 200),
        ("/ok", {"expect": {"body_contains": ["hello", "absent"]}}, Reason.ASSERTION, 200),
        ("/ok", {"expect": {"body_regex": r"hello \w+ aipulse"}}, Reason.OK, 200),
        ("/ok", {"expect": {"body_regex": r"^goodbye"}}, Reason.ASSERTION, 200),
        ("/ok", {"expect": {"headers": {"X-Service": r"target-\d"}}}, Reason.OK, 200),
        ("/ok", {"expect": {"headers": {"X-Service": r"^other$"}}}, Reason.ASSERTION, 200),
        ("/ok", {"expect": {"headers": {"X-Missing": "."}}}, Reason.ASSERTION, 200),
        ("/json", {"expect": {"json": {"$.data[1].id": "model-b"}}}, Reason.OK, 200),
        ("/json", {"expect": {"json": {"$.object": "dict"}}}, Reason.ASSERTION, 200),
        ("/json", {"expect": {"json": {"$.nothing": 1}}}, Reason.ASSERTION, 200),
        ("/ok", {"expect": {"json": {"$.a": 1}}}, Reason.ASSERTION, 200),
        ("/gzip-ok", {"expect": {"body_contains": "compressed hello"}}, Reason.OK, 200),
        ("/endless", {}, Reason.BODY_TOO_LARGE, 200),
        ("/gzip-bomb", {}, Reason.BODY_TOO_LARGE, 200),
        ("/loop", {}, Reason.PROTOCOL, 0),
        ("/redirect-ftp", {}, Reason.PROTOCOL, 0),
        ("/redirect-file", {}, Reason.PROTOCOL, 0),
    ],
)
async def test_reason(target: Target, path: str, keys: dict[str, Any], reason: Reason, status: int) -> None:
    result = await probe_url(target.url(path), **keys)
    assert (result.reason, result.status_code) == (reason, status), result.detail
    assert result.success is (reason is Reason.OK)
    assert (result.detail == "") is (reason is Reason.OK)


async def test_assertion_detail_names_what_failed(target: Target) -> None:
    result = await probe_url(target.url("/json"), expect={"json": {"$.object": "dict"}})
    assert result.detail == 'JSONPath $.object is "list", expected "dict"'


async def test_connection_refused_is_connect() -> None:
    result = await probe_url("http://127.0.0.1:1/")
    assert result.reason is Reason.CONNECT
    assert result.detail == "Connection refused (127.0.0.1 port 1)"
    assert result.status_code == 0


async def test_hanging_server_times_out_within_deadline(target: Target) -> None:
    t0 = time.monotonic()
    result = await probe_url(target.url("/hang"), timeout="700ms")
    elapsed = time.monotonic() - t0
    assert result.reason is Reason.TIMEOUT
    assert 0.7 <= elapsed < 0.7 + 0.5
    assert result.detail == "timed out after 0.7s waiting for response headers"
    assert result.phases["processing"] == pytest.approx(0.7, abs=0.1)


async def test_drip_one_byte_per_second_times_out(target: Target) -> None:
    t0 = time.monotonic()
    result = await probe_url(target.url("/drip?every=1"), timeout="2s")
    elapsed = time.monotonic() - t0
    assert result.reason is Reason.TIMEOUT
    assert 2.0 <= elapsed <= 2.5
    assert result.status_code == 200  # headers came; the body never finished
    assert result.detail == "timed out after 2s reading body"
    assert result.phases["transfer"] == pytest.approx(2.0, abs=0.2)


@pytest.mark.parametrize("path", ["/endless", "/gzip-bomb"])
async def test_huge_bodies_stop_at_the_cap_with_bounded_memory(target: Target, path: str) -> None:
    tracemalloc.start()
    try:
        result = await probe_url(target.url(path), max_body_bytes="1MiB")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.reason is Reason.BODY_TOO_LARGE
    assert result.detail == "body larger than 1048576 bytes"
    # 1 GiB (or 64 MiB inflated) was on offer; we held little more than the 1 MiB cap.
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"


async def test_body_under_cap_is_fine(target: Target) -> None:
    result = await probe_url(target.url("/ok"), max_body_bytes="25B")
    assert result.reason is Reason.OK
    result = await probe_url(target.url("/ok"), max_body_bytes="24B")  # body is 25 bytes
    assert result.reason is Reason.BODY_TOO_LARGE


async def test_redirects_are_counted(target: Target) -> None:
    result = await probe_url(target.url("/redirect/3"), expect={"body_contains": "hello"})
    assert (result.reason, result.redirects, result.status_code) == (Reason.OK, 3, 200)


async def test_redirect_loop_stops_after_ten(target: Target) -> None:
    result = await probe_url(target.url("/loop"))
    assert (result.reason, result.redirects) == (Reason.PROTOCOL, 10)
    assert result.detail == "more than 10 redirects"


async def test_garbage_status_line_is_protocol() -> None:
    with serve_raw(b"SPDY/9 banana\r\n\r\n") as port:
        result = await probe_url(f"http://127.0.0.1:{port}/")
    assert result.reason is Reason.PROTOCOL


async def test_reset_before_response_is_protocol() -> None:
    with serve_raw(b"") as port:
        result = await probe_url(f"http://127.0.0.1:{port}/")
    assert result.reason is Reason.PROTOCOL
    assert result.detail == "server closed the connection without sending a response"


async def test_phases_are_present_non_negative_and_sum_to_the_total(target: Target) -> None:
    result = await probe_url(target.url("/slow?delay=0.3"))
    assert result.reason is Reason.OK
    assert set(result.phases) == set(PHASES)
    assert all(v >= 0 for v in result.phases.values())
    total = sum(result.phases.values())
    assert result.phases["processing"] >= 0.3
    assert total <= result.duration
    assert total >= 0.9 * result.duration, (total, result.duration, result.phases)


async def test_tls_phase_and_certificate_expiry(target: Target, client_ssl: ssl.SSLContext,
                                                ca: Any) -> None:
    result = await probe_url(target.url("/ok", tls=True), client_ssl)
    assert result.reason is Reason.OK, result.detail
    assert result.phases["tls"] > 0
    assert result.phases["connect"] > 0
    assert result.cert_expiry is not None and result.cert_expiry > time.time() + 86400


async def test_cert_min_days_fails_a_certificate_expiring_soon(soon_target: Target,
                                                              client_ssl: ssl.SSLContext) -> None:
    url = soon_target.url("/ok", tls=True)
    result = await probe_url(url, client_ssl, expect={"cert_min_days": 14})
    assert result.reason is Reason.ASSERTION
    assert result.detail == "certificate expires in 5.0 days (minimum 14)"
    assert result.cert_expiry == SOON_NOT_AFTER.timestamp()
    result = await probe_url(url, client_ssl, expect={"cert_min_days": 3})
    assert result.reason is Reason.OK


async def test_expired_certificate_is_tls_and_still_reports_expiry(
    expired_target: Target, client_ssl: ssl.SSLContext
) -> None:
    result = await probe_url(expired_target.url("/ok", tls=True), client_ssl)
    assert result.reason is Reason.TLS
    assert "certificate has expired" in result.detail
    assert result.cert_expiry == EXPIRED_NOT_AFTER.timestamp()


async def test_wrong_host_certificate_is_tls(wrong_host_target: Target,
                                             client_ssl: ssl.SSLContext) -> None:
    result = await probe_url(wrong_host_target.url("/ok", tls=True), client_ssl)
    assert result.reason is Reason.TLS
    assert "Hostname mismatch" in result.detail or "doesn't match" in result.detail
    assert result.cert_expiry is not None


async def test_untrusted_certificate_is_tls(target: Target) -> None:
    # The system trust store does not know the test CA.
    result = await probe_url(target.url("/ok", tls=True))
    assert result.reason is Reason.TLS
    assert result.cert_expiry is not None


async def test_plain_http_to_a_tls_port_is_protocol(target: Target) -> None:
    result = await probe_url(f"http://127.0.0.1:{target.tls_port}/ok")
    assert result.reason is Reason.PROTOCOL


async def test_request_method_headers_and_json_body_are_sent(target: Target) -> None:
    result = await probe_url(
        target.url("/echo-headers"),
        headers={"X-Probe": "yes"},
        expect={"json": {"$['X-Probe']": "yes", "$['Accept-Encoding']": "gzip, deflate, br"}},
    )
    assert result.reason is Reason.OK, result.detail


async def test_max_latency_marks_degraded_not_down(target: Target) -> None:
    result = await probe_url(target.url("/slow?delay=0.3"), expect={"max_latency": "100ms"})
    assert (result.reason, result.degraded) == (Reason.OK, True)
    result = await probe_url(target.url("/ok"), expect={"max_latency": "5s"})
    assert (result.reason, result.degraded) == (Reason.OK, False)


async def test_each_probe_opens_a_fresh_connection(target: Target) -> None:
    prober = Prober()
    check = make_check(target.url("/ok"))
    try:
        results = [await prober.run(check) for _ in range(3)]
    finally:
        await prober.aclose()
    assert all(r.phases["connect"] > 0 for r in results)


async def test_concurrent_probes_keep_their_own_phases(target: Target) -> None:
    prober = Prober()
    slow, fast = make_check(target.url("/slow?delay=0.4")), make_check(target.url("/ok"))
    try:
        r_slow, r_fast = await asyncio.gather(prober.run(slow), prober.run(fast))
    finally:
        await prober.aclose()
    assert r_slow.phases["processing"] >= 0.4
    assert r_fast.phases["processing"] < 0.2


def test_dns_failure_is_dns(tmp_path: Path) -> None:
    """Resolution fails locally: the probe runs in a mount namespace whose resolv.conf
    points at 127.0.0.1, where no DNS server listens."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "services:\n  s:\n    checks:\n      c: {url: 'http://aipulse-test.invalid/', timeout: 5s}\n")
    script = (f"mount --bind {resolv} /etc/resolv.conf && "
              f"exec {sys.executable} -m monitor.cli once --json -c {cfg}")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["reason"] == "dns"
    assert result["detail"].startswith("cannot resolve aipulse-test.invalid")
    assert result["phases"]["resolve"] > 0


@pytest.mark.parametrize(("other_origin", "kept"), [(False, True), (True, False)])
async def test_configured_headers_never_follow_a_redirect_to_another_origin(
        target: Target, other_origin: bool, kept: bool) -> None:
    # 127.0.0.1 and localhost are different origins for the same server
    echo = f"http://localhost:{target.port}/echo-headers" if other_origin else target.url("/echo-headers")
    result = await probe_url(
        target.url(f"/redirect-to?url={echo}"), headers={"X-Api-Key": "sk-test-123456"},
        expect={"json": {"$['X-Api-Key']": "sk-test-123456"}})
    assert result.redirects == 1
    assert (result.reason is Reason.OK) is kept, result.detail
    if not kept:
        assert result.detail == "JSONPath $['X-Api-Key'] matched nothing"
