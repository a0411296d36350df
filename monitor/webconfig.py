"""Securing our endpoints with the Prometheus exporter-toolkit web config file.

The same file a Prometheus user already writes for node_exporter protects /metrics,
the API and the status page here (docs/web-configuration.md of exporter-toolkit)::

    tls_server_config:
      cert_file: server.crt          # or cert: <PEM>; relative to this file
      key_file: server.key           # or key: <PEM>
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt         # or client_ca: <PEM>
      client_allowed_sans: [prometheus.example]
      min_version: TLS12             # TLS10..TLS13; max_version too
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # Go's names, TLS <= 1.2
      prefer_server_cipher_suites: true
      curve_preferences: [X25519]
    http_server_config:
      http2: true                    # accepted; we serve HTTP/1.1
      headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt (htpasswd -nBC 10 "" | tr -d ':\\n')
    rate_limit: {interval: 100ms, burst: 20}

Where we differ from the toolkit, we are stricter, never looser: an empty file, an
empty section (a truncated file) or TLS settings without a certificate are errors,
not "serve openly"; and what Python's ssl module cannot do is refused with the
reason: accepting a client certificate without verifying it (`RequireAnyClientCert`),
and more than one curve in `curve_preferences` (with TLS 1.2, OpenSSL also holds
ECDSA certificates, ours and the clients', to that one curve). `RequestClientCert` does not ask for
a certificate: the toolkit verifies nothing it would get, so every client gets the
same answer either way.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.yamlsrc import KeyPath, LocatedError, format_path, load

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
               "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Go's tls.CipherSuites() -> OpenSSL names. TLS 1.3 suites are accepted and, as in
# Go, change nothing (they are not configurable).
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# The toolkit's extraHTTPHeaders: these names only; None = any value.
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class WebConfigError(Exception):
    pass


@dataclass(frozen=True)
class RateLimit:
    interval: float  # seconds between two requests (the bucket's refill)
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config; `WebConfig()` is "none": plain HTTP, no auth."""

    path: str | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash ($2b$)
    ssl_context: ssl.SSLContext | None = None
    allowed_sans: frozenset[str] | None = None  # client certificate SANs, one must match
    headers: tuple[tuple[str, str], ...] = ()  # added to every response
    http2: bool = True
    rate_limit: RateLimit | None = None
    files: tuple[str, ...] = ()  # what was read: the file, certificates, CA (watched)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file; errors name file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise WebConfigError(f"{path}: cannot read: {reason}") from None
    try:
        src = load(text, str(path), env={})
    except LocatedError as exc:
        raise WebConfigError(f"{path}:{exc.line}: {exc.message}") from None

    def fail(key_path: KeyPath, message: str) -> WebConfigError:
        where = f"{format_path(key_path)}: " if key_path else ""
        return WebConfigError(f"{path}:{src.line(key_path)}: {where}{message}")

    data = src.data
    if data is None or data == {}:  # an empty document, only comments, or {}
        raise fail((), "the file is empty: it would turn TLS and basic auth off without a word "
                   "(remove web_config to serve without them)")
    check = _Checker(fail)
    check.mapping(data, (), ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"))
    for key in ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"):
        if key in data and data[key] is None:
            raise fail((key,), "is empty (a truncated file?); remove the key if that is meant")
    files = [str(path)]
    ssl_context, allowed_sans = None, None
    if "tls_server_config" in data:
        ssl_context, allowed_sans = _tls(data["tls_server_config"], path.parent, check, files)
    http = check.mapping(data.get("http_server_config", {}), ("http_server_config",), ("http2", "headers"))
    return WebConfig(
        path=str(path),
        users=_users(data.get("basic_auth_users", {}), check),
        ssl_context=ssl_context,
        allowed_sans=allowed_sans,
        headers=_headers(http.get("headers", {}), check),
        http2=check.boolean(http, "http2", ("http_server_config",), True),
        rate_limit=_rate_limit(data.get("rate_limit"), check),
        files=tuple(files),
    )


class _Checker:
    def __init__(self, fail: Callable[[KeyPath, str], WebConfigError]) -> None:
        self.fail = fail

    def mapping(self, value: Any, where: KeyPath, known: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a mapping")
        for key in value:
            if known is not None and key not in known:
                raise self.fail((*where, key), f'unknown key "{key}" (known: {", ".join(sorted(known))})')
        return value

    def string(self, data: Mapping[str, Any], key: str, where: KeyPath) -> str:
        value = data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail((*where, key), "must be a string")
        return value

    def strings(self, data: Mapping[str, Any], key: str, where: KeyPath) -> list[str] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail((*where, key), "must be a list of strings")
        return value

    def boolean(self, data: Mapping[str, Any], key: str, where: KeyPath, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail((*where, key), "must be true or false")
        return value


def _users(users: Any, check: _Checker) -> dict[str, bytes]:
    users = check.mapping(users, ("basic_auth_users",))
    out = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
            raise check.fail(("basic_auth_users", user), "must be a bcrypt hash ($2y$10$..., 60 characters)")
        out[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    return out


def _headers(headers: Any, check: _Checker) -> tuple[tuple[str, str], ...]:
    where = ("http_server_config", "headers")
    headers = check.mapping(headers, where)
    out = []
    for name, value in headers.items():
        if name not in HEADERS:
            raise check.fail((*where, name), f'HTTP header "{name}" can not be configured '
                             f"(known: {', '.join(HEADERS)})")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise check.fail((*where, name), "must be a string on one line")
        allowed = HEADERS[name]
        if allowed is not None and value not in allowed:
            raise check.fail((*where, name), f"must be one of {', '.join(allowed)}")
        if value:  # "Unset if blank"
            out.append((name, value))
    return tuple(out)


def _rate_limit(value: Any, check: _Checker) -> RateLimit | None:
    if value is None:
        return None
    where = ("rate_limit",)
    data = check.mapping(value, where, ("interval", "burst"))
    interval = _go_duration(data.get("interval", "0s"), check, (*where, "interval"))
    burst = data.get("burst", 0)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
        raise check.fail((*where, "burst"), "must be a whole number, 0 or more")
    return RateLimit(interval, burst) if interval > 0 else None


def _go_duration(value: Any, check: _Checker, where: KeyPath) -> float:
    """A Go duration ("100ms", "1m30s", "1.5s"), as the toolkit reads it."""
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            break
        total, pos = total + float(m.group(1)) * _GO_UNITS[m.group(2)], m.end()
    if text == "0":
        return 0.0
    if pos == 0 or pos != len(text) or total > 1e9:
        raise check.fail(where, f'invalid duration "{text}" (use e.g. 100ms, 1s, 1m)')
    return total


def _tls(value: Any, base: Path, check: _Checker,
         files: list[str]) -> tuple[ssl.SSLContext, frozenset[str] | None]:
    where: KeyPath = ("tls_server_config",)
    known = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
             "client_allowed_sans", "min_version", "max_version", "cipher_suites",
             "prefer_server_cipher_suites", "curve_preferences")
    tls = check.mapping(value, where, known)
    s = {k: check.string(tls, k, where) for k in ("cert", "key", "client_ca", "cert_file", "key_file",
                                                  "client_auth_type", "client_ca_file")}
    if not (s["cert_file"] or s["cert"]):
        raise check.fail(where, "missing one of cert or cert_file (without a certificate there is no TLS: "
                         "remove tls_server_config to serve plain HTTP)")
    if not (s["key_file"] or s["key"]):
        raise check.fail(where, "missing one of key or key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise check.fail((*where, key),
                                 f"unknown TLS version: {tls[key]} (use {', '.join(TLS_VERSIONS)})")
            setattr(ctx, attr, TLS_VERSIONS[tls[key]])
    cert_path = base / s["cert_file"] if s["cert_file"] else None  # a file wins over inline, as in Go
    key_path = base / s["key_file"] if s["key_file"] else None
    files += [str(p) for p in (cert_path, key_path) if p is not None]
    try:
        with _pem(cert_path, s["cert"]) as cert, _pem(key_path, s["key"]) as key:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise check.fail((*where, "cert_file" if s["cert_file"] else "cert"),
                         f"cannot load certificate and key: {exc}") from None
    _ciphers(ctx, tls, check, where)
    auth, auth_key = s["client_auth_type"] or "NoClientCert", (*where, "client_auth_type")
    if auth not in CLIENT_AUTH:
        raise check.fail(auth_key, f"invalid ClientAuth: {auth} (use {', '.join(CLIENT_AUTH)})")
    if auth in ("RequireAnyClientCert", "RequireClientCert"):
        raise check.fail(auth_key, f"{auth} (accept any client certificate without verifying it) cannot "
                         "be done with Python's ssl module, which verifies every certificate it asks for; "
                         "use RequireAndVerifyClientCert with client_ca_file, as the toolkit itself advises")
    has_ca = bool(s["client_ca_file"] or s["client_ca"])
    if has_ca and auth == "NoClientCert":
        raise check.fail(auth_key, "client CA's have been configured without a Client Auth Policy "
                         "(set client_auth_type)")
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        ctx.verify_mode = ssl.CERT_REQUIRED if auth == "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL
        try:
            if s["client_ca_file"]:
                files.append(str(base / s["client_ca_file"]))
                ctx.load_verify_locations(base / s["client_ca_file"])
            elif s["client_ca"]:
                ctx.load_verify_locations(cadata=s["client_ca"])
            else:  # Go verifies against the system's roots then
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise check.fail((*where, "client_ca_file" if s["client_ca_file"] else "client_ca"),
                             f"cannot load: {exc}") from None
    sans = check.strings(tls, "client_allowed_sans", where)
    if sans is not None and auth != "RequireAndVerifyClientCert":
        raise check.fail((*where, "client_allowed_sans"), "client_allowed_sans requires client_auth_type "
                         "RequireAndVerifyClientCert")
    return ctx, (frozenset(sans) if sans is not None else None)


def _ciphers(ctx: ssl.SSLContext, tls: Mapping[str, Any], check: _Checker, where: KeyPath) -> None:
    suites = check.strings(tls, "cipher_suites", where)
    if suites:
        for name in suites:
            if name not in CIPHERS:
                raise check.fail((*where, "cipher_suites"), f"unknown cipher: {name}")
        names = [CIPHERS[n] for n in suites if CIPHERS[n]]
        if names:
            ctx.set_ciphers(":".join(n for n in names if n))
    if check.boolean(tls, "prefer_server_cipher_suites", where, True):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = check.strings(tls, "curve_preferences", where)
    if curves:
        for name in curves:
            if name not in CURVES:
                raise check.fail((*where, "curve_preferences"), f"unknown curve: {name}")
        if len(curves) > 1:
            raise check.fail((*where, "curve_preferences"), "Python's ssl module can limit the key "
                             "exchange to one curve only: list one, or leave curve_preferences out "
                             "(OpenSSL's defaults include all four)")
        ctx.set_ecdh_curve(CURVES[curves[0]])


@contextlib.contextmanager
def _pem(path: Path | None, inline: str) -> Iterator[str]:
    """A path for load_cert_chain(): the file, or the inline PEM in an anonymous memory
    file (never on disk)."""
    if path is not None:
        yield str(path)
        return
    try:
        fd = os.memfd_create("aipulse-pem", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux: a private temporary file, removed at once
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
            f.write(inline)
            f.flush()
            yield f.name
        return
    try:
        os.write(fd, inline.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def file_state(files: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """(inode, size, mtime) of each file, None when it cannot be read: compared to
    see whether the web config or a certificate changed."""
    out = []
    for name in files:
        try:
            st = os.stat(name)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)
