"""Config fuzzing: whatever YAML comes in, the result is a Config or a ConfigError whose
every line is `file:line: message`, never another exception; and `aipulse check-config`
never crashes. Bounded example counts keep it fast; no example database is written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import Config, ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent
LOCATED = re.compile(r"^[^:]+:\d+: ")
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENV = {"API_KEY": "sk-fuzz-123456", "EMPTY": ""}


def parse_or_located_error(text: str) -> Config | ConfigError:
    try:
        config = parse(text, "fuzz.yaml", env=ENV)
    except ConfigError as exc:
        assert exc.errors
        for line in str(exc).split("\n"):
            assert LOCATED.match(line), repr(line)
        assert str(exc).splitlines() == str(exc).split("\n")  # no \r, \u2028, ... inside a line
        return exc
    assert isinstance(config, Config)
    return config


# ---------------------------------------------------------------------------- strategies

KEYS = [
    "listen", "location", "storage", "limits", "defaults", "services", "notify", "status_page_interval",
    "web_config", "path", "results_retention", "max_in_flight", "per_host_rate", "checks", "title",
    "status_page", "maintenance", "url", "kind", "method", "headers", "body", "json", "interval",
    "timeout", "open_after", "close_after", "max_body_bytes", "critical", "expect", "steps", "format",
    "idle_timeout", "status", "body_contains", "body_regex", "max_latency", "cert_min_days", "max_ttft",
    "name", "extract", "always_run", "start", "every", "duration", "webhooks", "secret", "max_attempts",
    "retry_initial", "svc", "api", "Authorization", "$.data[0].id",
]
VALUES = [
    "30s", "500ms", "0s", "1h30m", "9" * 400 + "d", "-1s", "1MiB", "9" * 400 + "MiB", "0B", "http://127.0.0.1/",
    "https://api.example.com/v1/models?key=${API_KEY}", "ftp://x/", "http://[::1/", "http://x:99999/",
    "${API_KEY}", "${MISSING}", "${MISSING:-d}", "${file:cred}", "${", "$$", "${EMPTY}", "2xx", "200-299",
    "600", "GET", "post", "flow", "stream", "openai", "$.a[", "$..*", "(", "a{99999999999}", "header:X",
    "cookie:s", "regex:(", "sun 03:00", "daily 25:00", "2026-12-01T02:00:00Z", "2026-13-45", "127.0.0.1:9478",
    ":99999", "{{token}}", "\n", "\x00", "\x1b[2J", "\u2028", "\ud7ff", "é", "",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**305),
    st.floats(), st.text(max_size=12), st.sampled_from(VALUES),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30)


def config_shaped(check: Any, top: Any) -> dict[str, Any]:
    return {**top, "services": {"svc": {"checks": {"api": check}}}}


shaped = st.builds(config_shaped, st.dictionaries(st.sampled_from(KEYS), documents, max_size=6),
                   st.dictionaries(st.sampled_from(KEYS[:9]), documents, max_size=3))

BASE = (ROOT / "config.yaml").read_text()


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The bundled config.yaml with a few lines deleted, duplicated, re-indented,
    cut, given a random value or a few random characters."""
    lines = BASE.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "indent", "value", "truncate"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(max_size=4)) + lines[i][at:]
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 9)) + lines[i].lstrip()
        elif op == "value" and ":" in lines[i]:
            value = yaml.safe_dump(draw(scalars), default_flow_style=True, allow_unicode=True)
            lines[i] = lines[i].split(":", 1)[0] + ": " + value.removesuffix("\n...\n").strip()
        elif op == "truncate":
            lines = lines[:i]
    return "\n".join(lines)


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------------------- properties

@FUZZ
@given(st.text())
def test_random_text(text: str) -> None:
    parse_or_located_error(text)


@FUZZ
@given(documents)
def test_random_structures(doc: Any) -> None:
    parse_or_located_error(dump(doc))


