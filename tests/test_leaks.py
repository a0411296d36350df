"""What leaves the process: secrets cut to length or encoded on the wire, webhook
tokens echoed by a receiver, cookies in debug logs, and what a target sends reaching
the operator's terminal. Real daemon, real targets, every output read back."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from helpers import start_daemon, wait_for
from ownport import serve_app
from targets import Target

# Longer than the 57 characters an assertion detail quotes, so the detail cuts it.
LONG = "sk-test-SUPERSECRET-8c1f4e2a9b7d3e6f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f"
PASSWORD = "pw-7Hq2xZ9kLm4N"  # in the URL's user info: sent as Basic auth
QUOTED = 'qk-"quo\\ted-5Tz8wR'  # JSON and repr() escape it


def forms() -> dict[str, str]:
    """What must appear nowhere, computed here without monitor.redact: the first 6
    characters of each secret, of its JSON-escaped form, and the base64 of the
    password inside `probe:<password>` (6 bytes of prefix: base64-aligned)."""
    basic = base64.b64encode(b"probe:" + PASSWORD.encode()).decode()
    return {"long": LONG[:6], "long, cut": LONG[8:20], "password": PASSWORD[:6], "quoted": QUOTED[:6],
            "quoted, JSON": json.dumps(QUOTED)[1:9], "password, Basic auth": basic[8:14]}


def test_cut_and_encoded_secrets_never_show(tmp_path: Path, target: Target,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPULSE_LONG", LONG)
    monkeypatch.setenv("AIPULSE_PW", PASSWORD)
    monkeypatch.setenv("AIPULSE_QUOTED", QUOTED)
    echo = target.url("/echo-headers")  # answers our request headers as JSON
    config = {
        "defaults": {"interval": "300ms", "timeout": "300ms", "open_after": 1},
        "services": {"acme": {"checks": {
            "bearer": {"url": echo, "headers": {"Authorization": "Bearer ${AIPULSE_LONG}"},
                       "expect": {"json": {"$.Authorization": "something else"}}},
            "userinfo": {"kind": "flow", "steps": [{
                "name": "echo", "url": echo.replace("http://", "http://probe:${AIPULSE_PW}@"),
                "expect": {"json": {"$.Authorization": "something else"}}}]},
            "quoted": {"url": echo, "headers": {"X-Api-Key": "${AIPULSE_QUOTED}"},
                       "expect": {"json": {"$.X-Api-Key": "something else"}}},
        }}},
    }
    with start_daemon(config, tmp_path, db=tmp_path / "h.db") as d:
        def details() -> dict[str, str]:
            checks = d.get("/api/v1/status").json()["services"][0]["checks"]
            return {c["id"]: (c["last_result"] or {}).get("detail", "") for c in checks}

        seen = wait_for(lambda: (lambda x: x if all(x.values()) else None)(details()))
        outputs = {"status API": d.get("/api/v1/status").text, "outages API": d.get("/api/v1/outages").text,
                   "page": d.get("/").text, "service page": d.get("/services/acme").text,
                   "metrics": d.get("/metrics").text}
    outputs["log"] = d.log.read_text()
    outputs["history"] = b"".join(p.read_bytes() for p in tmp_path.glob("h.db*")).decode("latin-1")
    once = subprocess.run([sys.executable, "-m", "monitor.cli", "once", "-c", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    once_json = subprocess.run([sys.executable, "-m", "monitor.cli", "once", "--json", "-c",
                                str(tmp_path / "config.yaml")], capture_output=True, text=True, timeout=60,
                               cwd=tmp_path)
    outputs["once"] = once.stdout + once.stderr
    outputs["once --json"] = once_json.stdout + once_json.stderr
    print(json.dumps(seen, indent=1))
    for where, text in outputs.items():
        for what, form in forms().items():
            assert form not in text, f"{what} ({form!r}) in the {where}"
    # the details are real: each quotes what the target echoed, redacted
    assert all("<redacted>" in text for text in seen.values()), seen
    assert "acme" in outputs["once"] and "bearer" in outputs["once --json"]


def test_check_config_does_not_print_an_escaped_secret(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A value quoted with repr() in an error shows a secret with backslashes and tabs
    escaped: that form used to get through."""
    secret = 'sk-te"st\\SUPER\tSECRET'
    monkeypatch.setenv("AIPULSE_ODD", secret)
    bad = tmp_path / "bad.yaml"
    bad.write_text('limits:\n  max_in_flight: "${AIPULSE_ODD}"\n'
                   "services:\n  s:\n    checks:\n      c:\n        url: http://127.0.0.1:1/\n")
    result = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "-c", str(bad)],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 1
    assert "limits.max_in_flight" in result.stderr and "<redacted>" in result.stderr, result.stderr
    assert "sk-te" not in result.stderr and "SUPER" not in result.stderr, result.stderr


