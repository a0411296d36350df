"""`kind: flow` against a real local login API: POST credentials, extract a token from
JSON and a session cookie, call a protected endpoint, clean up."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import make_config
from targets import Target

from monitor.probes import Prober
from monitor.reasons import Reason
from monitor.result import ProbeResult


def login_flow(target: Target, password: str = "correct horse", **extra: Any) -> dict[str, Any]:
    return {
        "kind": "flow",
        "timeout": "5s",
        "steps": [
            {"name": "login", "method": "POST", "url": target.url("/login"),
             "json": {"user": "probe", "password": password},
             "expect": {"status": [200]},
             "extract": {"token": "$.data.token", "session": "cookie:session"}},
            {"name": "models", "url": target.url("/protected?rid={{session}}"),
             "headers": {"Authorization": "Bearer {{token}}"},
             "expect": {"status": [200], "json": {"$.models[0]": "model-a"}},
             "extract": {"rid": "regex:\"request_id\": \"(sess-\\d+)\""}},
            {"name": "logout", "method": "POST", "url": target.url("/logout"), "always_run": True,
             "expect": {"status": [204]}},
        ],
        **extra,
    }


async def run(check_keys: dict[str, Any], secrets: frozenset[str] = frozenset()) -> ProbeResult:
    cfg = make_config({"flow": check_keys})
    prober = Prober(secrets)
    try:
        return await prober.run(cfg.checks[0])
    finally:
        await prober.aclose()


async def test_login_then_protected_call_succeeds(target: Target) -> None:
    before = dict(target.hits)
    result = await run(login_flow(target))
    assert result.reason is Reason.OK, result.detail
    assert (result.step, result.status_code) == (None, 204)
    assert list(result.steps) == ["login", "models", "logout"]
    assert all(s > 0 for s in result.steps.values())
    assert sum(result.steps.values()) <= result.duration
    for route in ("login", "protected", "logout"):
        assert target.hits.get(route, 0) == before.get(route, 0) + 1


async def test_wrong_password_fails_at_login_and_still_cleans_up(target: Target) -> None:
    before = target.hits.get("logout", 0)
    result = await run(login_flow(target, password="wrong"))
    assert (result.reason, result.step) == (Reason.HTTP_4XX, "login")
    assert result.detail == "step login: HTTP 401 not expected"
    assert list(result.steps) == ["login", "logout"]  # models skipped, clean-up ran
    assert target.hits["logout"] == before + 1


async def test_wrong_token_fails_at_the_protected_step(target: Target) -> None:
    flow = login_flow(target)
    flow["steps"][1]["headers"] = {"Authorization": "Bearer {{token}}-tampered"}
    result = await run(flow)
    assert (result.reason, result.step, result.status_code) == (Reason.HTTP_4XX, "models", 204)
    assert result.detail == "step models: HTTP 401 not expected"


async def test_cookies_are_carried_across_steps_without_extraction(target: Target) -> None:
    flow = login_flow(target)
    flow["steps"][1]["url"] = target.url("/protected")
    flow["steps"][1]["extract"] = {}
    flow["steps"][0]["extract"] = {"token": "$.data.token"}
    result = await run(flow)
    assert result.reason is Reason.OK, result.detail


async def test_extract_that_matches_nothing_is_an_assertion(target: Target) -> None:
    flow = login_flow(target)
    flow["steps"][0]["extract"] = {"token": "$.data.nothing"}
    flow["steps"][1]["url"] = target.url("/protected")
    result = await run(flow)
    assert (result.reason, result.step) == (Reason.ASSERTION, "login")
    assert result.detail == "step login: extract token: JSONPath $.data.nothing matched nothing"


async def test_extracted_token_never_appears_in_a_detail(target: Target) -> None:
    flow = login_flow(target)
    flow["steps"][1]["expect"] = {"status": [200], "json": {"$.request_id": "other"}}
    result = await run(flow)
    assert (result.reason, result.step) == (Reason.ASSERTION, "models")
    assert "sess-" not in result.detail  # the session id came from an extraction
    assert "<redacted>" in result.detail


async def test_one_deadline_covers_the_whole_flow(target: Target) -> None:
    flow = login_flow(target, timeout="600ms")
    flow["steps"].insert(1, {"name": "slow", "url": target.url("/slow?delay=2")})
    result = await run(flow)
    assert (result.reason, result.step) == (Reason.TIMEOUT, "slow")
    assert result.duration == pytest.approx(0.6, abs=0.3)
    assert "logout" not in result.steps  # no time left for clean-up


def test_config_rejects_a_variable_no_earlier_step_extracts(target: Target) -> None:
    from monitor.config import ConfigError
    flow = login_flow(target)
    flow["steps"][0]["extract"] = {}
    with pytest.raises(ConfigError) as info:
        make_config({"flow": flow})
    assert "{{session}} is not extracted by an earlier step" in str(info.value)
    assert "{{token}} is not extracted by an earlier step" in str(info.value)
