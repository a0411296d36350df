"""The one probe engine against the HTTP standards and blackbox_exporter's cases
(prober/http_test.go: TestCookieJar, TestContentLength, TestRedirectFollowed /
NotFollowed, TestPost, TestBasicAuth, TestFailIfBody(Not)MatchesRegexp,
TestTCPConnectionWithTLSAndVerifiedCertificateChain, ...), over every kind that sends
a plain request: what one kind does, the others do."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gc
import json
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import make_check, make_config, one_request_check
from targets import REAL, Target, serve, serve_raw

from monitor.config import CheckConfig
from monitor.probes import Prober
from monitor.probes.client import parse_url
from monitor.reasons import Reason
from monitor.result import ProbeResult

KINDS = ["http", "flow"]


async def run(check: CheckConfig, ssl_context: ssl.SSLContext | None = None,
              secrets: frozenset[str] = frozenset()) -> ProbeResult:
    prober = Prober(secrets, ssl_context=ssl_context)
    try:
        return await prober.run(check)
    finally:
        await prober.aclose()


def said(result: ProbeResult) -> str:
    return result.detail.removeprefix("step one: ")


# --- cookies -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cookie_set_on_a_redirect_comes_back_and_the_sign_in_page_answers(
        target: Target, kind: str) -> None:
    """302 + Set-Cookie + Location: itself, 200 once the cookie comes back: was a
    permanent `more than 10 redirects` for kind http (a false outage of a login page)."""
    check = one_request_check(kind, target.url("/cookie-gate"), expect={"body_contains": "welcome"})
    prober = Prober()
    first = await prober.run(check)
    second = await prober.run(check)  # a fresh jar: the gate sets its cookie again
    assert (first.reason, first.redirects, first.status_code) == (Reason.OK, 1, 200), first.detail
    assert (second.reason, second.redirects) == (Reason.OK, 1), second.detail


async def test_cookies_never_reach_another_probe_or_another_host(target: Target) -> None:
    """A cookie the gate set for 127.0.0.1 is not sent to localhost (another host)."""
    echo = f"http://localhost:{target.port}/echo-request"
    check = make_config({"c": {"kind": "flow", "steps": [
        {"name": "gate", "url": target.url("/cookie-gate")},
        {"name": "same", "url": target.url("/echo-request"), "expect": {"body_contains": "gate=open"}},
        {"name": "other", "url": echo, "expect": {"body_not_contains": "gate=open"}},
    ]}}).checks[0]
    result = await run(check)
    assert result.reason is Reason.OK, result.detail


# --- framing (RFC 9112) ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_two_different_content_lengths_are_protocol(kind: str) -> None:
    """RFC 9112 §6.3: a response with differing Content-Length values is invalid
    framing; the first one used to win."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nokok"
    with serve_raw(reply) as port:
        result = await run(one_request_check(kind, f"http://127.0.0.1:{port}/"))
    assert result.reason is Reason.PROTOCOL
    assert said(result) == "invalid HTTP response: Duplicate Content-Length"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_head_with_bare_lf_line_endings_is_accepted(kind: str) -> None:
    """RFC 9112 §2.2 lets a client accept a bare LF (httpx, Go and curl do); it was
    `protocol`."""
    reply = b"HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 11\n\nhello there"
    with serve_raw(reply) as port:
        result = await run(one_request_check(kind, f"http://127.0.0.1:{port}/",
                                             expect={"body_contains": "hello there"}))
    assert (result.reason, result.status_code) == (Reason.OK, 200), result.detail


async def test_bytes_after_a_whole_response_are_not_judged() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE AFTER THE BODY"
    with serve_raw(reply) as port:
        result = await run(make_check(f"http://127.0.0.1:{port}/", expect={"body_regex": "^ok$"}))
    assert result.reason is Reason.OK, result.detail


async def test_a_body_cut_short_of_its_content_length_is_protocol() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
    with serve_raw(reply) as port:
        result = await run(make_check(f"http://127.0.0.1:{port}/"))
    assert result.reason is Reason.PROTOCOL
    assert result.detail == "server closed the connection before the end of the body (4 of 10 bytes)"


