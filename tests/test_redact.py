"""Redaction and the log filters, as pure functions: every shape a secret takes, and
what a log line may still say."""

from __future__ import annotations

import base64
import html
import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from monitor.logs import RedactingFilter, ServerErrorFilter, printable
from monitor.redact import Redactor, url_secrets

SECRET = "sk-test-SUPER/SECRET+key=42"


def shapes(secret: str) -> dict[str, str]:
    """The secret as the wire and our outputs write it, computed without monitor.redact."""
    return {
        "raw": secret, "percent": quote(secret, safe=""),
        "percent, lower-case": quote(secret, safe="").lower(),
        "form-encoded": quote_plus(secret), "JSON": json.dumps(secret)[1:-1], "repr": repr(secret)[1:-1],
        "HTML": html.escape(secret),
        "Basic auth": base64.b64encode(f"probe:{secret}".encode()).decode(),
        "Basic auth, 1 byte user": base64.b64encode(f"u:{secret}".encode()).decode(),
        "Basic auth, 2 byte user": base64.b64encode(f"us:{secret}".encode()).decode(),
        "URL-safe base64": base64.urlsafe_b64encode(secret.encode()).decode(),
    }


@pytest.mark.parametrize("shape", list(shapes(SECRET)))
def test_every_shape_of_a_secret_is_redacted(shape: str) -> None:
    text = shapes(SECRET)[shape]
    out = Redactor({SECRET})(f"seen: {text} (end)")
    assert out.startswith("seen: ") and out.endswith(" (end)") and "<redacted>" in out
    # nothing of the secret's own characters survives, beyond what the encoding's first
    # bytes share with the user name (the "probe:" of Basic auth)
    for i in range(len(SECRET) - 5):
        assert SECRET[i:i + 6] not in out
    if shape.startswith("Basic"):
        core = text[len(text) // 4: len(text) // 4 + 8]  # well inside the secret's bytes
        assert core not in out


@pytest.mark.parametrize("cut", [6, 7, 12, len(SECRET) - 1])
def test_a_secret_cut_to_length_loses_every_character_it_kept(cut: int) -> None:
    out = Redactor({SECRET})(f'is "Bearer {SECRET[:cut]}...", expected "x"')
    assert out == 'is "Bearer <redacted>...", expected "x"'


def test_fewer_than_six_characters_of_a_secret_are_ordinary_text() -> None:
    assert Redactor({SECRET})("sk-te and sk-tes") == "sk-te and <redacted>"


def test_short_secrets_only_whole_and_tiny_ones_never() -> None:
    r = Redactor({"abcd", "xy"})
    assert r("abcd abc xy") == "<redacted> abc xy"


def test_overlapping_and_adjacent_secrets_make_one_mark() -> None:
    r = Redactor({"alpha-secret-1", "secret-1-beta"})
    assert r("[alpha-secret-1-beta]") == "[<redacted>]"


def test_a_scheme_word_before_a_secret_is_not_redacted() -> None:
    r = Redactor({"Bearer sk-abcdef123456", "sk-abcdef123456"})
    assert r("WWW-Authenticate: Bearer realm=x; sent Bearer sk-abcdef12") == (
        "WWW-Authenticate: Bearer realm=x; sent Bearer <redacted>")


def test_whole_only_strings_keep_their_ordinary_start() -> None:
    r = Redactor(whole={"https://hooks.example.com/services/T0/B0/abc"})
    assert r("webhook https://hooks.example.com: failed") == "webhook https://hooks.example.com: failed"
    assert r("POST https://hooks.example.com/services/T0/B0/abc") == "POST <redacted>"


def test_with_secrets_adds_to_what_is_redacted() -> None:
    base = Redactor({"config-secret-1"})
    more = base.with_secrets({"extracted-token-2"})
    assert more("config-secret-1 extracted-token-2") == "<redacted> <redacted>"
    assert base("extracted-token-2") == "extracted-token-2"


def test_many_secrets_use_the_same_rules() -> None:
    secrets = {f"key-{i:05d}-{'x' * 10}" for i in range(500)}  # past the regex size: the scan path
    r = Redactor(secrets)
    assert r("a key-00042-xxxx b key-00499-xxxxxxxxxx c") == "a <redacted> b <redacted> c"


@pytest.mark.parametrize(("url", "hidden", "kept"), [
    ("https://hooks.slack.com/services/T0A1B2C3/B4D5E6F7/abcdefghijklmnopqrstuvwx",
     ["T0A1B2C3", "B4D5E6F7", "abcdefghijklmnopqrstuvwx"], ["services", "hooks.slack.com"]),
    ("https://discord.com/api/webhooks/123456789012345678/Tok-en_value-here",
     ["123456789012345678", "Tok-en_value-here"], ["webhooks", "discord.com"]),
    ("https://example.com/hook?token=q1w2e3r4&x=1", ["q1w2e3r4"], ["example.com"]),
    ("https://user:pa55word@example.com/h", ["pa55word"], ["example.com"]),
    ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-100123",
     ["AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"], []),
])
def test_notification_urls_lose_their_tokens_not_their_host(url: str, hidden: list[str],
                                                            kept: list[str]) -> None:
    secrets, whole = url_secrets(url)
    r = Redactor(secrets, whole)
    line = f"target {url} failed: Cannot POST {url.split('://', 1)[1].split('/', 1)[-1]} ({' '.join(hidden)})"
    out = r(line)
    for token in hidden:
        assert token not in out, out
    for word in kept:
        assert word in r(f"host {word} is fine"), word


