"""The exporter-toolkit web config: start-up errors (exit 2), every client-auth mode
and http_server_config key over real TLS handshakes, and certificates or users
changed on disk taking effect without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from cryptography import x509
from helpers import start_daemon, wait_for
from ownport import basic, hashed, request, write_web_config
from prometheus_client import CollectorRegistry

from monitor import server
from monitor.live import LiveState
from monitor.webconfig import WebConfig, WebConfigError, load_web_config

CHECK = {"services": {"s": {"checks": {"c": {"url": "http://127.0.0.1:1/"}}}}}


def run_once(tmp_path: Path, web: str) -> subprocess.CompletedProcess[str]:
    """`aipulse run` with `web` as its web config file; it must exit at once."""
    (tmp_path / "web.yml").write_text(web)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "web_config": "web.yml",
                                                          **CHECK}))
    return subprocess.run([sys.executable, "-m", "monitor.cli", "run", "-c", "config.yaml", "--db", "h.db"],
                          capture_output=True, text=True, timeout=20, cwd=tmp_path)


@pytest.mark.parametrize(("web", "message"), [
    ("", "web.yml:1: the file is empty"),
    ("# basic_auth_users:\n#   prometheus: $2y$10$...\n", "web.yml:1: the file is empty"),
    ("basic_auth_users:\n", "web.yml:1: basic_auth_users: is empty (a truncated file?)"),
    ("tls_server_config:\n", "web.yml:1: tls_server_config: is empty"),
    ("basic_auth_users:\n  prometheus: hunter2\n", "web.yml:2: basic_auth_users.prometheus: must be a bcr"),
    ("tls_server_config:\n  min_version: TLS13\n", "missing one of cert or cert_file"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", 'HTTP header "X-Powered-By" can not be'),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "must be one of deny, sameorigin"),
    ("rate_limit:\n  interval: 1 second\n", 'rate_limit.interval: invalid duration "1 second"'),
    ("unknown: 1\n", 'web.yml:1: unknown: unknown key "unknown"'),
], ids=["empty", "comments_only", "users_cut", "tls_cut", "not_bcrypt", "tls_without_cert", "header_name",
        "header_value", "rate_interval", "unknown_key"])
def test_a_web_config_that_would_serve_openly_or_wrongly_stops_the_start(tmp_path: Path, web: str,
                                                                          message: str) -> None:
    result = run_once(tmp_path, web)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_web_config_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "web_config": "web.yml",
                                                          **CHECK}))
    (tmp_path / "web.yml").mkdir()  # a directory: reading it fails, even as root
    result = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "-c", "config.yaml", "--db", "h.db"],
                            capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert result.returncode == 2 and "web.yml: cannot read: Is a directory" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A server certificate; a client CA with two clients (SANs good.example and
    other.example); a stranger CA's client."""
    where = tmp_path_factory.mktemp("pki")
    ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(where / "server.crt")
    leaf.private_key_pem.write_to_path(where / "server.key")
    client_ca.cert_pem.write_to_path(where / "client-ca.crt")
    return {"dir": where, "ca": ca, "client_ca": client_ca, "good": client_ca.issue_cert("good.example"),
            "other": client_ca.issue_cert("other.example"),
            "stranger": stranger_ca.issue_cert("good.example")}