# --- host names --------------------------------------------------------------------


def test_host_names_are_idna_2008_as_browsers_send_them() -> None:
    """`faß.de` is xn--fa-hia.de (IDNA 2008, UTS 46); the lean client sent IDNA 2003's fass.de."""
    url = parse_url("https://faß.de/")
    assert (url.host, url.authority) == ("xn--fa-hia.de", "xn--fa-hia.de")
    assert parse_url("http://Bücher.Example:8080/a b").authority == "xn--bcher-kva.example:8080"
    assert parse_url("http://Bücher.Example:8080/a b").target == "/a%20b"


# --- redirects (RFC 9110 §15.4) ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "method", "body_kept"), [
    (301, "GET", False), (302, "GET", False), (303, "GET", False), (307, "POST", True), (308, "POST", True)])
async def test_redirect_method_and_content_headers(target: Target, kind: str, status: int, method: str,
                                                   body_kept: bool) -> None:
    """A POST redirected by 301/302/303 becomes a GET without its body and without the
    body's headers (Content-Type included: httpx kept it); 307/308 keep both."""
    url = target.url(f"/redirect-to?status={status}&url=/echo-request")
    expect: dict[str, Any] = {"json": {"$.method": method}}
    if body_kept:
        expect["json"]["$.body"] = '{"q": 1}'
        expect["json"]["$.headers['Content-Type']"] = "application/json"
    else:
        expect["body_not_contains"] = ["Content-Type", "q\\\": 1"]
    result = await run(one_request_check(kind, url, method="POST", json={"q": 1}, expect=expect))
    assert (result.reason, result.redirects) == (Reason.OK, 1), result.detail


@pytest.mark.parametrize("kind", KINDS)
async def test_follow_redirects_false_judges_the_redirect_itself(target: Target, kind: str) -> None:
    url = target.url("/redirect/1")
    result = await run(one_request_check(kind, url, follow_redirects=False))
    assert (result.reason, result.status_code, result.redirects) == (Reason.ASSERTION, 302, 0)
    assert said(result) == "HTTP 302 not expected"
    result = await run(one_request_check(kind, url, follow_redirects=False,
                                         expect={"status": [302], "headers": {"Location": "^/ok$"}}))
    assert result.reason is Reason.OK, result.detail


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [307, 308])
async def test_a_secret_in_the_body_never_follows_a_307_to_another_origin(
        target: Target, kind: str, status: int) -> None:
    """The README's own login example puts a password in the body: a 307/308 to
    another origin must not re-send it (both HTTP clients did)."""
    password = "correct-horse-battery-staple"
    elsewhere = f"http://localhost:{target.port}/echo-request"
    before = target.hits.get("echo-request", 0)
    check = one_request_check(kind, target.url(f"/redirect-to?status={status}&url={elsewhere}"),
                              method="POST", json={"user": "u", "password": password})
    result = await run(check, secrets=frozenset({password}))
    assert result.reason is Reason.PROTOCOL
    assert said(result) == (f"HTTP {status} redirect to another origin (http://localhost:{target.port}) "
                            "not followed: it would re-send a secret the request holds")
    assert target.hits.get("echo-request", 0) == before  # nothing was sent there
    # The same origin may have it back (a load balancer's 307 to itself).
    same = one_request_check(kind, target.url(f"/redirect-to?status={status}&url=/echo-request"),
                             method="POST", json={"password": password},
                             expect={"body_contains": password})
    assert (await run(same, secrets=frozenset({password}))).reason is Reason.OK


@pytest.mark.parametrize("kind", KINDS)
async def test_user_and_password_in_the_url_are_sent_as_basic_auth_and_redacted(
        target: Target, kind: str) -> None:
    token = base64.b64encode(b"probe:s3cret-pass").decode()
    url = target.url("/echo-request").replace("http://", "http://probe:s3cret-pass@")
    ok = one_request_check(kind, url, expect={"json": {"$.headers.Authorization": f"Basic {token}"}})
    assert (await run(ok)).reason is Reason.OK
    cfg = make_config({"c": {"url": url, "expect": {"json": {"$.headers.Authorization": "x"}}}})
    assert {"s3cret-pass", token} <= cfg.secrets
    result = await run(cfg.checks[0], secrets=cfg.secrets)
    assert result.reason is Reason.ASSERTION
    assert "s3cret" not in result.detail and token not in result.detail, result.detail


