"""Durations and sizes as written in config and on the command line (pure)."""

from __future__ import annotations

import datetime as dt
import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2,
    "GB": 1000**3, "GiB": 1024**3,
}


def parse_duration(text: str) -> float:
    """'500ms', '30s', '5m', '1h30m', '7d' -> seconds. Raises ValueError."""
    text = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f'invalid duration "{text}" (use e.g. 500ms, 30s, 5m, 1h, 7d)')
    if not math.isfinite(total):  # 400 digits of days
        raise ValueError(f'invalid duration "{text}" (too long)')
    return total


def parse_size(text: str | int) -> int:
    """'1MiB', '512KB', 1048576 -> bytes. Raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"invalid size {text} (must not be negative)")
        return text
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f'invalid size "{text}" (use e.g. 512KiB, 1MiB, 10MB)')
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(size):  # 400 digits of MiB
        raise ValueError(f'invalid size "{text}" (too large)')
    return int(size)


def format_duration(seconds: float) -> str:
    """Short human form: 42s, 5m 3s, 2h 10m, 3d 4h."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


EARLIEST = dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp()  # the times rfc3339() can write
LATEST = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()


def parse_time(text: str, now: float) -> float:
    """RFC 3339 ('2025-01-27T13:33:00Z') or an age ('7d', '24h' = that long ago) -> epoch."""
    text = text.strip()
    try:
        epoch = max(EARLIEST, now - parse_duration(text))  # an age older than year 1: all of it
    except ValueError:
        epoch = None
    if epoch is None:
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f'invalid time "{text}" (use RFC 3339 like 2025-01-27T13:33:00Z, '
                             "or an age like 7d or 24h)") from None
        if when.tzinfo is None:
            raise ValueError(f'time "{text}" has no timezone (add Z for UTC)')
        try:
            epoch = when.timestamp()
        except (OverflowError, ValueError, OSError):  # 9999-12-31T23:59:59-23:59 is in year 10000 UTC
            epoch = math.inf
    if not EARLIEST <= epoch <= LATEST:
        raise ValueError(f'time "{text}" is out of range (UTC years 1 to 9999)')
    return epoch


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds -> '2025-01-27T13:33:00.250Z' (UTC, milliseconds); None stays None."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
