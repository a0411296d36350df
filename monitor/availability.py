"""Time-based availability (pure): time up / time observed.

Observed time is the span since the check was first seen, minus everything unknown:
monitor gaps (not running, offline), the check's unknown stretches (e.g. a bot wall)
and maintenance. Down time is the part of the check's `down` windows that was
observed. Degraded time counts as up: the service answered correctly, only slowly.

    availability = (observed - down) / observed

Inputs are intervals `(start, end)` with `end=None` for "still open"; nothing here
looks at raw probe results.
"""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[float, float | None]

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}


def clip_merge(intervals: Iterable[Interval], lo: float, hi: float) -> list[tuple[float, float]]:
    """Intervals clipped to [lo, hi], sorted and merged (no overlaps)."""
    spans = sorted(
        (max(s, lo), min(hi if e is None else e, hi))
        for s, e in intervals
        if s < hi and (e is None or e > lo)
    )
    merged: list[tuple[float, float]] = []
    for s, e in spans:
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def total(spans: Iterable[tuple[float, float]]) -> float:
    return sum(e - s for s, e in spans)


def subtract(spans: list[tuple[float, float]], holes: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merged `spans` minus merged `holes`."""
    out: list[tuple[float, float]] = []
    j = 0
    for s, e in spans:
        cur = s
        while j < len(holes) and holes[j][1] <= cur:
            j += 1
        k = j
        while k < len(holes) and holes[k][0] < e:
            hs, he = holes[k]
            if hs > cur:
                out.append((cur, hs))
            cur = max(cur, he)
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def availability(
    now: float,
    span: float,
    first_seen: float | None,
    down: Iterable[Interval],
    unknown: Iterable[Interval],
) -> float | None:
    """Availability over [now - span, now], or None when nothing was observed."""
    if first_seen is None:
        return None
    lo, hi = max(now - span, first_seen), now
    if lo >= hi:
        return None
    unknown_spans = clip_merge(unknown, lo, hi)
    observed = (hi - lo) - total(unknown_spans)
    if observed <= 1e-9:
        return None
    down_observed = total(subtract(clip_merge(down, lo, hi), unknown_spans))
    return max(0.0, min(1.0, 1.0 - down_observed / observed))