def client(pki: dict[str, Any], cert: str | None = None, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    pki["ca"].configure_trust(ctx)
    if cert is not None:
        pki[cert].configure_cert(ctx)
    for attr, value in versions.items():
        setattr(ctx, attr, value)
    return ctx


@contextlib.asynccontextmanager
async def serving(web_config: WebConfig, tmp_path: Path) -> AsyncIterator[server.Served]:
    async def no_reload() -> None:
        return None

    app = server.make_app(LiveState(), CollectorRegistry(), str(tmp_path / "none.db"), no_reload, web_config)
    served = await server.start(app, "127.0.0.1", 0)
    try:
        yield served
    finally:
        await served.cleanup()


async def fetch(port: int, ctx: ssl.SSLContext, path: str = "/healthz",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, float] | None:
    """A request in a thread (the server runs on this loop); None when TLS refused us."""
    try:
        return await asyncio.to_thread(request, port, path, headers=headers, tls=ctx, timeout=5)
    except (ssl.SSLError, ConnectionError):
        return None


def tls_config(pki: dict[str, Any], **tls: Any) -> dict[str, Any]:
    return {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", **tls}}


@pytest.mark.parametrize(("tls", "expected"), [
    ({}, {None: 200, "good": 200, "stranger": 200}),
    ({"client_auth_type": "RequestClientCert"}, {None: 200, "good": 200, "stranger": 200}),
    ({"client_auth_type": "VerifyClientCertIfGiven", "client_ca_file": "client-ca.crt"},
     {None: 200, "good": 200, "stranger": None}),
    ({"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "client-ca.crt"},
     {None: None, "good": 200, "other": 200, "stranger": None}),
    ({"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "client-ca.crt",
      "client_allowed_sans": ["good.example"]}, {None: None, "good": 200, "other": None, "stranger": None}),
], ids=["NoClientCert", "RequestClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert",
        "client_allowed_sans"])
async def test_client_auth_modes_as_the_toolkit_documents(pki: dict[str, Any], tmp_path: Path,
                                                          tls: dict[str, Any],
                                                          expected: dict[str | None, int | None]) -> None:
    config = load_web_config(write_web_config(pki["dir"] / f"web-{os.getpid()}.yml", tls_config(pki, **tls)))
    async with serving(config, tmp_path) as served:
        for cert, status in expected.items():
            answer = await fetch(served.listener.port, client(pki, cert))
            assert (answer[0] if answer else None) == status, f"client certificate {cert}"


def test_require_any_client_cert_is_refused_with_the_reason(pki: dict[str, Any], tmp_path: Path) -> None:
    """Accepting a certificate without verifying it cannot be done with Python's ssl;
    it used to start and then refuse every certificate."""
    (tmp_path / "server.crt").write_bytes((pki["dir"] / "server.crt").read_bytes())
    (tmp_path / "server.key").write_bytes((pki["dir"] / "server.key").read_bytes())
    result = run_once(tmp_path, yaml.safe_dump(tls_config(pki, client_auth_type="RequireAnyClientCert")))
    assert result.returncode == 2
    assert "client_auth_type: RequireAnyClientCert" in result.stderr
    assert "use RequireAndVerifyClientCert" in result.stderr


async def test_inline_pem_ciphers_versions_and_curves(pki: dict[str, Any], tmp_path: Path) -> None:
    leaf = pki["ca"].issue_cert("127.0.0.1")
    doc = {"tls_server_config": {
        "cert": leaf.cert_chain_pems[0].bytes().decode(), "key": leaf.private_key_pem.bytes().decode(),
        "client_auth_type": "VerifyClientCertIfGiven",
        "client_ca": pki["client_ca"].cert_pem.bytes().decode(),
        "max_version": "TLS12", "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
        "prefer_server_cipher_suites": True, "curve_preferences": ["CurveP256"]}}
    config = load_web_config(write_web_config(tmp_path / "web.yml", doc))
    async with serving(config, tmp_path) as served:
        ctx = client(pki, "good")
        assert (await fetch(served.listener.port, ctx) or [None])[0] == 200
        assert (await fetch(served.listener.port, client(pki, "stranger")) or [None])[0] is None

        def negotiated() -> tuple[str, str]:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", served.listener.port)),
                                 server_hostname="127.0.0.1") as sock:
                return sock.version() or "", sock.cipher()[0]

        assert await asyncio.to_thread(negotiated) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    with pytest.raises(WebConfigError, match="one curve only"):
        load_web_config(write_web_config(tmp_path / "web2.yml", {"tls_server_config": {
            **doc["tls_server_config"], "curve_preferences": ["X25519", "CurveP256"]}}))


async def test_headers_and_rate_limit(tmp_path: Path) -> None:
    doc = {"http_server_config": {"http2": False, "headers": {"X-Frame-Options": "deny",
                                                               "Strict-Transport-Security": "max-age=60"}},
           "basic_auth_users": {"prometheus": hashed("pw", 4)},
           "rate_limit": {"interval": "1m", "burst": 4}}
    config = load_web_config(write_web_config(tmp_path / "web.yml", doc))
    async with serving(config, tmp_path) as served:
        port = served.listener.port
        answers = [await asyncio.to_thread(request, port, path, headers=headers) for path, headers in [
            ("/healthz", {"Authorization": basic("prometheus", "pw")}), ("/healthz", {}),
            ("/nowhere", {"Authorization": basic("prometheus", "pw")}), ("/healthz", {}), ("/healthz", {})]]
    assert [a[0] for a in answers] == [200, 401, 404, 401, 429]  # a burst of 4, then one a minute
    for _, headers, _, _ in answers[:4]:
        assert headers["x-frame-options"] == "deny" and headers["strict-transport-security"] == "max-age=60"


def test_certificates_and_users_changed_on_disk_apply_without_a_restart(tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    first.cert_chain_pems[0].write_to_path(tmp_path / "server.crt")
    first.private_key_pem.write_to_path(tmp_path / "server.key")
    write_web_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "server.crt", "key_file":
                                                                  "server.key"},
                                            "basic_auth_users": {"prometheus": hashed("old", 4)}})
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    def serial() -> int:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", d.port)),
                             server_hostname="127.0.0.1") as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number

    def status(password: str) -> int:
        return request(d.port, headers={"Authorization": basic("prometheus", password)}, tls=ctx)[0]

    config = {"web_config": "web.yml", **CHECK}
    with start_daemon(config, tmp_path, scheme="https", verify=ctx, auth=("prometheus", "old")) as d:
        first_serial = serial()
        # certbot style: new files written aside, then renamed over the old ones
        second.cert_chain_pems[0].write_to_path(tmp_path / "new.crt")
        second.private_key_pem.write_to_path(tmp_path / "new.key")
        os.replace(tmp_path / "new.key", tmp_path / "server.key")
        os.replace(tmp_path / "new.crt", tmp_path / "server.crt")
        wait_for(lambda: serial() != first_serial)
        assert serial() == x509.load_pem_x509_certificate(second.cert_chain_pems[0].bytes()).serial_number
        # a new password for the user, as the toolkit re-reads the file (written aside and
        # renamed, as editors and config management do: a new inode, whatever the clock)
        write_web_config(tmp_path / "web.new", {"tls_server_config": {"cert_file": "server.crt", "key_file":
                                                                      "server.key"},
                                                "basic_auth_users": {"prometheus": hashed("new", 4)}})
        os.replace(tmp_path / "web.new", tmp_path / "web.yml")
        wait_for(lambda: status("new") == 200)
        assert status("old") == 401
        # a broken file keeps what runs, and says why, once
        (tmp_path / "web.yml").write_text("")
        # (the files are looked at when a connection or request comes, at most once a second)
        wait_for(lambda: status("new") == 200 and "changed but cannot be used" in d.log.read_text())
        assert status("new") == 200
    assert d.log.read_text().count("web config changed but cannot be used") == 1
