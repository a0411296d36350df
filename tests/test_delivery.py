"""Notification targets end to end in one process: the real pipeline decides windows
from probe results, the real TargetNotifier groups them and Apprise delivers them to
real receivers on loopback (HTTP for json://, ntfy://, mmost://; aiosmtpd for mailto://)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import yaml
from helpers import until
from prometheus_client.parser import text_string_to_metric_families
from receivers import HttpReceiver, http_receiver, smtp_receiver

from monitor.apprise_url import url_secrets
from monitor.config import Config, parse
from monitor.delivery import Notifications, TargetNotifier
from monitor.live import LiveState
from monitor.metrics import make_registry, render
from monitor.outage import OutageWindow, WindowClosed, WindowOpened
from monitor.pipeline import Pipeline
from monitor.reasons import Reason
from monitor.result import ProbeResult
from monitor.statuspage import VendorIncident, VendorStatus

SECRET = "tok-3f9a8b7c6d5e"  # in target URLs, from ${HOOK_TOKEN}
PASSWORD = "pw-5e6d7c8b9a"  # the SMTP password, from ${SMTP_PASSWORD}
ENV = {"HOOK_TOKEN": SECRET, "SMTP_PASSWORD": PASSWORD}


def make_config(targets: list[dict[str, Any]], checks: dict[str, list[str]] | None = None,
                group_wait: str = "100ms") -> Config:
    services = {sid: {"title": sid.capitalize() if sid != "deepseek" else "DeepSeek",
                      "checks": {c: {"url": "http://127.0.0.1:9/", "interval": "1s", "timeout": "500ms",
                                     "open_after": 2, "close_after": 2} for c in cs}}
                for sid, cs in (checks or {"deepseek": ["api", "website"]}).items()}
    doc = {"listen": "127.0.0.1:0", "location": "fra1", "public_url": "https://status.example.org/",
           "notify": {"group_wait": group_wait, "targets": [{"retry_initial": "10ms", **t} for t in targets]},
           "services": services}
    return parse(yaml.safe_dump(doc), "test.yaml", env=ENV)


class Scripted:
    """A pipeline fed with probe results by the test (no probes, no store)."""

    def __init__(self, cfg: Config, **kw: Any) -> None:
        self.live = LiveState()
        self.targets = TargetNotifier(cfg, self.live, **{"min_interval": 0.0, **kw})
        self.pipeline = Pipeline(cfg, self.live, None, Notifications(None, self.targets))
        self.registry = make_registry(self.live, cfg.location)

    async def probe(self, checks: list[tuple[str, str]], reason: Reason, rounds: int = 2) -> None:
        """`rounds` results of `reason` for each check, a few ms apart."""
        for _ in range(rounds):
            events = []
            for service, check in checks:
                events += self.pipeline.process(ProbeResult(service, check, time.time(), 0.01, reason))
            await self.pipeline.commit(events)

    def metric(self, name: str, **labels: str) -> float | None:
        text = render(self.registry, None)[0].decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == {"location": "fra1", **labels}:
                    return s.value
        return None


@asynccontextmanager
async def scripted(cfg: Config, **kw: Any) -> AsyncIterator[Scripted]:
    s = Scripted(cfg, **kw)
    try:
        yield s
    finally:
        await s.targets.aclose(timeout=1.0)


@pytest.fixture
async def rec() -> AsyncIterator[HttpReceiver]:
    async with http_receiver() as r:
        yield r


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[Recorder]:
    """What `aipulse run --log-level debug` would write: a handler on the root logger, as
    monitor.logs installs it (pytest's caplog also hooks loggers that do not propagate)."""
    root, handler = logging.getLogger(), Recorder()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


DEEPSEEK = [("deepseek", "api"), ("deepseek", "website")]


async def test_a_scripted_outage_reaches_json_ntfy_slack_style_and_mail_receivers(
        rec: HttpReceiver, logs: Recorder) -> None:
    async with smtp_receiver(password=PASSWORD) as smtp:
        cfg = make_config([
            {"name": "hook", "url": f"json://{rec.url}/hook/${{HOOK_TOKEN}}"},
            # Apprise itself spaces messages to ntfy and mail 5.5 s apart: openings only.
            {"name": "phone", "url": f"ntfy://{rec.url}/aipulse-alerts", "kinds": ["down"]},
            {"name": "chat", "url": f"mmost://{rec.url}/${{HOOK_TOKEN}}"},  # Slack-compatible webhook
            {"name": "mail", "url": f"mailto://ops:${{SMTP_PASSWORD}}@127.0.0.1:{smtp.port}"
                                    "?mode=insecure&from=aipulse@example.org&to=oncall@example.org",
             "kinds": ["down"]},
        ])
        async with scripted(cfg) as s:
            s.live.services["deepseek"].vendor = VendorStatus("statuspage", "operational")
            await s.probe(DEEPSEEK, Reason.OVERLOADED)
            await until(lambda: len(rec.requests) == 3 and len(smtp.mails) == 1)

            hook = rec.delivered(f"/hook/{SECRET}")[0].json
            assert hook["type"] == "failure"
            assert hook["title"] == "DeepSeek: api, website down"
            for text in ("- api: overloaded, since ", "- website: overloaded, since ",
                         "DeepSeek as aipulse sees it from fra1: major outage.",
                         "DeepSeek's own status page says operational (no open incident).",
                         "https://status.example.org/services/deepseek"):
                assert text in hook["message"]
            ntfy = rec.delivered("/")[0].json  # ntfy: POST / with the topic in the JSON
            assert (ntfy["topic"], ntfy["title"]) == ("aipulse-alerts", "DeepSeek: api, website down")
            assert "overloaded" in ntfy["message"]
            chat = rec.delivered(f"/hooks/{SECRET}")[0].json  # Slack's shape: {"text": ...}
            assert chat["text"].startswith("DeepSeek: api, website down")
            assert "https://status.example.org/services/deepseek" in chat["text"]
            mail = smtp.mails[0]
            assert (mail.login, mail.rcpt_tos, mail.subject) == ("ops", ["oncall@example.org"],
                                                                 "DeepSeek: api, website down")
            assert "- api: overloaded, since " in mail.text()
            assert "<li>api: overloaded, since " in mail.html()  # Markdown became HTML for mail

            await s.probe(DEEPSEEK, Reason.OK)
            await until(lambda: len(rec.requests) == 5)
            closing = rec.delivered(f"/hook/{SECRET}")[1].json
            assert closing["type"] == "success"
            assert closing["title"].startswith("DeepSeek: api, website back up after ")
            assert "- api: down for " in closing["message"]
            assert rec.delivered(f"/hooks/{SECRET}")[1].json["text"].startswith(closing["title"])
            await until(lambda: s.metric("aipulse_notifications_total", target="mail", result="sent") == 1)
            await until(lambda: s.metric("aipulse_notifications_total", target="hook", result="sent") == 2)
            assert s.metric("aipulse_notification_queue_depth", target="mail") == 0
            assert len(smtp.mails) == 1 and len(rec.delivered("/")) == 1  # kinds: [down]
    for record in logs.records:
        assert SECRET not in record.getMessage() and PASSWORD not in record.getMessage()


async def test_a_mass_outage_of_1000_checks_sends_one_message_per_target(rec: HttpReceiver) -> None:
    """The pipeline's window events for 1,000 checks of one service (committed as the
    pipeline commits them; deciding them through `process` takes the pipeline ~8 ms a
    result at this size, which is not what this test is about)."""
    checks = [f"c{i:04d}" for i in range(1000)]
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook"},
                       {"name": "chat", "url": f"mmost://{rec.url}/token"}],
                      checks={"deepseek": checks, "openai": ["api"]}, group_wait="500ms")
    async with scripted(cfg) as s:
        t0 = time.time()
        windows = [OutageWindow("deepseek", c, "down", t0 - 1 + i / 1000, reason="http_5xx",
                                severity="major_outage") for i, c in enumerate(checks)]
        for i in range(0, 1000, 100):  # in batches, as the pipeline commits them
            await s.pipeline.commit([WindowOpened(w) for w in windows[i:i + 100]])
            await asyncio.sleep(0.01)
        await until(lambda: len(rec.requests) == 2)
        hook = rec.delivered("/hook")[0].json
        assert hook["title"] == "DeepSeek: 1000 checks down"
        assert "- … and 990 more (http_5xx: 990)" in hook["message"]
        assert rec.delivered("/hooks/token")[0].json["text"].startswith("DeepSeek: 1000 checks down")
        for i in range(0, 1000, 100):
            await s.pipeline.commit([WindowClosed(replace(w, end=time.time())) for w in windows[i:i + 100]])
        await until(lambda: len(rec.requests) == 4)
        assert rec.delivered("/hook")[1].json["title"].startswith("DeepSeek: 1000 checks back up after ")
        await s.probe([("openai", "api")], Reason.HTTP_5XX)  # so that nothing more was on its way
        await until(lambda: len(rec.requests) == 6)
    assert sorted(r.path for r in rec.requests) == ["/hook"] * 3 + ["/hooks/token"] * 3
    assert rec.delivered("/hook")[-1].json["title"] == "Openai: api down"