# --- bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("path", "expect", "reason", "detail"), [
    # blackbox_exporter's TestHandlingOfCompressionSetting body, as Brotli (shared fixture)
    ("/br", {"body_contains": "hello worldhello world"}, Reason.OK, ""),
    ("/gzip-truncated", {}, Reason.PROTOCOL, "gzip body cut short (its stream did not end)"),
    ("/zstd", {"body_contains": "x"}, Reason.PROTOCOL,
     "body is encoded as 'zstd', which aipulse cannot decode"),
    ("/zstd", {}, Reason.OK, ""),  # nothing reads the body: nothing to decode
    ("/ok", {"body_not_contains": "maintenance"}, Reason.OK, ""),
    ("/ok", {"body_not_contains": ["maint", "aipulse"]}, Reason.ASSERTION, "body contains 'aipulse'"),
    ("/ok", {"body_not_regex": "hello .* target"}, Reason.ASSERTION, "body matches /hello .* target/"),
    ("/ok", {"body_not_regex": "^goodbye"}, Reason.OK, ""),
])
async def test_bodies(target: Target, kind: str, path: str, expect: dict[str, Any], reason: Reason,
                      detail: str) -> None:
    result = await run(one_request_check(kind, target.url(path), expect=expect))
    assert (result.reason, said(result)) == (reason, detail)


def test_the_brotli_fixture_is_what_sources_md_says() -> None:
    assert (REAL / "blackbox" / "hello_world_x10.br").stat().st_size == 24


# --- TLS: the certificate chain and the tls: options ------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, not_after: dt.datetime, ca: bool,
          san: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@pytest.fixture(scope="module")
def short_intermediate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Path, float]]:
    """blackbox_exporter's TestTCPConnectionWithTLSAndVerifiedCertificateChain: a root
    (10 years), an intermediate that expires in 3 days, a leaf for 60 days."""
    now = dt.datetime.now(dt.UTC)
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("aipulse test root", root_key, "aipulse test root", root_key, now + dt.timedelta(days=3650),
                 True)
    mid_after = (now + dt.timedelta(days=3)).replace(microsecond=0)
    mid = _cert("aipulse test intermediate", mid_key, "aipulse test root", root_key, mid_after, True)
    leaf = _cert("localhost", leaf_key, "aipulse test intermediate", mid_key, now + dt.timedelta(days=60),
                 False, san="localhost")
    folder = tmp_path_factory.mktemp("chain")
    (folder / "chain.pem").write_bytes(_pem(leaf, mid))
    (folder / "key.pem").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "root.pem").write_bytes(_pem(root))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "chain.pem", folder / "key.pem")
    with serve(server, plain=False) as target:
        yield target, folder / "root.pem", mid_after.timestamp()


async def test_the_earliest_expiry_in_the_chain_drives_cert_min_days(
        short_intermediate: tuple[Target, Path, float]) -> None:
    target, root, mid_expiry = short_intermediate
    url = target.url("/ok", tls=True)
    result = await run(make_check(url, tls={"ca_file": str(root)}))
    assert result.reason is Reason.OK, result.detail
    assert result.cert_expiry == mid_expiry  # the intermediate's, not the leaf's 60 days
    result = await run(make_check(url, tls={"ca_file": str(root)}, expect={"cert_min_days": 14}))
    assert result.reason is Reason.ASSERTION
    assert result.detail.startswith("certificate expires in 2.") or result.detail.startswith(
        "certificate expires in 3.0"), result.detail