@FUZZ
@given(shaped)
def test_random_values_under_config_keys(doc: dict[str, Any]) -> None:
    parse_or_located_error(dump(doc))


@FUZZ
@given(mutated())
def test_mutated_bundled_config(text: str) -> None:
    parse_or_located_error(text)


def test_the_bundled_config_parses() -> None:
    assert isinstance(parse_or_located_error(BASE), Config)


# ---------------------------------------------------------------------------- found by fuzzing

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
CHECK = "services:\n  svc:\n    checks:\n      api:\n        url: http://x/\n"


@pytest.mark.parametrize(("text", "message"), [
    # newlines and terminal escapes in keys and values stay inside one escaped line
    pytest.param("services:\n  \"a\\nb\\x1b[2J\": {}\n", 'invalid service id "a\\nb\\x1b[2J"',
                 id="newline_in_a_key"),
    pytest.param(CHECK.replace("api:", '"a\\u2028b":'), 'invalid check id "a\\u2028b"', id="u2028_in_a_key"),
    pytest.param(CHECK.replace("http://x/", '"ftp://x/\\r\\n"'), 'invalid URL "ftp://x/\\r\\n"',
                 id="crlf_in_a_value"),
    # YAML constructors raising ValueError
    pytest.param(CHECK + "        body: 2026-13-45\n", "invalid value '2026-13-45'", id="bad_date"),
    pytest.param(CHECK + "        json: {n: " + "9" * 5000 + "}\n", "Exceeds the limit", id="5000_digits"),
    # numbers too large for a float
    pytest.param(CHECK + "        max_body_bytes: " + "9" * 400 + "MiB\n", "(too large)", id="infinite_size"),
    pytest.param(CHECK + "        interval: " + "9" * 400 + "d\n", "(too long)", id="infinite_interval"),
    pytest.param("limits: {per_host_rate: .nan}\n" + CHECK, "must be a number above 0, got nan", id="nan"),
    pytest.param("limits: {per_host_rate: .inf}\n" + CHECK, "must be a number above 0, got inf", id="inf"),
    # errors in these keys were computed after the error check, and silently dropped
    pytest.param("status_page_interval: 5x\n" + CHECK, 'status_page_interval: invalid duration "5x"',
                 id="status_page_interval"),
    pytest.param("web_config: [a]\n" + CHECK, "web_config: must be a string", id="web_config"),
    pytest.param("[" * 100_000, "invalid YAML", id="deep_nesting"),
    # billion laughs (10**9 items by alias expansion): see test_check_config_on_nasty_files
])
def test_inputs_the_fuzzer_found(text: str, message: str) -> None:
    error = parse_or_located_error(text)
    assert isinstance(error, ConfigError)
    assert message in str(error), str(error)


# ---------------------------------------------------------------------------- the command

def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=path.parent,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    return proc


@settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(max_size=200), st.builds(lambda d: dump(d).encode(), shaped),
                 st.builds(str.encode, mutated())))
def test_check_config_never_crashes(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_bytes(content)
    proc = check_config(path)
    if proc.returncode == 1:
        assert all(LOCATED.match(line) for line in proc.stderr.splitlines()), proc.stderr


@pytest.mark.parametrize("content", [
    b"", b"\xff\xfe\x00garbage", b"\xef\xbb\xbf" + CHECK.encode(), LAUGHS.encode(), b"\t- a\n",
], ids=["empty", "not_utf8", "bom", "billion_laughs", "tab"])
def test_check_config_on_nasty_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    proc = check_config(path)
    assert proc.returncode == (0 if content.startswith(b"\xef\xbb\xbf") else 1), proc.stderr
    if proc.returncode == 1:
        assert all(LOCATED.match(line) for line in proc.stderr.splitlines()), proc.stderr
    if content == LAUGHS.encode():
        assert "document too large" in proc.stderr


def test_check_config_on_a_directory(tmp_path: Path) -> None:
    proc = check_config(tmp_path)
    assert proc.returncode == 1 and "cannot read" in proc.stderr