async def test_a_receiver_that_fails_twice_then_answers_gets_the_message_once(
        rec: HttpReceiver, logs: Recorder) -> None:
    rec.plan["/hook"].extend([500, 503])
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook", "max_attempts": 5}])
    async with scripted(cfg) as s:
        await s.probe(DEEPSEEK, Reason.HTTP_5XX)
        await until(lambda: rec.delivered())
        await until(lambda: s.metric("aipulse_notifications_total", target="hook", result="sent") == 1)
        assert [r.action for r in rec.requests] == [500, 503, "ok"]
        assert len({r.body for r in rec.requests}) == 1  # the same message each time
        assert s.metric("aipulse_notifications_total", target="hook", result="failed") == 0
    assert not [r for r in logs.records if r.name == "aipulse.notify" and r.levelno >= logging.WARNING]


async def test_given_up_after_max_attempts_with_one_redacted_log_line(
        rec: HttpReceiver, logs: Recorder) -> None:
    literal = "Zq8vLiteralToken42"  # written in the config, not from a variable
    path = f"/hook/{SECRET}/{literal}"
    rec.plan[path].extend([("echo", 500)] * 3)  # the error page repeats the path (tokens and all)
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook/${{HOOK_TOKEN}}/{literal}",
                        "max_attempts": 3}])
    async with scripted(cfg) as s:
        await s.probe(DEEPSEEK, Reason.HTTP_5XX)
        await until(lambda: s.metric("aipulse_notifications_total", target="hook", result="failed") == 1)
        assert len(rec.requests) == 3
        assert s.metric("aipulse_notifications_total", target="hook", result="sent") == 0
        metrics = render(s.registry, None)[0].decode()
    warnings = [r.getMessage() for r in logs.records
                if r.levelno >= logging.WARNING and r.name == "aipulse.notify"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("notify hook (json): 'DeepSeek: api, website down' not sent, "
                                  "given up after 3 attempt(s): ")
    assert "error=500" in warnings[0] and "Response Details: b'Cannot POST /<redacted>'" in warnings[0]
    for text in [*(r.getMessage() for r in logs.records), metrics]:
        assert SECRET not in text and literal not in text and rec.url not in text.replace(
            "127.0.0.1", "<ip>")  # and no URL of the target at all


async def test_a_slow_target_does_not_delay_another(rec: HttpReceiver) -> None:
    rec.plan["/slow"].extend(["hang", "hang"])  # answers only when the test lets it go
    cfg = make_config([{"name": "slow", "url": f"json://{rec.url}/slow?rto=60"},
                       {"name": "fast", "url": f"json://{rec.url}/fast"}],
                      checks={"deepseek": ["api"], "openai": ["api"]})
    async with scripted(cfg) as s:
        await s.probe([("deepseek", "api")], Reason.HTTP_5XX)
        await until(lambda: rec.delivered("/fast"))
        await s.probe([("openai", "api")], Reason.HTTP_5XX)
        await until(lambda: len(rec.delivered("/fast")) == 2)  # while the first is still hanging
        assert [r.action for r in rec.requests if r.path == "/slow"] == ["hang"]
        await until(lambda: s.metric("aipulse_notification_queue_depth", target="slow") == 2)
        rec.release.set()
        await until(lambda: len(rec.delivered("/slow")) == 2)
        assert [r.json["title"] for r in rec.delivered("/slow")] == ["DeepSeek: api down", "Openai: api down"]


async def test_a_full_queue_drops_the_oldest_and_counts_it(rec: HttpReceiver,
                                                            logs: Recorder) -> None:
    rec.plan["/hook"].append("hang")
    services = {f"s{i}": ["api"] for i in range(1, 5)}
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook?rto=60"}], checks=services,
                      group_wait="0s")
    async with scripted(cfg, max_queue=2) as s:
        depth = {"target": "hook"}
        await s.probe([("s1", "api")], Reason.HTTP_5XX)
        await until(lambda: rec.requests)  # s1 is being sent (hanging)
        for i in (2, 3):
            await s.probe([(f"s{i}", "api")], Reason.HTTP_5XX)
            await until(lambda i=i: s.metric("aipulse_notification_queue_depth", **depth) == i)
        await s.probe([("s4", "api")], Reason.HTTP_5XX)  # s2 makes room for it
        await until(lambda: s.metric("aipulse_notifications_total", target="hook", result="dropped") == 1)
        assert s.metric("aipulse_notification_queue_depth", **depth) == 3
        rec.release.set()
        await until(lambda: len(rec.delivered()) == 3)
        assert [r.json["title"] for r in rec.delivered()] == ["S1: api down", "S3: api down", "S4: api down"]
    full = [r.getMessage() for r in logs.records if "queue full" in r.getMessage()]
    assert full == ["notify hook (json): queue full (2 messages), dropping the oldest"]


