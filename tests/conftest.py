"""Shared fixtures: real local targets (HTTP and HTTPS with test-made certificates)."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

sys.path.insert(0, str(Path(__file__).parent))

from targets import Target, serve


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs `aipulse` in-process (cli.main) configures logging; undo it so
    later tests see pytest's own capture only."""
    names = ("", "aipulse", "httpx", "httpcore", "aiohttp.access", "stamina")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for n, (level, handlers) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.handlers[:] = handlers


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """What the prober trusts in tests: the test CA only."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


def _server_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def target(ca: trustme.CA) -> Iterator[Target]:
    """HTTP on 127.0.0.1 and HTTPS for `localhost` with a valid certificate."""
    with serve(_server_ctx(ca.issue_cert("localhost", "127.0.0.1"))) as t:
        yield t


EXPIRED_NOT_AFTER = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def expired_target(ca: trustme.CA) -> Iterator[Target]:
    """HTTPS with a certificate that expired on EXPIRED_NOT_AFTER."""
    cert = ca.issue_cert("localhost", not_before=EXPIRED_NOT_AFTER - dt.timedelta(days=90),
                         not_after=EXPIRED_NOT_AFTER)
    with serve(_server_ctx(cert), plain=False) as t:
        yield t


@pytest.fixture(scope="session")
def wrong_host_target(ca: trustme.CA) -> Iterator[Target]:
    """HTTPS whose certificate names another host."""
    with serve(_server_ctx(ca.issue_cert("elsewhere.example")), plain=False) as t:
        yield t


SOON_NOT_AFTER = (dt.datetime.now(dt.UTC) + dt.timedelta(days=5)).replace(microsecond=0)


@pytest.fixture(scope="session")
def soon_target(ca: trustme.CA) -> Iterator[Target]:
    """HTTPS with a valid certificate that expires in five days."""
    cert = ca.issue_cert("localhost", not_after=SOON_NOT_AFTER)
    with serve(_server_ctx(cert), plain=False) as t:
        yield t