async def test_tls_options(target: Target, ca: trustme.CA, tmp_path: Path,
                           short_intermediate: tuple[Target, Path, float]) -> None:
    url = target.url("/ok", tls=True)
    # Without the test CA, verification fails ...
    assert (await run(make_check(url))).reason is Reason.TLS
    # ... `ca_file` trusts exactly it, `insecure_skip_verify` trusts anything.
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    assert (await run(make_check(url, tls={"ca_file": str(tmp_path / "ca.pem")}))).reason is Reason.OK
    assert (await run(make_check(url, tls={"insecure_skip_verify": True}))).reason is Reason.OK
    other, _, _ = short_intermediate  # signed by another CA: ca_file replaces, not adds
    result = await run(make_check(other.url("/ok", tls=True), tls={"ca_file": str(tmp_path / "ca.pem")}))
    assert result.reason is Reason.TLS
    # `server_name`: connect to 127.0.0.1, verify (and send SNI) as localhost.
    by_ip = f"https://127.0.0.1:{target.tls_port}/ok"
    named = await run(make_check(by_ip, tls={"ca_file": str(tmp_path / "ca.pem"),
                                             "server_name": "localhost"}))
    assert named.reason is Reason.OK, named.detail


async def test_a_client_certificate_is_presented(ca: trustme.CA, tmp_path: Path) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no answer
    client_cert = ca.issue_cert("aipulse-probe")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with serve(server, plain=False) as mtls:
        url = mtls.url("/ok", tls=True)
        without = await run(make_check(url, tls={"ca_file": str(tmp_path / "ca.pem")}))
        with_cert = await run(make_check(url, tls={"ca_file": str(tmp_path / "ca.pem"),
                                                   "cert_file": str(tmp_path / "client.pem")}))
    with warnings.catch_warnings():
        # asyncio (3.11) leaves the server's side of the refused handshake to the GC.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert without.reason in (Reason.TLS, Reason.PROTOCOL), without.detail
    assert with_cert.reason is Reason.OK, with_cert.detail


# --- a proxy -----------------------------------------------------------------------


async def test_through_a_proxy_http_and_https(target: Target, ca: trustme.CA, tmp_path: Path) -> None:
    from proxy import serve_proxy

    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with serve_proxy(user="px", password="px-pass-123") as proxy:
        proxy_url = f"http://px:px-pass-123@127.0.0.1:{proxy.port}"
        plain = await run(make_check(target.url("/ok"), proxy_url=proxy_url))
        tls = await run(make_check(target.url("/ok", tls=True), proxy_url=proxy_url,
                                   tls={"ca_file": str(tmp_path / "ca.pem")}))
        refused = await run(make_check(target.url("/ok", tls=True), proxy_url=f"http://127.0.0.1:{proxy.port}"))
    assert plain.reason is Reason.OK, plain.detail
    assert tls.reason is Reason.OK, tls.detail
    assert tls.phases["tls"] > 0 and tls.cert_expiry is not None
    assert proxy.requests == [f"GET {target.url('/ok')}", f"CONNECT localhost:{target.tls_port}",
                              f"CONNECT localhost:{target.tls_port}"]
    assert refused.reason is Reason.CONNECT
    assert refused.detail == (f"proxy 127.0.0.1:{proxy.port} refused CONNECT to localhost:{target.tls_port}: "
                              "HTTP 407")


# --- names that resolve to IPv6 and IPv4 (Happy Eyeballs) and IDNA, end to end -----