async def test_messages_to_one_target_keep_min_interval_apart(rec: HttpReceiver) -> None:
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook"}],
                      checks={"a": ["api"], "b": ["api"]}, group_wait="0s")
    async with scripted(cfg, min_interval=0.5) as s:
        await s.probe([("a", "api"), ("b", "api")], Reason.HTTP_5XX)
        await until(lambda: len(rec.delivered()) == 2)
    first, second = rec.delivered()
    assert second.at - first.at >= 0.5 - 0.01  # a lower bound: a busy machine only adds to it


async def test_min_duration_a_blip_sends_nothing_a_long_window_sends_both(rec: HttpReceiver) -> None:
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook", "min_duration": "600ms"},
                       {"name": "all", "url": f"json://{rec.url}/all"}],
                      checks={"deepseek": ["api"]}, group_wait="0s")
    async with scripted(cfg) as s:
        await s.probe([("deepseek", "api")], Reason.HTTP_5XX)
        await s.probe([("deepseek", "api")], Reason.OK)  # closed within a few ms: a blip
        await until(lambda: len(rec.delivered("/all")) == 1)  # the target without min_duration
        assert rec.delivered("/all")[0].json["title"].startswith("DeepSeek: api back up after")
        started = time.time()
        await s.probe([("deepseek", "api")], Reason.HTTP_5XX)
        await until(lambda: len(rec.delivered("/hook")) == 1)
        assert time.time() - started >= 0.6 - 0.05  # held until the window lasted 600 ms
        await s.probe([("deepseek", "api")], Reason.OK)
        await until(lambda: len(rec.delivered("/hook")) == 2)
        assert [r.json["type"] for r in rec.delivered("/hook")] == ["failure", "success"]


