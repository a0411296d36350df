"""Log formats: text, journald (priority prefixes when stderr is the journal stream), JSON lines.

Each case configures logging in a fresh interpreter whose stderr is a real file, so the
JOURNAL_STREAM check sees a real device and inode, exactly as under systemd."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from monitor import logs

EMIT = textwrap.dedent("""
    import logging, sys
    from monitor import logs
    logs.setup(sys.argv[1], sys.argv[2])
    log = logging.getLogger("aipulse")
    log.debug("debug line")
    log.info("info line")
    log.warning("deepseek/api: outage since %s (%s)", "2025-01-27T13:33:00Z", "connect")
    log.error("two\\nlines")
    logging.getLogger("aipulse.store").critical("disk full")
    logging.getLogger("httpx").info('HTTP Request: GET https://x.example/?key=secret "200 OK"')
    try:
        {}["missing"]
    except KeyError:
        log.exception("probe crashed")
    log.info("with extra", extra={"service": "deepseek", "check": "api"})
""")


def emit(tmp_path: Path, level: str, fmt: str, journal: str | None = None) -> list[str]:
    """Run EMIT with stderr going to a file; `journal`: "match" sets JOURNAL_STREAM to
    that file's dev:inode, "other" to some other file's."""
    err = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err.open("w") as f:
        if journal is not None:
            st = os.fstat(f.fileno()) if journal == "match" else os.stat(tmp_path)
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run([sys.executable, "-c", EMIT, level, fmt], stdout=subprocess.PIPE,
                              stderr=f, env=env, text=True)
    out = err.read_text()
    assert proc.returncode == 0, out
    assert proc.stdout == ""
    return out.splitlines()


TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def test_text_format(tmp_path: Path) -> None:
    lines = emit(tmp_path, "info", "text")
    assert re.fullmatch(TS + r" INFO aipulse: info line", lines[0]), lines
    assert re.fullmatch(TS + r" WARNING aipulse: deepseek/api: outage since 2025-01-27T13:33:00Z \(connect\)",
                        lines[1]), lines
    assert re.fullmatch(TS + r" ERROR aipulse: two", lines[2]) and lines[3] == "lines"
    assert re.fullmatch(TS + r" CRITICAL aipulse.store: disk full", lines[4])
    assert re.fullmatch(TS + r" ERROR aipulse: probe crashed", lines[5])
    assert lines[6] == "Traceback (most recent call last):"
    assert lines[-2] == "KeyError: 'missing'"
    assert re.fullmatch(TS + r" INFO aipulse: with extra", lines[-1])
    text = "\n".join(lines)
    assert "debug line" not in text
    # httpx logs every request with its full URL at INFO: never at our info level.
    assert "secret" not in text


def test_debug_level_shows_debug(tmp_path: Path) -> None:
    lines = emit(tmp_path, "debug", "text")
    assert re.fullmatch(TS + r" DEBUG aipulse: debug line", lines[0]), lines


def test_journal_format_has_priority_prefixes_and_no_timestamps(tmp_path: Path) -> None:
    lines = emit(tmp_path, "debug", "text", journal="match")
    assert lines[:7] == [
        "<7>DEBUG aipulse: debug line",
        "<6>INFO aipulse: info line",
        "<4>WARNING aipulse: deepseek/api: outage since 2025-01-27T13:33:00Z (connect)",
        "<3>ERROR aipulse: two",
        "<3>lines",  # every line of a record carries its priority
        "<2>CRITICAL aipulse.store: disk full",
        "<3>ERROR aipulse: probe crashed",
    ], lines
    # The traceback lines are error entries too, not info ones.
    assert lines[7] == "<3>Traceback (most recent call last):"
    assert lines[-2] == "<3>KeyError: 'missing'"
    assert lines[-1] == "<6>INFO aipulse: with extra"
    assert all(re.match(r"<[2-7]>", line) for line in lines)
    assert not any(re.match(r"<\d>" + TS, line) for line in lines)  # the journal stamps entries


def test_journal_stream_of_another_file_keeps_the_text_format(tmp_path: Path) -> None:
    # JOURNAL_STREAM inherited, but stderr was redirected elsewhere: not the journal.
    lines = emit(tmp_path, "info", "text", journal="other")
    assert re.fullmatch(TS + r" INFO aipulse: info line", lines[0]), lines


def test_json_lines(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    lines = emit(tmp_path, "info", "json")
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    records = [json.loads(line) for line in lines]  # every line is one whole object
    assert [r["message"] for r in records] == [
        "info line", "deepseek/api: outage since 2025-01-27T13:33:00Z (connect)", "two\nlines",
        "disk full", "probe crashed", "with extra"]
    assert [r["level"] for r in records] == ["info", "warning", "error", "critical", "error", "info"]
    assert [r["logger"] for r in records] == ["aipulse"] * 3 + ["aipulse.store"] + ["aipulse"] * 2
    for r in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r
        assert before <= dt.datetime.fromisoformat(r["time"]) <= after
    crashed = records[4]
    assert crashed["exception"].startswith("Traceback (most recent call last):\n")
    assert crashed["exception"].endswith("KeyError: 'missing'")
    assert "exception" not in records[1]
    assert records[5]["service"] == "deepseek" and records[5]["check"] == "api"
    assert not any("secret" in line for line in lines)


def test_json_on_the_journal_gets_priority_prefixes(tmp_path: Path) -> None:
    # journald strips `<N>`: the stored message is the bare JSON object, with its priority.
    lines = emit(tmp_path, "debug", "json", journal="match")
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>", "<6>"], lines
    records = [json.loads(line[3:]) for line in lines]
    assert [r["level"] for r in records] == ["debug", "info", "warning", "error", "critical", "error",
                                             "info"]
    assert "KeyError: 'missing'" in records[5]["exception"]


def test_json_exception_stays_one_line(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import logging
        from monitor import logs
        logs.setup("info", "json")
        def inner():
            raise ValueError("bad\\nvalue \\u2028 with separators")
        try:
            inner()
        except ValueError:
            logging.getLogger("aipulse").exception("multi\\nline\\r\\nmessage")
        logging.getLogger("aipulse").warning("stack", stack_info=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    raw = proc.stderr.encode()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n"), proc.stderr
    assert len(proc.stderr.splitlines()) == 2  # also for readers that split on U+2028
    first, second = (json.loads(line) for line in proc.stderr.splitlines())
    assert first["message"] == "multi\nline\r\nmessage"
    assert first["exception"].endswith("ValueError: bad\nvalue \u2028 with separators")
    assert second["stack"].startswith("Stack (most recent call last):")


def test_setup_rejects_unknown_format_and_level() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.setup("info", "xml")
    with pytest.raises(ValueError, match="log level"):
        logs.setup("loud", "text")


def test_syslog_priorities() -> None:
    assert [logs.syslog_priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
