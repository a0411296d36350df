"""Securing our endpoints with the Prometheus exporter-toolkit web config file.

The same file a Prometheus user already writes for node_exporter protects /metrics,
the API and the status page here::

    tls_server_config:
      cert_file: /etc/aipulse/tls/server.crt
      key_file: /etc/aipulse/tls/server.key
      min_version: TLS12            # optional: TLS10..TLS13
      client_auth_type: NoClientCert  # or RequireAndVerifyClientCert (with client_ca_file)
      client_ca_file: /etc/aipulse/tls/ca.crt
    basic_auth_users:
      prometheus: $2y$10$...        # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

bcrypt is slow by design; a verified (user, password) pair is remembered (as a
SHA-256 of the password, never the password) so scrapes stay cheap.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from monitor.yamlsrc import LocatedError, format_path, load

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert",
               "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")


class WebConfigError(Exception):
    pass


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash
    _verified: set[tuple[str, bytes]] = field(default_factory=set)

    def allows(self, header: str | None) -> bool:
        """True when no users are configured, or the Authorization header holds a
        configured user's password."""
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        if (user, digest) in self._verified:
            return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False
        if ok:
            self._verified.add((user, digest))
        return ok


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file; errors name file, line and key."""
    path = Path(path)
    try:
        src = load(path.read_text(encoding="utf-8"), str(path), env={})
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except LocatedError as exc:
        raise WebConfigError(f"{path}:{exc.line}: {exc.message}") from None

    def fail(key_path: tuple[str, ...], message: str) -> WebConfigError:
        return WebConfigError(f"{path}:{src.line(key_path)}: {format_path(key_path)}: {message}")

    data = src.data or {}
    if not isinstance(data, dict):
        raise fail((), "must be a mapping")
    for key in data:
        if key not in ("tls_server_config", "basic_auth_users", "http_server_config"):
            raise fail((key,), f'unknown key "{key}" (known: basic_auth_users, tls_server_config)')
    config = WebConfig()
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise fail(("basic_auth_users",), "must be a mapping of user name to bcrypt hash")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise fail(("basic_auth_users", user), "must be a bcrypt hash ($2y$...)")
        config.users[str(user)] = hashed.replace("$2y$", "$2b$", 1).encode()
    tls = data.get("tls_server_config")
    if tls is not None:
        config.ssl_context = _ssl_context(tls, path.parent, fail)
    return config


def _ssl_context(tls: object, base: Path,
                 fail: Callable[[tuple[str, ...], str], WebConfigError]) -> ssl.SSLContext:
    where = ("tls_server_config",)
    if not isinstance(tls, dict):
        raise fail(where, "must be a mapping")
    known = {"cert_file", "key_file", "min_version", "max_version", "client_auth_type", "client_ca_file"}
    for key in tls:
        if key not in known:
            raise fail((*where, key), f'unknown key "{key}" (known: {", ".join(sorted(known))})')
    for key in ("cert_file", "key_file"):
        if key not in tls:
            raise fail(where, f'missing required key "{key}"')
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in tls:
            if tls[key] not in TLS_VERSIONS:
                raise fail((*where, key), f"must be one of {', '.join(TLS_VERSIONS)}")
            setattr(ctx, attr, TLS_VERSIONS[tls[key]])
    try:
        ctx.load_cert_chain(base / str(tls["cert_file"]), base / str(tls["key_file"]))
    except (OSError, ssl.SSLError) as exc:
        raise fail((*where, "cert_file"), f"cannot load certificate and key: {exc}") from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise fail((*where, "client_auth_type"), f"must be one of {', '.join(CLIENT_AUTH)}")
    if auth != "NoClientCert":
        ctx.verify_mode = ssl.CERT_REQUIRED if auth.startswith("Require") else ssl.CERT_OPTIONAL
        if "client_ca_file" in tls:
            try:
                ctx.load_verify_locations(base / str(tls["client_ca_file"]))
            except (OSError, ssl.SSLError) as exc:
                raise fail((*where, "client_ca_file"), f"cannot load: {exc}") from None
    return ctx