async def test_vendor_incident_is_quoted_in_the_message(rec: HttpReceiver) -> None:
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook"}], checks={"deepseek": ["api"]})
    async with scripted(cfg) as s:
        s.live.services["deepseek"].vendor = VendorStatus("statuspage", "major_outage", incidents=(
            VendorIncident("i1", "Login <b>issues</b>", "identified", "critical", None, ()),))
        await s.probe([("deepseek", "api")], Reason.HTTP_5XX)
        await until(lambda: rec.delivered())
    message = rec.delivered()[0].json["message"]
    assert "DeepSeek's own status page says major outage; incident “Login ‹b›issues‹/b›” (identified)." \
        in message


def test_url_secrets_cover_tokens_wherever_apprise_urls_put_them() -> None:
    def redacted(url: str) -> set[str]:
        return {s for s in url_secrets(url) if len(s) >= 4}

    assert {"123456789:AAbbCC", "123456789", "AAbbCC"} <= redacted("tgram://123456789:AAbbCC/555")
    assert {"TokenA", "TokenB", "TokenC"} <= redacted("slack://TokenA/TokenB/TokenC/#ops")
    assert "p@ss word" in redacted("mailtos://me:p%40ss%20word@example.com")
    assert "sekrit" in redacted("ntfys://ntfy.example.org/topic?token=sekrit&priority=high")
    assert "high" not in redacted("ntfys://ntfy.example.org/topic?token=sekrit&priority=high")
    assert "ntfy.example.org" not in redacted("ntfys://ntfy.example.org/topic")
    assert "mytopic" in redacted("ntfy://mytopic")  # ntfy.sh: the "host" is the topic



async def test_after_a_restart_only_windows_not_yet_announced_are_announced(rec: HttpReceiver) -> None:
    """Windows open when the daemon starts again: one younger than min_duration had not
    been announced before the restart and is, once it lasted min_duration; an older one
    had been, and is not again."""
    cfg = make_config([{"name": "hook", "url": f"json://{rec.url}/hook", "min_duration": "500ms"}],
                      checks={"young": ["api"], "old": ["api"]}, group_wait="0s")
    async with scripted(cfg) as s:
        now = time.time()
        young = OutageWindow("young", "api", "down", now - 0.2, reason="timeout", severity="major_outage")
        old = OutageWindow("old", "api", "down", now - 60, reason="timeout", severity="major_outage")
        s.pipeline.restore([young, old], [young, old], [], [], {}, last_seen=now)
        s.targets.restore()  # as the daemon does after the pipeline's restore
        await until(lambda: rec.delivered())
        assert time.time() - young.start >= 0.5 - 0.05
        await s.pipeline.commit([WindowClosed(replace(old, end=old.start + 90))])
        await until(lambda: len(rec.delivered()) == 2)
    assert [r.json["title"] for r in rec.delivered()] == [
        "Young: api down", "Old: api back up after 1m 30s"]
