"""Basic auth for our endpoints, checked off the event loop.

bcrypt is slow on purpose (about 70 ms at cost 10): run on the event loop, a few
clients sending wrong passwords would stall every probe. So, as exporter-toolkit
does it (web/handler.go) and then some:

- the check runs in one worker thread (bcrypt releases the GIL), never on the loop;
- results are remembered, failures too, under an HMAC of (user, hash, password) with
  a key made at start: the password itself is never kept. Successes are kept apart
  from failures, so a flood of new wrong passwords cannot push a good scraper's entry
  out and make it pay (and wait) again;
- an unknown user is checked against a dummy hash of the same cost, so a failure
  takes as long whether the name exists or not;
- at most `per_client` checks per client address wait or run at once, and at most
  `max_queue` in all; beyond that the answer is "busy" at once (HTTP 429), costing
  nothing.

    checker = PasswordChecker({"prometheus": b"$2b$10$..."})
    verdict = await checker.check(request.headers.get("Authorization"), client_ip)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import bcrypt

MAX_PASSWORD = 72  # bytes bcrypt looks at; bcrypt 5 refuses longer ones


class Verdict(enum.Enum):
    OK = "ok"  # no users configured, or a right password
    DENIED = "denied"  # 401
    BUSY = "busy"  # 429: too many checks waiting


def cost_of(hashed: bytes) -> int:
    """The cost factor of a `$2b$10$...` hash."""
    return int(hashed.split(b"$")[2])


class PasswordChecker:
    """Checks `Authorization: Basic` headers against bcrypt hashes, off the loop."""

    def __init__(self, users: Mapping[str, bytes], *, per_client: int = 2, max_queue: int = 32,
                 cache_size: int = 4096) -> None:
        self.users = dict(users)
        self.per_client = per_client
        self.max_queue = max_queue
        self.cache_size = cache_size
        self._key = os.urandom(32)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._clients: dict[str, int] = {}
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None
        self._dummy: Future[bytes] | None = None
        if self.users:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="aipulse-bcrypt")
            cost = max(cost_of(h) for h in self.users.values())
            # Made in the worker, at start: the first unknown user costs no more than any.
            self._dummy = self._pool.submit(lambda: bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(cost)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def check(self, header: str | None, client: str) -> Verdict:
        if not self.users:
            return Verdict.OK
        credentials = _parse(header)
        if credentials is None:
            return Verdict.DENIED
        user, password = credentials
        known = self.users.get(user)
        assert self._dummy is not None and self._pool is not None
        if known is None and self._dummy.cancelled():  # closed by a reload before it was made
            return Verdict.BUSY
        hashed = known if known is not None else await asyncio.wrap_future(self._dummy)
        key = hmac.new(self._key, b"\0".join((user.encode("utf-8", "surrogateescape"), hashed, password)),
                       hashlib.sha256).digest()
        if key in self._good:
            self._good.move_to_end(key)
            return Verdict.OK
        if key in self._bad:
            self._bad.move_to_end(key)
            return Verdict.DENIED
        if self._clients.get(client, 0) >= self.per_client or self._pending >= self.max_queue:
            return Verdict.BUSY
        self._clients[client] = self._clients.get(client, 0) + 1
        self._pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(self._pool, _verify, password, hashed)
        except RuntimeError:  # closed meanwhile: a reload replaced the users; the client retries
            return Verdict.BUSY
        finally:
            self._pending -= 1
            if (left := self._clients[client] - 1) > 0:
                self._clients[client] = left
            else:
                del self._clients[client]
        ok = ok and known is not None
        cache = self._good if ok else self._bad
        cache[key] = None
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return Verdict.OK if ok else Verdict.DENIED


def _parse(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from `Basic <base64>`, or None when it is not that."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: undo that exactly
        raw = base64.b64decode(value.strip().encode("utf-8", "surrogateescape"), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep or len(password) > MAX_PASSWORD:
        return None
    return user.decode("utf-8", "surrogateescape"), password


def _verify(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot read: refused at load, but never crash here
        return False
