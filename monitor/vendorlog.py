"""The vendor's incidents over time: what /history shows beside our own windows.

A status page's summary lists only the incidents open *now*. To put the vendor's
incident beside an outage window of last week, every poll that the page could be read
leaves a `VendorSnapshot`: the incidents open at that moment,
and the resolved ones the document itself lists (feeds, Google Cloud, Better Stack).
The store keeps one row per (service, incident): the vendor's declared start, when we
first saw it open, and its end -- the vendor's own end where the page gives one, else
the first readable poll that no longer listed it. An unreadable poll
(`VendorStatus.readable` false) says nothing and ends nothing. Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.vendorformats.model import VendorIncident, VendorStatus

PAST_HORIZON = 90 * 86400.0  # resolved incidents older than this are not recorded


@dataclass(frozen=True, slots=True)
class VendorSnapshot:
    """One readable poll of a service's vendor page (a storable event)."""

    service: str
    at: float  # when the poll finished
    open: tuple[VendorIncident, ...]  # open incidents and maintenances in progress
    past: tuple[VendorIncident, ...] = ()  # resolved ones the document lists, with their end


@dataclass(frozen=True, slots=True)
class VendorIncidentRecord:
    """One vendor incident as the history knows it."""

    service: str
    id: str
    name: str
    impact: str  # Statuspage impact words (maintenance included)
    started: float | None  # the vendor's declared start (may be back-dated); None when not given
    first_seen: float  # our first readable poll that showed it (or its start, for a listed past one)
    ended: float | None  # None while open

    @property
    def start(self) -> float:
        """The start to compare with ours: the vendor's claim, else when we first saw it."""
        return self.started if self.started is not None else self.first_seen

    def overlaps(self, start: float, end: float | None, now: float, grace: float = 0.0) -> bool:
        """Whether it overlaps our window [start, end] (end None: open), counting a
        vendor start up to `grace` seconds after our window ended (a late admission)."""
        mine_end = now if self.ended is None else self.ended
        theirs_end = now if end is None else end
        return self.start <= theirs_end + grace and start <= mine_end


def snapshot(service: str, vendor: VendorStatus, at: float,
             last: VendorSnapshot | None) -> VendorSnapshot | None:
    """The event to store for this poll, or None: nothing to record (an unreadable
    page), or nothing changed since `last` (the same open and past incidents)."""
    if not vendor.readable:
        return None
    past = tuple(i for i in vendor.past if i.ended is not None and at - i.ended <= PAST_HORIZON and i.id)
    event = VendorSnapshot(service, at, tuple(i for i in vendor.incidents if i.id), past)
    if last is not None and _key(last) == _key(event):
        return None
    return event


def _key(s: VendorSnapshot) -> tuple[object, ...]:
    return (tuple((i.id, i.name, i.impact, i.started) for i in s.open),
            tuple((i.id, i.ended) for i in s.past))
