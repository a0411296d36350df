"""Apprise URLs: are they usable, and which of their parts may be secrets (no I/O).

Kept apart from monitor.delivery so that validating a config loads Apprise and
nothing else of the daemon.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from monitor.redact import Redactor

if TYPE_CHECKING:
    import apprise

_DETAIL = 300  # characters of what Apprise says, in an error
# Query parameters of Apprise URLs whose values are settings or addresses, never secrets
# (a value from ${VAR} is redacted wherever it is).
_SETTINGS = frozenset({"format", "mode", "priority", "overflow", "method", "verify", "image", "cto", "rto",
                       "retry", "wait", "optional", "markdown", "tags", "discovery", "avatar", "footer",
                       "to", "from", "cc", "bcc", "smtp"})


def url_secrets(url: str) -> set[str]:
    """Every part of an Apprise URL that may be a secret: user, password, path
    segments, query values (settings aside), fragment, and the host unless it is an
    address or a domain name (tgram://BOTTOKEN/..., ntfy://TOPIC); also decoded."""
    _, sep, rest = url.partition("://")
    if not sep:
        return {url}
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostport = netloc.rpartition("@")
    parts = {url, rest, fragment, path, userinfo, *userinfo.split(":"), *path.split("/")}
    host, colon, port = hostport.rpartition(":")
    if not colon or not port.isdigit():
        host = hostport
    if not _public_host(host.strip("[]")):
        parts |= {hostport, host, *hostport.split(":")}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key.lower() not in _SETTINGS:
            parts.add(value)
    return {p for p in parts | {unquote(p) for p in parts} if p}


def _public_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return "." in host or host == "localhost"


def check_apprise_url(url: str) -> None:
    """Raise ValueError (with a text fit to show: no URL in it) unless Apprise can use `url`."""
    quiet_libraries()
    import apprise

    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if not scheme:
        raise ValueError("not an Apprise URL (e.g. mailtos://, slack://, ntfys://, json://)")
    if scheme not in apprise.manager_plugins.NotificationManager().schemas():
        raise ValueError(f'unknown Apprise scheme "{scheme}://" (see https://appriseit.com/services/)')
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as said:
        plugin = apprise.Apprise.instantiate(url, asset=asset())
    if plugin is None:
        # The first line says why ("An invalid Slack (second) Token..."); then "Could not load".
        why = said.getvalue().strip().splitlines()[0] if said.getvalue().strip() else ""
        raise ValueError(f"Apprise cannot use this {scheme}:// URL"
                         + (f": {Redactor(frozenset(url_secrets(url)))(why)[:_DETAIL]}" if why else ""))


def quiet_libraries() -> None:
    """Apprise and urllib3 log request URLs (tokens included) at debug level: their
    records never reach our handlers (nor those of python-markdown, chatty at debug).
    What Apprise says comes back in its result."""
    for name in ("apprise", "urllib3", "MARKDOWN"):
        logger = logging.getLogger(name)
        if logger.propagate:
            logger.propagate = False
            logger.addHandler(logging.NullHandler())
    # Apprise's result keeps its records from DEBUG on (the response a service gave) only
    # when its logger lets them be made; none of them goes further than that result.
    logging.getLogger("apprise").setLevel(logging.DEBUG)


def asset() -> apprise.AppriseAsset:
    import apprise

    # In memory only: under systemd our home and most of the disk are read-only.
    return apprise.AppriseAsset(app_id="aipulse", app_desc="aipulse outage notifications",
                                storage_mode="memory")
