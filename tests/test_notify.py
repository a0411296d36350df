"""Webhook notifications against a real loopback receiver (aiohttp on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiohttp import web

from monitor.config import WebhookConfig
from monitor.notify import Notifier, delivery_id
from monitor.outage import OutageWindow, WindowClosed, WindowOpened
from monitor.redact import Redactor

T0 = dt.datetime(2025, 1, 27, 13, 33, tzinfo=dt.UTC).timestamp()
API_DOWN = OutageWindow("deepseek", "api", "down", T0, reason="overloaded", severity="major_outage")
API_BACK = replace(API_DOWN, end=T0 + 72 * 60)  # 1h 12m
WEB_DOWN = OutageWindow("deepseek", "website", "down", T0 + 30, reason="http_5xx",
                        severity="major_outage")
WEB_BACK = replace(WEB_DOWN, end=T0 + 90)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    action: Any  # what the receiver did with it

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def delivered(self) -> bool:
        return self.action == "ok"


class Receiver:
    """Records every request; answers each path's planned actions in turn, then 200.

    Actions: "ok", an int status, (status, headers), "drop" (close the connection
    without answering), "hang" (block until the test ends).
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.plan: dict[str, deque[Any]] = defaultdict(deque)
        self.release = asyncio.Event()
        self.hanging = 0
        self.url = ""

    def url_for(self, path: str) -> str:
        return self.url + path

    def delivered(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.delivered and (path is None or r.path == path)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        plan = self.plan[request.path]
        action = plan.popleft() if plan else "ok"
        self.requests.append(Request(request.path, dict(request.headers), body, action))
        if action == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if action == "hang":
            self.hanging += 1
            await self.release.wait()
            return web.Response(status=504)
        if isinstance(action, int):
            return web.Response(status=action, text=f"status {action}")
        if isinstance(action, tuple):
            status, headers = action
            return web.Response(status=status, headers=headers, text=f"status {status}")
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)  # its URLs hold test secrets
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    rec.release.set()
    await runner.cleanup()


@pytest.fixture
async def make_notifier() -> AsyncIterator[Callable[..., Notifier]]:
    made: list[Notifier] = []

    def make(*hooks: WebhookConfig, location: str = "fra1", secrets: frozenset[str] = frozenset(),
             **kw: Any) -> Notifier:
        n = Notifier(hooks, location, Redactor(secrets), **kw)
        made.append(n)
        return n

    yield make
    for n in made:
        await n.aclose(timeout=1.0)


def hook(url: str, **kw: Any) -> WebhookConfig:
    return WebhookConfig(url=url, **{"retry_initial": 0.005, "timeout": 5.0, **kw})


async def until(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `fn` on the running loop until it is truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.005)
    return value


def notify_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aipulse.notify" and r.levelno >= logging.WARNING]


# -- payloads ---------------------------------------------------------------------------


async def test_json_payload_fields_and_rfc3339_times(receiver: Receiver, make_notifier) -> None:
    n = make_notifier(hook(receiver.url_for("/hook")))
    n.publish(WindowOpened(API_DOWN))
    n.publish(WindowClosed(API_BACK))
    opened, closed = await until(lambda: len(receiver.delivered()) == 2 and receiver.delivered())

    assert opened.json == {
        "event": "outage_opened", "service": "deepseek", "check": "api", "kind": "down",
        "severity": "major_outage", "reason": "overloaded", "start": "2025-01-27T13:33:00.000Z",
        "end": None, "duration_seconds": None, "location": "fra1",
    }
    assert closed.json == {
        "event": "outage_closed", "service": "deepseek", "check": "api", "kind": "down",
        "severity": "major_outage", "reason": "overloaded", "start": "2025-01-27T13:33:00.000Z",
        "end": "2025-01-27T14:45:00.000Z", "duration_seconds": 4320.0, "location": "fra1",
    }
    assert opened.headers["Content-Type"] == "application/json"
    assert opened.headers["X-Aipulse-Event"] == "outage_opened"
    assert closed.headers["X-Aipulse-Event"] == "outage_closed"
    assert opened.headers["X-Aipulse-Delivery"] == delivery_id(WindowOpened(API_DOWN), "fra1")
    assert opened.headers["X-Aipulse-Delivery"] != closed.headers["X-Aipulse-Delivery"]
    assert opened.headers["User-Agent"].startswith("aipulse/")
    assert "X-Aipulse-Signature" not in opened.headers  # no secret, no signature
    assert "X-Aipulse-Signature" not in closed.headers