def test_ipv6_black_hole_costs_a_moment_not_the_deadline_and_idna_goes_on_the_wire(
        target: Target, tmp_path: Path) -> None:
    """`dual.aipulse.test` resolves to ::1 (where nothing ever answers a SYN: a listener
    whose queue is full) and 127.0.0.1 (the target); `xn--fa-hia.de` to 127.0.0.1.
    The probes run in a mount namespace whose /etc/hosts says so (no DNS server)."""
    import socket

    port = target.port
    hole = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    hole.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    hole.bind(("::1", port))
    hole.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped, as by a black hole
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("::1", port))
        fillers.append(s)
    time.sleep(0.2)
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 dual.aipulse.test\n127.0.0.1 dual.aipulse.test\n127.0.0.1 xn--fa-hia.de\n"
                     "127.0.0.1 localhost\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"services": {"s": {"checks": {
        "dual": {"url": f"http://dual.aipulse.test:{port}/ok", "timeout": "3s"},
        "v6": {"url": f"http://dual.aipulse.test:{port}/ok", "timeout": "1s", "ip_protocol": "ip6"},
        "v4": {"url": f"http://dual.aipulse.test:{port}/ok", "timeout": "1s", "ip_protocol": "ip4"},
        "idna": {"url": f"http://faß.de:{port}/echo-request",
                 "expect": {"json": {"$.headers.Host": f"xn--fa-hia.de:{port}"}}},
    }}}}))
    script = (f"mount --bind {hosts} /etc/hosts && "
              f"exec {sys.executable} -m monitor.cli once --json -c {cfg}")
    try:
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                              timeout=60)
    finally:
        for s in fillers:
            s.close()
        hole.close()
    results = {r["check"]: r for r in json.loads(proc.stdout)}
    assert results["dual"]["reason"] == "ok", results["dual"]
    assert results["dual"]["duration_seconds"] < 1.5  # 250 ms of IPv6, then IPv4; not the 3 s deadline
    assert results["v6"]["reason"] == "timeout", results["v6"]  # only the black hole
    assert results["v4"]["reason"] == "ok", results["v4"]
    assert results["v4"]["duration_seconds"] < 0.5
    assert results["idna"]["reason"] == "ok", results["idna"]


def test_ip_protocol_asks_dns_for_one_family() -> None:
    cfg = make_config({"c": {"url": "http://127.0.0.1:1/", "ip_protocol": "ip6"}})
    assert cfg.checks[0].ip_protocol == "ip6"


async def test_an_ip_literal_of_the_other_family_is_dns() -> None:
    result = await run(make_check("http://127.0.0.1:1/", ip_protocol="ip6"))
    assert (result.reason, result.detail) == (Reason.DNS, "cannot resolve 127.0.0.1: no IPv6 address")


# --- many lookups at once ----------------------------------------------------------


def _dns_answer(query: bytes) -> bytes:
    """An A record 127.0.0.1 for the question in `query` (RFC 1035 wire format)."""
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]  # the name, its 0 byte, QTYPE and QCLASS
    qtype = int.from_bytes(query[end + 1:end + 3], "big")
    if qtype != 1:  # only A; AAAA and the rest: no answer, no error
        return query[:2] + b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + question
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01"
    return query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer


def test_many_lookups_at_once_do_not_queue_behind_a_few_threads(target: Target, tmp_path: Path) -> None:
    """A resolver that takes 0.6 s per answer, 40 checks on 40 names at once, 2.5 s
    deadline: each lookup needs a thread while it waits. On the event loop's default
    executor (6 threads on 2 CPUs) the later lookups queued for seconds and timed out
    "resolving"; on the probes' own resolver pool all 40 answer together."""
    import socket
    import threading

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.77", 53))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = server.recvfrom(512)
            except OSError:
                continue
            threading.Timer(0.6, lambda q=query, p=peer: server.sendto(_dns_answer(q), p)).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.77\noptions attempts:1 timeout:3\n")
    hosts = tmp_path / "hosts"  # nothing from /etc/hosts: every name goes to the resolver
    hosts.write_text("127.0.0.1 localhost\n")
    checks = {f"c{i}": {"url": f"http://name{i}.aipulse.test:{target.port}/ok", "timeout": "2500ms",
                        "ip_protocol": "ip4"} for i in range(40)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"services": {"s": {"checks": checks}}}))
    script = (f"mount --bind {resolv} /etc/resolv.conf && mount --bind {hosts} /etc/hosts && "
              f"exec {sys.executable} -m monitor.cli once --json -c {cfg}")
    try:
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                              timeout=60)
    finally:
        stop.set()
        thread.join(5)
        server.close()
    results = json.loads(proc.stdout)
    reasons = {r["check"]: r["reason"] for r in results}
    assert set(reasons.values()) == {"ok"}, (reasons, [r["detail"] for r in results if r["reason"] != "ok"])
    assert all(r["phases"]["resolve"] >= 0.55 for r in results)  # every lookup went to the slow resolver
