"""Maintenance windows (pure): one-off or recurring stretches of planned work, in UTC.

    maintenance:
      - start: 2026-12-01T02:00:00Z     # one-off
        duration: 2h
      - every: sun 03:00                # weekly; also "daily 03:00" or "mon,thu 01:30"
        duration: 30m

Checks keep running during maintenance; that time is `under_maintenance`, neither up
nor down, and opens no outage window.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EVERY = re.compile(r"(daily|[a-z]{3}(?:,[a-z]{3})*)\s+(\d{1,2}):(\d{2})")
WEEK = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Maintenance:
    duration: float
    start: float | None = None  # one-off: epoch seconds
    weekdays: frozenset[int] = frozenset()  # recurring: 0 = Monday
    minute_of_day: int = 0  # recurring: UTC minutes after midnight

    def spans(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """The parts of this maintenance that overlap [t0, t1), in time order."""
        out: list[tuple[float, float]] = []
        if self.start is not None:
            starts = [self.start]
        else:
            day0 = dt.datetime.fromtimestamp(t0 - self.duration, dt.UTC).date()
            starts = []
            day = day0
            while True:
                midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
                s = midnight + self.minute_of_day * 60
                if s >= t1:
                    break
                if day.weekday() in self.weekdays:
                    starts.append(s)
                day += dt.timedelta(days=1)
        for s in starts:
            lo, hi = max(s, t0), min(s + self.duration, t1)
            if lo < hi:
                out.append((lo, hi))
        return out

    def active(self, t: float) -> bool:
        return bool(self.spans(t, t + 1e-6))


def parse_start(value: object) -> float:
    """RFC 3339 time (YAML may hand us a datetime already) -> epoch seconds."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f'invalid time "{value}" (use RFC 3339, e.g. 2026-12-01T02:00:00Z)') from None
    else:
        raise ValueError(f"invalid time {value!r} (use RFC 3339, e.g. 2026-12-01T02:00:00Z)")
    if when.tzinfo is None:
        raise ValueError(f'time "{value}" has no timezone (add Z for UTC)')
    return when.timestamp()


def parse_every(value: object) -> tuple[frozenset[int], int]:
    """'daily 03:00', 'sun 03:00', 'mon,thu 01:30' -> (weekdays, minute of day)."""
    text = str(value).strip().lower()
    m = _EVERY.fullmatch(text)
    hint = '(use "daily HH:MM" or days like "sun 03:00", "mon,thu 01:30"; times are UTC)'
    if not m:
        raise ValueError(f'invalid schedule "{value}" {hint}')
    hour, minute = int(m.group(2)), int(m.group(3))
    if hour > 23 or minute > 59:
        raise ValueError(f'invalid time of day in "{value}" {hint}')
    if m.group(1) == "daily":
        days = frozenset(range(7))
    else:
        names = m.group(1).split(",")
        if any(n not in DAYS for n in names):
            raise ValueError(f'invalid day in "{value}" {hint}')
        days = frozenset(DAYS.index(n) for n in names)
    return days, hour * 60 + minute