async def test_service_level_degraded_window_has_null_check_and_utc_z_times(
        receiver: Receiver, make_notifier) -> None:
    # A fractional start in a non-UTC-looking moment still prints as UTC with Z.
    start = dt.datetime(2025, 1, 28, 0, 59, 59, 750000, tzinfo=dt.UTC).timestamp()
    w = OutageWindow("openai", None, "degraded", start, end=start + 0.5, reason="ok",
                     severity="degraded_performance")
    n = make_notifier(hook(receiver.url_for("/hook")))
    n.publish(WindowClosed(w))
    (req,) = await until(receiver.delivered)
    assert req.json["check"] is None
    assert req.json["kind"] == "degraded"
    assert req.json["start"] == "2025-01-28T00:59:59.750Z"
    assert req.json["end"] == "2025-01-28T01:00:00.250Z"
    assert req.json["duration_seconds"] == 0.5
    for stamp in (req.json["start"], req.json["end"]):
        assert dt.datetime.fromisoformat(stamp).utcoffset() == dt.timedelta(0)


async def test_signature_is_hmac_sha256_of_exact_body(receiver: Receiver, make_notifier) -> None:
    secret = "s3cr3t-webhook-key"
    n = make_notifier(hook(receiver.url_for("/signed"), secret=secret),
                      hook(receiver.url_for("/plain")))
    n.publish(WindowOpened(API_DOWN))
    await until(lambda: len(receiver.delivered()) == 2)
    (signed,) = receiver.delivered("/signed")
    (plain,) = receiver.delivered("/plain")

    header = signed.headers["X-Aipulse-Signature"]
    assert header.startswith("sha256=")
    expected = hmac.new(secret.encode(), signed.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header.removeprefix("sha256="), expected)
    wrong = hmac.new(b"another-key", signed.body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(header.removeprefix("sha256="), wrong)
    assert "X-Aipulse-Signature" not in plain.headers
    assert signed.body == plain.body  # the signature rides in a header, the body is the same


async def test_slack_text(receiver: Receiver, make_notifier) -> None:
    n = make_notifier(hook(receiver.url_for("/slack"), format="slack"),
                      titles={"deepseek": "DeepSeek", "acme": "R&D <lab>"})
    degraded = OutageWindow("acme", None, "degraded", T0, reason="ok", severity="degraded_performance")
    n.publish(WindowOpened(API_DOWN))
    n.publish(WindowClosed(API_BACK))
    n.publish(WindowOpened(degraded))
    n.publish(WindowClosed(replace(degraded, end=T0 + 303)))
    await until(lambda: len(receiver.delivered()) == 4)
    texts = [r.json for r in receiver.delivered()]
    assert texts == [
        {"text": ":red_circle: DeepSeek api is DOWN since 2025-01-27T13:33:00Z (overloaded) [fra1]"},
        {"text": ":large_green_circle: DeepSeek api recovered after 1h 12m "
                 "(was down since 2025-01-27T13:33:00Z) [fra1]"},
        {"text": ":large_yellow_circle: R&amp;D &lt;lab&gt; is DEGRADED since "
                 "2025-01-27T13:33:00Z (ok) [fra1]"},
        {"text": ":large_green_circle: R&amp;D &lt;lab&gt; recovered after 5m 3s "
                 "(was degraded since 2025-01-27T13:33:00Z) [fra1]"},
    ]
    assert all(r.headers["Content-Type"] == "application/json" for r in receiver.delivered())


def test_delivery_id_is_stable_per_window_event() -> None:
    opened = WindowOpened(API_DOWN)
    assert delivery_id(opened, "fra1") == delivery_id(WindowOpened(replace(API_DOWN)), "fra1")
    # The reason may be refined later; the id names the window event, not its text.
    assert delivery_id(opened, "fra1") == delivery_id(WindowOpened(replace(API_DOWN, reason="x")), "fra1")
    others = {
        delivery_id(WindowClosed(API_BACK), "fra1"),
        delivery_id(opened, "iad1"),
        delivery_id(WindowOpened(replace(API_DOWN, kind="degraded")), "fra1"),
        delivery_id(WindowOpened(replace(API_DOWN, start=T0 + 1)), "fra1"),
        delivery_id(WindowOpened(replace(API_DOWN, check=None)), "fra1"),
    }
    assert delivery_id(opened, "fra1") not in others
    assert len(others) == 5


# -- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [503, "drop"], ids=["503", "dropped-connection"])
async def test_first_attempt_failure_is_retried_once_in_order(
        receiver: Receiver, make_notifier, failure: Any) -> None:
    receiver.plan["/hook"].append(failure)
    n = make_notifier(hook(receiver.url_for("/hook")))
    events = [WindowOpened(API_DOWN), WindowOpened(WEB_DOWN), WindowClosed(WEB_BACK),
              WindowClosed(API_BACK)]
    for e in events:
        n.publish(e)
    await until(lambda: len(receiver.delivered()) == 4)

    got = [(r.json["event"], r.json["check"]) for r in receiver.delivered()]
    assert got == [("outage_opened", "api"), ("outage_opened", "website"),
                   ("outage_closed", "website"), ("outage_closed", "api")]
    assert [r.headers["X-Aipulse-Delivery"] for r in receiver.delivered()] == [
        delivery_id(e, "fra1") for e in events]
    failed, retried = receiver.requests[:2]
    assert failed.action == failure and retried.delivered
    assert failed.headers["X-Aipulse-Delivery"] == retried.headers["X-Aipulse-Delivery"]
    assert failed.body == retried.body
    assert len(receiver.requests) == 5  # one failure, then each event exactly once


async def test_attempt_timeout_is_retried_with_the_same_delivery_id(
        receiver: Receiver, make_notifier) -> None:
    receiver.plan["/hook"].append("hang")
    n = make_notifier(hook(receiver.url_for("/hook"), timeout=0.2))
    n.publish(WindowOpened(API_DOWN))
    (ok,) = await until(receiver.delivered)
    assert [r.action for r in receiver.requests] == ["hang", "ok"]
    assert receiver.requests[0].headers["X-Aipulse-Delivery"] == ok.headers["X-Aipulse-Delivery"]


async def test_429_honours_retry_after(receiver: Receiver, make_notifier) -> None:
    # A first backoff of one minute would outlast the test: Retry-After: 0 must replace it.
    receiver.plan["/hook"].append((429, {"Retry-After": "0"}))
    n = make_notifier(hook(receiver.url_for("/hook"), retry_initial=60.0))
    n.publish(WindowOpened(API_DOWN))
    await until(receiver.delivered, timeout=5.0)
    assert [r.action for r in receiver.requests] == [(429, {"Retry-After": "0"}), "ok"]


async def test_400_is_not_retried(receiver: Receiver, make_notifier,
                                  caplog: pytest.LogCaptureFixture) -> None:
    receiver.plan["/hook"].append(400)
    n = make_notifier(hook(receiver.url_for("/hook")))
    n.publish(WindowOpened(API_DOWN))
    n.publish(WindowClosed(API_BACK))
    # Deliveries are sequential: once the close arrived, the open is settled.
    await until(receiver.delivered)
    assert [(r.action, r.json["event"]) for r in receiver.requests] == [
        (400, "outage_opened"), ("ok", "outage_closed")]
    (record,) = notify_records(caplog)
    assert "outage_opened deepseek/api dropped after 1 attempt(s): HTTP 400" in record.getMessage()


async def test_gives_up_after_max_attempts_with_one_redacted_warning(
        receiver: Receiver, make_notifier, caplog: pytest.LogCaptureFixture) -> None:
    token, secret = "tok-9f8e7d6c5b", "hmac-key-1a2b3c"
    receiver.plan["/services/T0/B0/path-secret"].extend([503, 503, 503])
    url = receiver.url_for(f"/services/T0/B0/path-secret?token={token}")
    n = make_notifier(hook(url, secret=secret, max_attempts=3), secrets=frozenset({token}))
    n.publish(WindowOpened(API_DOWN))
    n.publish(WindowClosed(API_BACK))
    await until(receiver.delivered)

    assert [r.json["event"] for r in receiver.requests] == ["outage_opened"] * 3 + ["outage_closed"]
    assert len({r.headers["X-Aipulse-Delivery"] for r in receiver.requests[:3]}) == 1
    (record,) = notify_records(caplog)
    message = record.getMessage()
    assert message == (f"webhook {receiver.url}: outage_opened deepseek/api dropped after 3 "
                       "attempt(s): HTTP 503: status 503")
    everything = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for leak in (token, secret, "path-secret", "?token"):
        assert leak not in everything


async def test_error_response_text_is_redacted(receiver: Receiver, make_notifier,
                                               caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-reflected-123"

    async def reflect(request: web.Request) -> web.Response:
        return web.Response(status=403, text=f"bad token {token}")

    app = web.Application()
    app.router.add_post("/", reflect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        n = make_notifier(hook(f"http://127.0.0.1:{port}/"), secrets=frozenset({token}))
        n.publish(WindowOpened(API_DOWN))
        (record,) = await until(lambda: notify_records(caplog))
        assert record.getMessage().endswith("HTTP 403: bad token <redacted>")
    finally:
        await runner.cleanup()


# -- never in the way -------------------------------------------------------------------


async def test_publish_never_waits_for_a_hanging_receiver(receiver: Receiver, make_notifier) -> None:
    receiver.plan["/hook"].append("hang")
    n = make_notifier(hook(receiver.url_for("/hook"), timeout=30.0))
    n.publish(WindowOpened(API_DOWN))
    await until(lambda: receiver.hanging == 1)

    # The "probe loop": a ticker that must keep its 5 ms beat while deliveries are stuck.
    lags: list[float] = []

    async def probe_loop() -> None:
        for _ in range(40):
            due = time.perf_counter() + 0.005
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - due)

    ticker = asyncio.create_task(probe_loop())
    slowest = 0.0
    events: list[WindowOpened | WindowClosed] = [WindowOpened(API_DOWN)]
    for i in range(200):
        events.append(WindowClosed(replace(API_DOWN, start=T0 + i, end=T0 + i + 1)))
        t = time.perf_counter()
        n.publish(events[-1])
        slowest = max(slowest, time.perf_counter() - t)
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the ticker and the sender run in between
    await ticker

    assert receiver.hanging == 1 and len(receiver.requests) == 1  # still blocked
    assert slowest < 0.010
    assert max(lags) < 0.1, f"event loop stalled for {max(lags):.3f}s"
    receiver.release.set()
    await until(lambda: len(receiver.delivered()) == 201)
    assert [r.headers["X-Aipulse-Delivery"] for r in receiver.delivered()] == [
        delivery_id(e, "fra1") for e in events]


async def test_aclose_returns_within_its_timeout_when_receiver_hangs(
        receiver: Receiver, make_notifier, caplog: pytest.LogCaptureFixture) -> None:
    receiver.plan["/hook"].append("hang")
    n = make_notifier(hook(receiver.url_for("/hook"), timeout=30.0))
    n.publish(WindowOpened(API_DOWN))
    n.publish(WindowClosed(API_BACK))
    await until(lambda: receiver.hanging == 1)

    t = time.monotonic()
    await n.aclose(timeout=0.2)
    elapsed = time.monotonic() - t
    assert 0.2 <= elapsed < 1.0
    (record,) = notify_records(caplog)
    assert "2 event(s) not delivered" in record.getMessage()
    n.publish(WindowOpened(WEB_DOWN))  # after close: ignored, no error, nothing sent
    assert len(receiver.requests) == 1


async def test_aclose_lets_queued_deliveries_finish(receiver: Receiver, make_notifier) -> None:
    receiver.plan["/hook"].append(503)
    n = make_notifier(hook(receiver.url_for("/hook")))
    for e in (WindowOpened(API_DOWN), WindowOpened(WEB_DOWN), WindowClosed(API_BACK)):
        n.publish(e)
    await n.aclose(timeout=5.0)
    assert [r.json["event"] for r in receiver.delivered()] == [
        "outage_opened", "outage_opened", "outage_closed"]


async def test_several_webhooks_each_get_their_copy(receiver: Receiver, make_notifier) -> None:
    receiver.plan["/stuck"].append("hang")
    receiver.plan["/b"].append(503)
    n = make_notifier(hook(receiver.url_for("/a")), hook(receiver.url_for("/b")),
                      hook(receiver.url_for("/slack"), format="slack"),
                      hook(receiver.url_for("/stuck"), timeout=30.0))
    n.publish(WindowOpened(API_DOWN))
    n.publish(WindowClosed(API_BACK))
    # A stuck webhook holds up only its own queue.
    await until(lambda: len(receiver.delivered()) == 6)
    for path in ("/a", "/b"):
        assert [r.json["event"] for r in receiver.delivered(path)] == ["outage_opened", "outage_closed"]
    assert [r.json["text"][:13] for r in receiver.delivered("/slack")] == [
        ":red_circle: ", ":large_green_"]
    assert receiver.delivered("/a")[0].body == receiver.delivered("/b")[0].body
    assert receiver.hanging == 1 and not receiver.delivered("/stuck")
    receiver.release.set()  # and once it answers again, it catches up in order
    await until(lambda: len(receiver.delivered("/stuck")) == 2)
    assert [r.json["event"] for r in receiver.delivered("/stuck")] == ["outage_opened", "outage_closed"]


async def test_full_queue_drops_the_oldest_and_logs_once(
        receiver: Receiver, make_notifier, caplog: pytest.LogCaptureFixture) -> None:
    n = make_notifier(hook(receiver.url_for("/hook")), max_queue=3)
    windows = [replace(API_DOWN, start=T0 + i) for i in range(6)]
    for w in windows:  # all before the sender first runs
        n.publish(WindowOpened(w))
    await until(lambda: len(receiver.delivered()) == 3)
    assert [r.json["start"] for r in receiver.delivered()] == [
        "2025-01-27T13:33:03.000Z", "2025-01-27T13:33:04.000Z", "2025-01-27T13:33:05.000Z"]
    full = [r for r in notify_records(caplog) if "queue full" in r.getMessage()]
    assert len(full) == 1
    await until(lambda: any("3 event(s) were dropped" in r.getMessage()
                            for r in notify_records(caplog)))
