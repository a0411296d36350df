"""Notification text (pure): a Digest of one service becomes a title and a Markdown body.

What a person needs to act: which service, which surfaces, since when, why (our
reason per check), what the vendor's own status page says, where we looked from, and
a link to our page of that service; a closing says how long it lasted. Apprise turns
the Markdown into what each service shows (HTML mail, Slack mrkdwn, plain text, ...).

Text from outside (vendor incident names, titles) is put on one line, cut, and loses
the characters that would make Markdown or HTML of it (`<`, `>`, `[`, `]`, backticks):
a status page must not be able to put a link or markup into our messages.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor.grouping import Digest
from monitor.outage import OutageWindow
from monitor.units import format_duration

if TYPE_CHECKING:
    from monitor.statuspage import VendorStatus

MAX_ITEMS = 10  # lines per section; the rest are counted
MAX_NAMES = 3  # surfaces named in a title; more are counted
_UNSAFE = str.maketrans({"<": "‹", ">": "›", "[": "(", "]": ")", "`": "'", "\\": "/"})


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What we know of the service when its message leaves (read from LiveState)."""

    title: str
    status: str | None = None  # our service status (Statuspage words), if known
    vendor: VendorStatus | None = None  # its own status page, last poll; None: none configured
    link: str | None = None  # our page of the service
    location: str = "local"


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str  # Markdown
    level: str  # "failure" | "warning" | "success" | "info" (Apprise's NotifyType values)
    service: str | None = None
    windows: int = 0  # window events it tells of


def render(digest: Digest, info: ServiceInfo) -> Message:
    name = plain(info.title, 80)
    now_open = {w.check for w in digest.opened}
    down = [w for w in digest.opened if w.kind == "down"]
    degraded = [w for w in digest.opened if w.kind == "degraded"]
    # A check that closed and opened again (or went from degraded to down) in one group
    # is told as it is now.
    closed = [w for w in digest.closed if w.check not in now_open]
    if down:
        title, level = f"{name}: {_names(down)} down", "failure"
    elif degraded:
        title, level = f"{name}: {_names(degraded)} degraded", "warning"
    elif closed:
        longest = max(_lasted(w) for w in closed)
        title, level = f"{name}: {_names(closed)} back up after {format_duration(longest)}", "success"
    else:
        title, level = f"{name}: {_names(digest.removed)} no longer monitored", "info"
    lines: list[str] = []
    if down:
        lines += _section(f"**Down** since {clock(min(w.start for w in down))}:", down, _open_item)
    if degraded:
        lines += _section(f"**Degraded** (slow) since {clock(min(w.start for w in degraded))}:",
                          degraded, _open_item)
    if closed:
        lines += _section("**Back up:**", closed, _closed_item)
    if digest.removed:
        lines += _section("**No longer monitored** (removed from the config):", digest.removed,
                          _closed_item)
    lines += _footer(name, info)
    return Message(title, "\n".join(lines).strip() + "\n", level, digest.service, digest.windows)


def notify_test_message(target: str, location: str, link: str | None = None) -> Message:
    body = (f"A test from aipulse at {plain(location, 64)} to the target **{plain(target, 64)}**: "
            "if you read this, outage messages will reach you here.\n")
    if link:
        body += f"\n{link}\n"
    return Message("aipulse: test notification", body, "info")


def plain(text: str, limit: int = 120) -> str:
    """Outside text made safe for one line of Markdown (see the module docstring)."""
    text = " ".join(text.split()).translate(_UNSAFE)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def words(status: str) -> str:
    """'major_outage' -> 'major outage'."""
    return status.replace("_", " ")


def _lasted(w: OutageWindow) -> float:
    return (w.end if w.end is not None else w.start) - w.start


def _names(windows: Sequence[OutageWindow]) -> str:
    names = list(dict.fromkeys(w.check or "service" for w in windows))
    if len(names) > MAX_NAMES:
        return f"{len(names)} checks"
    return ", ".join(names)


def _open_item(w: OutageWindow) -> str:
    return f"- {w.check}: {w.reason or 'failing'}, since {clock(w.start)}"


def _closed_item(w: OutageWindow) -> str:
    was = "down" if w.kind == "down" else "degraded"
    return (f"- {w.check}: {was} for {format_duration(_lasted(w))} "
            f"({clock(w.start)} to {clock(w.end or w.start)}, {w.reason or 'failing'})")


def _section(head: str, windows: Sequence[OutageWindow], item: Callable[[OutageWindow], str]) -> list[str]:
    lines = ["", head, ""]
    lines += [item(w) for w in windows[:MAX_ITEMS]]
    rest = windows[MAX_ITEMS:]
    if rest:
        reasons = Counter(w.reason or "failing" for w in rest)
        summary = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common(5))
        lines.append(f"- … and {len(rest)} more ({summary})")
    return lines


def _footer(name: str, info: ServiceInfo) -> list[str]:
    lines = [""]
    if info.status:
        lines.append(f"{name} as aipulse sees it from {plain(info.location, 64)}: {words(info.status)}.")
    else:
        lines.append(f"Seen from {plain(info.location, 64)}.")
    vendor = info.vendor
    if vendor is not None:
        if vendor.overall == "unknown":
            said = "could not be read"
        else:
            said = f"says {words(vendor.overall)}"
            incidents = [f"“{plain(i.name, 100)}” ({words(i.status)})" for i in vendor.incidents[:2]]
            said += f"; incident {', '.join(incidents)}" if incidents else " (no open incident)"
        lines.append(f"{name}'s own status page {said}.")
    if info.link:
        lines += ["", info.link]
    return lines
