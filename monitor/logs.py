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

Every handler `setup()` installs passes records through two filters first:

- `RedactingFilter`: the secrets of the running config, their encoded forms
  and the notification URLs (`redact_with()`), removed from the message, the
  traceback and `extra=` fields; the values of `Set-Cookie`, `Cookie` and
  `Authorization`-like headers blanked wherever a library prints them. In the text
  formats, terminal control characters (ESC, CR, ...) are escaped too, so a text a
  monitored service sent cannot drive the operator's terminal (JSON escapes them).
- `ServerErrorFilter`: errors about connections to our own port (asyncio's accept
  loop, aiohttp's server, TLS handshakes: loggers `asyncio`, `aiohttp.*`,
  `aipulse.web`) are logged once per kind per minute, the traceback left out of
  resource errors; the next line of that kind says how many were left out. A client
  opening thousands of connections cannot fill the journal and push out outage lines.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from monitor.redact import Redactor, url_secrets
from monitor.units import rfc3339

if TYPE_CHECKING:
    from monitor.config import Config

__all__ = ["FORMATS", "JSONFormatter", "JournalFormatter", "RedactingFilter", "ServerErrorFilter",
           "config_redactor", "journal_stream", "printable", "redact_with", "setup"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

# Libraries that log one line per request at INFO, with the full URL (query strings
# can hold API keys): never at our info level.
# httpcore's debug trace prints every response's headers, cookies included.
_QUIET = {"httpx": logging.WARNING, "httpcore": logging.INFO, "hpack": logging.INFO}

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


# C0 controls but tab and newline (a message may span lines on purpose; the formats
# deal with that), DEL, C1 controls (0x9b is a one-byte CSI on some terminals) and
# the bidirectional overrides that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with terminal control characters escaped (`\\x1b`), safe to print."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


# `Set-Cookie: a=b`, `(b'Set-Cookie', b'a=b')`, `'cookie': 'a=b'`: the value goes.
_HEADER_VALUE = re.compile(
    r"""((?:set-)?cookie|(?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key)"""
    r"""(['"]?\s*[:,=]\s*b?['"]?)([^'"\r\n]*)""", re.IGNORECASE)


def _scrub_headers(text: str) -> str:
    return _HEADER_VALUE.sub(lambda m: f"{m[1]}{m[2]}<redacted>" if m[3].strip() else m[0], text)


_process_redactor = Redactor()  # the running config's secrets: see redact_with()


def redact_with(redactor: Redactor) -> None:
    """From now on, log lines are redacted with `redactor` (the running config's
    secrets and notification URLs); called at start and on every reload."""
    global _process_redactor
    _process_redactor = redactor


def config_redactor(cfg: Config) -> Redactor:
    """What a config's log lines must not show: its secrets (${VAR}, ${file:...},
    credential-like literals), webhook HMAC keys, and the notification URLs
    (webhooks, notify targets), literal or not, with the tokens they carry."""
    secrets = set(cfg.secrets) | {w.secret for w in cfg.webhooks if w.secret}
    whole: set[str] = set()
    urls = [w.url for w in cfg.webhooks] + [t.url for t in getattr(cfg, "targets", ())]
    for url in urls:
        more, entire = url_secrets(url)
        secrets |= more
        whole |= entire
    return Redactor(secrets, whole)


class RedactingFilter(logging.Filter):
    """Removes secrets (those given to `redact_with()`, unless a `redactor` is given)
    and cookie and credential header values from every record: message, traceback,
    extra fields. With `controls`, escapes terminal control characters as well."""

    def __init__(self, redactor: Redactor | None = None, controls: bool = False) -> None:
        super().__init__()
        self.redactor = redactor
        self.controls = controls

    def clean(self, text: str) -> str:
        text = _scrub_headers((_process_redactor if self.redactor is None else self.redactor)(text))
        return printable(text) if self.controls else text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.clean(value))
        return True


_SERVER_LOGGERS = ("asyncio", "aiohttp.", "aipulse.web")
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ServerErrorFilter(logging.Filter):
    """At most one record per kind per `every` seconds from the loggers that report
    on our port's connections; a kind is the logger, the first line of the message
    and the exception type. Resource errors (EMFILE, ...) and dropped connections
    lose their traceback: one line says all there is."""

    def __init__(self, every: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self._last: dict[tuple[str, str, str], float] = {}
        self._left_out: dict[tuple[str, str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(_SERVER_LOGGERS):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        first = record.getMessage().split("\n", 1)[0][:100]
        kind = (record.name, first, type(exc).__name__ if exc else "")
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            if len(self._left_out) > 1000:  # kinds are few; this only bounds memory
                self._left_out.clear()
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        message = record.getMessage()
        if isinstance(exc, ConnectionError) or (isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS):
            message = f"{first}: {type(exc).__name__}: {exc}"
            record.exc_info, record.exc_text = None, None
        if left_out:
            message += f" ({left_out} more like this in the last {self.every:g} s, not logged)"
        record.msg, record.args = message, None
        return True


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
    handler.addFilter(ServerErrorFilter())
    handler.addFilter(RedactingFilter(controls=fmt != "json"))  # JSON escapes controls itself
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, levelno))
    return handler
