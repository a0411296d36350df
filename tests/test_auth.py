"""The password checker on its own (real bcrypt, cost 4 for speed): header parsing,
the per-client limit, and that a flood of wrong passwords cannot push a good
client's remembered success out."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import bcrypt
import pytest
from ownport import basic

from monitor.auth import PasswordChecker, Verdict

HASH = bcrypt.hashpw(b"right", bcrypt.gensalt(4))


@pytest.fixture
def checker() -> Iterator[PasswordChecker]:
    c = PasswordChecker({"prometheus": HASH}, per_client=2, cache_size=16)
    yield c
    c.close()


@pytest.mark.parametrize(("header", "verdict"), [
    (basic("prometheus", "right"), Verdict.OK),
    ("basic " + base64.b64encode(b"prometheus:right").decode(), Verdict.OK),  # the scheme is case-blind
    (basic("prometheus", "wrong"), Verdict.DENIED),
    (basic("nobody", "right"), Verdict.DENIED),
    (None, Verdict.DENIED),
    ("Bearer abc", Verdict.DENIED),
    ("Basic not base64!", Verdict.DENIED),
    ("Basic " + base64.b64encode(b"no colon").decode(), Verdict.DENIED),
    (basic("prometheus", "x" * 73), Verdict.DENIED),  # past bcrypt's 72 bytes
])
async def test_verdicts(checker: PasswordChecker, header: str | None, verdict: Verdict) -> None:
    assert await checker.check(header, "127.0.0.1") is verdict


async def test_no_users_means_no_auth() -> None:
    assert await PasswordChecker({}).check(None, "x") is Verdict.OK


async def test_a_client_waits_for_at_most_two_checks_at_once(checker: PasswordChecker) -> None:
    same = (checker.check(basic("prometheus", f"w{i}"), "10.0.0.1") for i in range(6))
    verdicts = await asyncio.gather(*same, checker.check(basic("prometheus", "other"), "10.0.0.2"))
    assert verdicts[:6].count(Verdict.BUSY) == 4 and verdicts[:6].count(Verdict.DENIED) == 2
    assert verdicts[6] is Verdict.DENIED  # another client is not held back


async def test_wrong_passwords_cannot_push_out_a_remembered_success(checker: PasswordChecker) -> None:
    assert await checker.check(basic("prometheus", "right"), "a") is Verdict.OK
    for i in range(100):  # far more than cache_size failures
        assert await checker.check(basic("prometheus", f"w{i}"), "b") is Verdict.DENIED
    # remembered: answered without the worker, even with the worker busy for another client
    busy = asyncio.ensure_future(checker.check(basic("prometheus", "slow"), "a"))
    busy2 = asyncio.ensure_future(checker.check(basic("prometheus", "slow2"), "a"))
    await asyncio.sleep(0)
    assert await checker.check(basic("prometheus", "right"), "a") is Verdict.OK
    assert await asyncio.gather(busy, busy2) == [Verdict.DENIED, Verdict.DENIED]
