"""notify.targets through the real daemon and CLI: `aipulse run` probes a local target,
announces its outage and its end to a receiver on loopback, counts it on /metrics, and
never shows the target's secrets; `aipulse notify-test` prints what each target said."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import start_daemon, wait_for
from receivers import HttpReceiver, http_receiver_thread
from targets import Target

from monitor.cli import main
from monitor.config import parse

SECRET = "hook-7d1e2f3a4b5c"  # the receiver's token, in the target URL via ${HOOK_TOKEN}
LITERAL = "LiteralPathToken9x"  # written straight into the URL


@pytest.fixture
def rec() -> Iterator[HttpReceiver]:
    with http_receiver_thread() as r:
        yield r


def config(rec: HttpReceiver, target: Target, mode: str, targets: list[dict[str, Any]] | None = None,
           ) -> dict[str, Any]:
    return {
        "location": "fra1",
        "public_url": "https://status.example.org",
        "notify": {"group_wait": "200ms", "targets": targets or [
            {"name": "ops", "url": f"json://{rec.url}/hook/${{HOOK_TOKEN}}/{LITERAL}",
             "retry_initial": "50ms"}]},
        "services": {"demo": {"title": "Demo AI", "checks": {"api": {
            "url": target.url(f"/switch/{mode}"), "interval": "100ms", "timeout": "90ms",
            "open_after": 2, "close_after": 2}}}},
    }


def test_the_daemon_announces_an_outage_and_its_end_and_keeps_the_token_to_itself(
        rec: HttpReceiver, target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    path = f"/hook/{SECRET}/{LITERAL}"
    target.mode["notify-e2e"] = "500"
    with start_daemon(config(rec, target, "notify-e2e"), tmp_path, cli_args=("--log-level", "debug")) as d:
        opened = wait_for(lambda: rec.delivered(path), timeout=20)[0].json
        assert opened["title"] == "Demo AI: api down"
        assert opened["type"] == "failure"
        assert "- api: http_5xx, since " in opened["message"]
        assert "https://status.example.org/services/demo" in opened["message"]
        wait_for(lambda: d.value("aipulse_notifications_total", target="ops", result="sent") == 1)
        target.mode["notify-e2e"] = "ok"
        closed = wait_for(lambda: rec.delivered(path)[1:], timeout=20)[0].json
        assert closed["type"] == "success"
        assert closed["title"].startswith("Demo AI: api back up after ")
        wait_for(lambda: d.value("aipulse_notifications_total", target="ops", result="sent") == 2)
        assert d.value("aipulse_notifications_total", target="ops", result="failed") == 0
        assert d.value("aipulse_notifications_total", target="ops", result="dropped") == 0
        assert d.value("aipulse_notification_queue_depth", target="ops") == 0
        metrics = d.get("/metrics").text
        promtool = shutil.which("promtool")
        assert promtool, "promtool is required (Debian package prometheus)"
        check = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True)
        assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
        answers = [metrics] + [d.get(p).text for p in ("/api/v1/status", "/api/v1/outages", "/",
                                                       "/services/demo")]
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(10)
    log = d.log.read_text()
    assert "notify ops (json): sent 'Demo AI: api down'" in log  # debug level: everything is logged
    for text in [*answers, log]:
        assert SECRET not in text and LITERAL not in text


def test_a_reload_adds_and_removes_targets(rec: HttpReceiver, target: Target, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    target.mode["notify-reload"] = "ok"
    first = config(rec, target, "notify-reload")
    with start_daemon(first, tmp_path) as d:
        assert d.value("aipulse_notifications_total", target="ops", result="sent") == 0
        second = config(rec, target, "notify-reload", targets=[
            {"name": "pager", "url": f"json://{rec.url}/pager", "kinds": ["down"]}])
        second["listen"] = f"127.0.0.1:{d.port}"
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(second))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.value("aipulse_notification_queue_depth", target="pager") == 0)
        assert d.value("aipulse_notifications_total", target="ops", result="sent") is None  # gone
        target.mode["notify-reload"] = "503"
        pager = wait_for(lambda: rec.delivered("/pager"), timeout=20)[0].json
        assert pager["title"] == "Demo AI: api down"


def notify_test(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[int, str, str]:
    """`aipulse notify-test` in this process (each start of a Python with Apprise costs ~2 s here)."""
    status = main(["notify-test", "-c", str(cfg), *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_notify_test_prints_what_each_target_answered(rec: HttpReceiver, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    rec.plan[f"/broken/{SECRET}/{LITERAL}"].extend([("echo", 500)] * 2)
    doc = {"location": "fra1", "public_url": "https://status.example.org",
           "notify": {"targets": [
               {"name": "ops", "url": f"json://{rec.url}/ops"},
               {"name": "broken", "url": f"json://{rec.url}/broken/${{HOOK_TOKEN}}/{LITERAL}"}]},
           "services": {"demo": {"checks": {"api": {"url": "http://127.0.0.1:9/"}}}}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(doc))

    status, out, err = notify_test(capsys, cfg)
    assert status == 1, err
    lines = out.splitlines()
    assert lines[0].split() == ["TARGET", "RESULT", "TIME", "ANSWER"]
    ops = next(li for li in lines if li.startswith("ops (json)"))
    broken = next(li for li in lines if li.startswith("broken (json)"))
    assert ops.split()[2] == "sent" and ops.endswith("Sent JSON POST notification.")
    assert broken.split()[2] == "failed"
    assert broken.endswith("Failed to send JSON POST notification: Internal server error., error=500. "
                           "Response Details: b'Cannot POST /<redacted>'")
    test_message = rec.delivered("/ops")[0].json
    assert test_message["title"] == "aipulse: test notification"
    assert "A test from aipulse at fra1 to the target **ops**" in test_message["message"]
    assert "https://status.example.org/" in test_message["message"]
    for text in (out, err):
        assert SECRET not in text and LITERAL not in text and "/broken" not in text

    status, out, _ = notify_test(capsys, cfg, "ops")
    assert status == 0 and [li.split()[0] for li in out.splitlines()[1:]] == ["ops"]
    status, out, _ = notify_test(capsys, cfg, "broken")
    assert status == 1  # one attempt, no retries: it says at once what is wrong
    assert len([r for r in rec.requests if r.path.startswith("/broken")]) == 2

    status, _, err = notify_test(capsys, cfg, "nope")
    assert status == 2
    assert err.strip() == f'aipulse notify-test: no target named "nope" in {cfg} (targets: ops, broken)'

    del doc["notify"]
    cfg.write_text(yaml.safe_dump(doc))
    status, _, err = notify_test(capsys, cfg)
    assert (status, err.strip()) == (1, f"{cfg}: no notify.targets to test")


def test_the_readme_notify_examples_are_a_valid_config(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Notifications"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n")]
    doc = yaml.safe_load(example)
    doc["services"] = {sid: {"checks": {"api": {"url": "https://example.com/"}}}
                       for sid in ("openai", "anthropic")}
    (tmp_path / "slack-webhook").write_text("T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = parse(yaml.safe_dump(doc), "README.md", env={"SMTP_PASSWORD": "pw", "NTFY_TOPIC": "x1"})
    assert [t.name for t in cfg.targets] == ["oncall-mail", "team-slack", "phone"]
    assert cfg.targets[0].min_duration == 120 and cfg.targets[1].services == {"openai", "anthropic"}
