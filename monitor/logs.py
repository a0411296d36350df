"""Logging setup: plain text, journald-friendly text, or JSON lines, all on stderr.

- `text` (default): `2026-01-01 12:00:00,123 WARNING aipulse: message`.
- Under systemd with stderr connected to the journal (`$JOURNAL_STREAM` names stderr's
  device and inode, as systemd.exec(5) says to check), `text` drops the timestamp (the
  journal adds its own) and prefixes every line with its syslog priority, `<4>` for a
  warning, which journald strips and stores as the entry's priority: `journalctl -p
  warning -u aipulse` then works. Continuation lines of a traceback carry the same
  prefix, or journald would file them as separate info entries.
- `json`: one JSON object per line with `time` (RFC 3339, UTC, milliseconds), `level`,
  `logger`, `message`, plus `exception` / `stack` text when present and any `extra=`
  fields. Newlines inside a message or traceback are escaped by the encoder, so every
  record stays exactly one line (non-ASCII is escaped too, so even U+2028 cannot
  split a line for a reader that treats it as a line break). On the journal stream
  each line gets the `<N>` prefix as well: journald strips it, so the stored MESSAGE
  is still exactly the JSON object, and the entry has the right priority.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import IO, Any

from monitor.units import rfc3339

__all__ = ["FORMATS", "JSONFormatter", "JournalFormatter", "journal_stream", "setup"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Libraries that log one line per request at INFO, with the full URL (query strings
# can hold API keys): never at our info level.
_QUIET = {"httpx": logging.WARNING}

# The attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def syslog_priority(levelno: int) -> int:
    """Python level -> syslog priority (sd-daemon(3) prefixes: `<3>` error ... `<7>` debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """`<4>WARNING aipulse: message`, no timestamp, the prefix on every line."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line; `journal=True` adds the `<N>` prefix."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc and not key.startswith("_"):
                doc[key] = value
        line = json.dumps(doc, default=str)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line


def journal_stream(stream: IO[str] | None = None) -> bool:
    """True if `stream` (default stderr) is the journal stream systemd connected us to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):  # no real fd (captured), or garbage
        return False


def setup(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Configure the root logger once for the process; returns the handler it installed.

    `level` is a level name (`debug`, `info`, `warning`, `error`); `fmt` is `text` or
    `json`. Replaces any handlers installed before (calling it twice is harmless).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    levelno = logging.getLevelNamesMapping().get(level.upper())
    if levelno is None:
        raise ValueError(f"log level {level!r}: use debug, info, warning or error")
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    journal = journal_stream(stream)
    if fmt == "json":
        formatter = JSONFormatter(journal=journal)
    elif journal:
        formatter = JournalFormatter()
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, levelno))
    return handler