def _hook_receiver() -> web.Application:
    """Answers every POST like Express does for an unknown route: 404, echoing the path."""
    async def post(request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"Cannot POST {request.raw_path}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", post)
    return app


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_webhook_tokens_stay_out_of_the_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            log_format: str) -> None:
    literal = "T0K3N-literal-9f8e7d6c5b4a"
    from_env = "T0K3N-env-1a2b3c4d5e6f"
    monkeypatch.setenv("AIPULSE_HOOK_TOKEN", from_env)
    with serve_app(_hook_receiver()) as port:
        hook = f"http://127.0.0.1:{port}"
        config = {
            "notify": {"webhooks": [
                {"url": f"{hook}/hook/abc/{literal}", "max_attempts": 1},
                {"url": f"{hook}/services/x/${{AIPULSE_HOOK_TOKEN}}?sig=q1w2e3r4t5", "max_attempts": 1},
            ]},
            "defaults": {"interval": "200ms", "timeout": "200ms", "open_after": 1},
            "services": {"acme": {"checks": {"down": {"url": "http://127.0.0.1:1/"}}}},
        }
        with start_daemon(config, tmp_path, cli_args=("--log-format", log_format)) as d:
            wait_for(lambda: d.log.read_text().count("dropped after 1 attempt") >= 2)
    log = d.log.read_text()
    assert f"webhook {hook}: outage_opened acme/down dropped after 1 attempt(s): HTTP 404: Cannot POST" in log
    for token in (literal, from_env, "q1w2e3r4t5", "hook/abc", "services/x/"):
        assert token not in log, f"{token} in the {log_format} log:\n{log}"


def _stream_target() -> web.Application:
    """An SSE answer whose error message is terminal escape codes: retitle the window,
    clear the screen, and a fake green "ok"."""
    async def post(request: web.Request) -> web.Response:
        message = "\x1b]0;pwned\x07\x1b[2J\x1b[32mok\x1b[0m \x9b31m"
        event = json.dumps({"error": {"type": "server_error", "message": message}})
        return web.Response(text=f"data: {event}\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", post)
    return app


def test_once_escapes_what_targets_send(tmp_path: Path) -> None:
    with serve_app(_stream_target()) as port:
        config = tmp_path / "config.yaml"
        config.write_text(json.dumps({"services": {"llm": {"checks": {"chat": {
            "kind": "stream", "format": "openai", "method": "POST", "json": {"stream": True},
            "url": f"http://127.0.0.1:{port}/v1/chat/completions"}}}}}))
        table = subprocess.run([sys.executable, "-m", "monitor.cli", "once", "-c", str(config)],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path)
        as_json = subprocess.run([sys.executable, "-m", "monitor.cli", "once", "--json", "-c", str(config)],
                                 capture_output=True, text=True, timeout=60, cwd=tmp_path)
    print(table.stdout)
    assert table.returncode == 1 and "stream_error" in table.stdout
    assert "\\x1b]0;pwned" in table.stdout  # shown, escaped
    for out in (table.stdout, table.stderr, as_json.stdout, as_json.stderr):
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out


def _cookie_target() -> web.Application:
    async def get(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.set_cookie("session", "c00kie-V4LUE-123456", httponly=True)
        return response

    app = web.Application()
    app.router.add_get("/", get)
    return app


def test_debug_logs_never_show_cookie_values(tmp_path: Path) -> None:
    with serve_app(_cookie_target()) as port:
        config = tmp_path / "config.yaml"
        url = f"http://127.0.0.1:{port}/"
        config.write_text(json.dumps({"services": {"s": {"checks": {
            "plain": {"url": url},
            "flow": {"kind": "flow", "steps": [{"name": "one", "url": url},
                                               {"name": "two", "url": url}]}}}}}))
        result = subprocess.run([sys.executable, "-m", "monitor.cli", "--log-level", "debug", "once", "-c",
                                 str(config)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DEBUG" in result.stderr  # debug logging was on
    assert "c00kie-V4LUE" not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [
    ["--since", "9999-12-31T23:59:59-23:59"], ["--until", "9999-12-31T23:59:59-23:59"],
    ["--since", "0001-01-01T00:00:00+23:59"], ["--since", "10000-01-01T00:00:00Z"],
])
def test_cli_times_out_of_range_are_clear_errors(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "h.db"
    db.touch()
    result = subprocess.run([sys.executable, "-m", "monitor.cli", "outages", "--db", str(db), *args],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and args[1] in result.stderr, result.stderr