def record(msg: str, *args: object, name: str = "aipulse", level: int = logging.WARNING,
           exc: BaseException | None = None) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    if exc is not None:
        try:
            raise exc
        except BaseException as e:
            rec.exc_info = (type(e), e, e.__traceback__)
    return rec


def test_redacting_filter_cleans_message_traceback_extras_and_cookies() -> None:
    f = RedactingFilter(Redactor({"sk-live-0123456789"}), controls=True)
    rec = record("sent %s; %s", "Bearer sk-live-0123456789",
                 "headers [(b'Set-Cookie', b'session=abc123; HttpOnly'), (b'Cookie', b'a=b')]",
                 exc=ValueError("key sk-live-01234 refused"))
    rec.detail = "\x1b[2Jsk-live-0123456789"
    assert f.filter(rec)
    text = rec.getMessage() + rec.exc_text + rec.detail
    assert "sk-live-0123" not in text and "abc123" not in text and "a=b" not in text
    assert "\x1b" not in rec.detail and "\\x1b[2J" in rec.detail
    assert rec.getMessage() == ("sent Bearer <redacted>; headers [(b'Set-Cookie', b'<redacted>'), "
                                "(b'Cookie', b'<redacted>')]")


def test_printable_escapes_terminal_controls_but_not_line_breaks() -> None:
    assert printable("a\x1b]0;x\x07b\x9bc\u202ed\te\nf\rg") == "a\\x1b]0;x\\x07b\\x9bc\\u202ed\te\nf\\rg"


def test_server_errors_are_logged_once_per_kind_per_minute() -> None:
    now = [0.0]
    f = ServerErrorFilter(every=60.0, clock=lambda: now[0])
    emfile = OSError(24, "Too many open files")
    kept = []
    for i in range(1000):
        now[0] = i * 0.1  # 100 s of errors, ten a second
        rec = record("socket.accept() out of system resource\nsocket: <fd=9>", name="asyncio",
                     level=logging.ERROR, exc=emfile)
        if f.filter(rec):
            kept.append(rec)
    assert len(kept) == 2  # at 0 s and at 60 s
    assert kept[0].getMessage() == ("socket.accept() out of system resource: "
                                    "OSError: [Errno 24] Too many open files")
    assert kept[0].exc_info is None  # no traceback for a resource error
    assert kept[1].getMessage().endswith("(599 more like this in the last 60 s, not logged)")
    # another kind, and our own loggers, pass
    assert f.filter(record("Error handling request", name="aiohttp.server", level=logging.ERROR))
    assert all(f.filter(record("aipulse line")) for _ in range(3))
