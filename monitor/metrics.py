"""Prometheus exposition: a custom collector over `LiveState`, built fresh per scrape.

Nothing is registered per check, so a check removed by a reload simply stops
appearing. Every series carries the constant `location` label.

`render` writes the per-check families itself (`AipulseCollector.exposition`), in
exactly the text prometheus_client's encoders produce, reusing each check's lines
until its data changes: at 10,000 checks (about 300,000 series) building
prometheus_client families took seconds per scrape, this takes a few tens of
milliseconds. Service-level and daemon-wide families still go through
prometheus_client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from monitor import __version__
from monitor import families as F
from monitor.availability import WINDOWS, Interval
from monitor.families import PER_OUTAGE, PER_PROBE
from monitor.live import DURATION_BUCKETS, TTFT_BUCKETS, CheckStats, LiveState
from monitor.result import PHASES
from monitor.status import SERVICE_STATUSES, State
from monitor.statuspage import COMPONENT_STATUSES, component_labels

STATES = tuple(s.value for s in State)
AVAILABILITY_MAX_AGE = 10.0  # seconds a check's availability is reused while its state stands
Families = dict[F.Family, Metric]


class AipulseCollector(Collector):
    """Reads LiveState, never writes it: what it keeps between scrapes (each check's
    availability, recomputed at most every AVAILABILITY_MAX_AGE seconds or when the
    check's state changed) is its own."""

    def __init__(self, live: LiveState, location: str) -> None:
        self.live = live
        self.location = location
        self._availability: dict[tuple[str, str], tuple[float, tuple[int, int], dict[str, float | None]]] = {}

    def collect(self) -> Iterator[Metric]:
        fams: Families = {f: f.new() for f in F.ALL}
        self._probe_samples(fams)
        self._outage_samples(fams)
        self._service_samples(fams)
        self._tail_samples(fams)
        yield from fams.values()

    def tail(self) -> list[Metric]:
        """The families after the per-service ones: vendors and the daemon itself."""
        fams: Families = {f: f.new() for f in (*F.VENDOR, *F.DAEMON)}
        self._tail_samples(fams)
        return list(fams.values())

    def availability(self, key: tuple[str, str], stats: CheckStats, now: float, gaps: list[Interval],
                     maintenance: list[Interval]) -> dict[str, float | None]:
        """The check's availability per window; the same dict while the values stand
        (the fast path keeps its text until they change)."""
        version = (stats.version, self.live.gaps_version)
        cached = self._availability.get(key)
        if cached is not None and cached[1] == version and now - cached[0] <= AVAILABILITY_MAX_AGE:
            return cached[2]
        values = stats.availability(now, gaps, maintenance)
        if cached is not None and cached[2] == values:
            values = cached[2]
        self._availability[key] = (now, version, values)
        return values

    def forget_removed(self) -> None:
        """Drop what is kept for checks a reload removed."""
        if len(self._availability) > len(self.live.checks):
            self._availability = {k: v for k, v in self._availability.items() if k in self.live.checks}

    def _probe_samples(self, fams: Families) -> None:
        loc = self.location
        success, duration, phase, probes, status = (fams[f] for f in PER_PROBE[:5])
        cert, steps, ttft, speed, gap = (fams[f] for f in PER_PROBE[5:])
        for (service, check), stats in self.live.checks.items():
            labels = [service, check, loc]
            for reason, n in stats.reasons.items():
                probes.add_metric([service, check, reason, loc], n)
            duration.add_metric(labels, stats.durations.cumulative(), stats.durations.sum)
            if stats.ttfts is not None:
                ttft.add_metric(labels, stats.ttfts.cumulative(), stats.ttfts.sum)
            last = stats.last
            if last is None:
                continue
            success.add_metric(labels, 1.0 if last.success else 0.0)
            status.add_metric(labels, last.status_code)
            for name in PHASES:
                phase.add_metric([service, check, name, loc], last.phases.get(name, 0.0))
            if last.cert_expiry is not None:
                cert.add_metric(labels, last.cert_expiry)
            for step, seconds in last.steps.items():
                steps.add_metric([service, check, step, loc], seconds)
            if last.output_tokens_per_second is not None:
                speed.add_metric(labels, last.output_tokens_per_second)
            if last.stream_max_gap is not None:
                gap.add_metric(labels, last.stream_max_gap)

    def _outage_samples(self, fams: Families) -> None:
        loc, now = self.location, self.live.now()
        state, active, opened, last_start, last_duration, ratio = (fams[f] for f in PER_OUTAGE)
        gaps, maintenance = self.unknown_spans(now)
        for key, stats in self.live.checks.items():
            service, check = key
            labels = [service, check, loc]
            for name in STATES:
                state.add_metric([service, check, name, loc], 1.0 if stats.state == name else 0.0)
            window = stats.window
            active.add_metric(labels, 1.0 if window is not None and window.kind == "down" else 0.0)
            opened.add_metric(labels, stats.outages_opened)
            if stats.last_down is not None:
                last_start.add_metric(labels, stats.last_down.start)
            if stats.last_closed_down is not None and stats.last_closed_down.end is not None:
                last_duration.add_metric(labels, stats.last_closed_down.end - stats.last_closed_down.start)
            for name, value in self.availability(key, stats, now, gaps, maintenance.get(service, [])).items():
                if value is not None:
                    ratio.add_metric([service, check, name, loc], value)
        self.forget_removed()

    def _service_samples(self, fams: Families) -> None:
        loc, status = self.location, fams[F.SERVICE_STATUS]
        for sid, sstats in self.live.services.items():
            for name in SERVICE_STATUSES:
                status.add_metric([sid, name, loc], 1.0 if sstats.status == name else 0.0)

    def _tail_samples(self, fams: Families) -> None:
        """Vendor status pages and the daemon's own families."""
        loc, live = self.location, self.live
        self._vendor_samples(fams)
        fams[F.SCHEDULER_LAG].add_metric([loc], live.scheduler_lag.cumulative(), live.scheduler_lag.sum)
        fams[F.MISSED].add_metric([loc], live.missed_intervals)
        fams[F.STORAGE_ERRORS].add_metric([loc], live.storage_errors)
        fams[F.STORAGE_REPLACED].add_metric([loc], live.storage_replaced)
        for name, stats in live.notifications.items():
            for result in ("sent", "failed", "dropped"):
                fams[F.NOTIFICATIONS].add_metric([name, result, loc], getattr(stats, result))
            fams[F.NOTIFICATION_QUEUE].add_metric([name, loc], stats.queued)
        fams[F.MONITOR_OFFLINE].add_metric([loc], 1.0 if live.monitor_offline else 0.0)
        fams[F.CHECKS_SKIPPED].add_metric([loc], live.checks_skipped)
        fams[F.RELOAD_OK].add_metric([loc], 1.0 if live.reload_ok else 0.0)
        fams[F.BUILD_INFO].add_metric([__version__, loc], 1.0)

    def unknown_spans(self, now: float) -> tuple[list[Interval], dict[str, list[Interval]]]:
        gaps = self.live.gap_spans(now)
        maintenance: dict[str, list[Interval]] = {
            sid: [span for m in s.service.maintenance for span in m.spans(now - WINDOWS["30d"], now)]
            for sid, s in self.live.services.items() if s.service.maintenance
        }
        return gaps, maintenance

    def _vendor_samples(self, fams: Families) -> None:
        loc = self.location
        component, overall, incident, lead = (fams[f] for f in F.VENDOR)
        for sid, sstats in self.live.services.items():
            vendor = sstats.vendor
            if vendor is None:
                continue
            labels = component_labels(vendor.components)
            for c in vendor.components:
                for name in COMPONENT_STATUSES:
                    component.add_metric([sid, labels[c.id], name, loc], 1.0 if c.status == name else 0.0)
            for name in COMPONENT_STATUSES:
                overall.add_metric([sid, name, loc], 1.0 if vendor.overall == name else 0.0)
            if vendor.readable:  # an unreadable page says nothing about its incidents
                incident.add_metric([sid, loc], 1.0 if vendor.incidents else 0.0)
            if sstats.detection_lead is not None:
                lead.add_metric([sid, loc], sstats.detection_lead)


# ---------------------------------------------------------------- fast exposition
#
# The per-check families in the order `collect` yields them. Sample lines are the
# same in both formats (labels sorted by name, values via floatToGoString); only the
# HELP/TYPE header lines differ, and those are taken from prometheus_client itself.

WARM_EVERY = 1.0  # seconds between background renders of checks with new results
WARM_SLICE = 200  # checks rendered between two yields to the event loop
RENDER_SLICE = 1000  # checks a scrape joins between two yields to the event loop (at most)
RENDER_TURN = 0.025  # seconds a scrape renders before it yields to the event loop (at most, roughly)
Encoder = Callable[[Collector], bytes]


def _esc(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(labels.items())) + "}"


def _num(n: float) -> str:
    """floatToGoString, quicker for the small whole numbers counters mostly are."""
    if type(n) is int and 0 <= n < 1_000_000:
        return f"{n}.0"
    return floatToGoString(n)


_ONE, _ZERO = floatToGoString(1.0), floatToGoString(0.0)
_LE = {bounds: [floatToGoString(b) for b in bounds] + ["+Inf"] for bounds in (DURATION_BUCKETS, TTFT_BUCKETS)}


class _CheckText:
    """One check's sample lines (UTF-8), per family, kept until its data changes."""

    __slots__ = ("_c", "_l", "_s", "availability", "base", "outage_key", "outages", "probe",
                 "probe_key", "ratio", "reasons")

    def __init__(self, service: str, check: str, loc: str) -> None:
        # Label names sort as: check < le < location < phase, reason < service < state, step, window
        self._c, self._l = f'check="{_esc(check)}"', f'location="{_esc(loc)}"'
        self._s = f'service="{_esc(service)}"'
        self.base = f"{{{self._c},{self._l},{self._s}}}"
        self.reasons: dict[str, str] = {}
        self.probe_key: object = self  # equal to nothing: renders on first use
        self.probe: list[bytes] = []
        self.outage_key: tuple[object, ...] = ()
        self.outages: list[bytes] = []
        self.availability: object = None
        self.ratio = b""

    def mid(self, name: str, value: str) -> str:
        """Labels with one more, sorting between location and service (phase, reason)."""
        return f'{{{self._c},{self._l},{name}="{_esc(value)}",{self._s}}}'

    def end(self, name: str, value: str) -> str:
        """Labels with one more, sorting after service (state, step, window)."""
        return f'{{{self._c},{self._l},{self._s},{name}="{_esc(value)}"}}'

    def histogram(self, name: str, hist: object) -> str:
        bounds: tuple[float, ...] = hist.bounds  # type: ignore[attr-defined]
        # not cached per check (11 strings, ~2 KB a check): rebuilt on each render
        les = [f'{{{self._c},le="{le}",{self._l},{self._s}}}' for le in
               _LE.get(bounds) or [*map(floatToGoString, bounds), "+Inf"]]
        counts = hist.cumulative_counts()  # type: ignore[attr-defined]
        lines = [f"{name}_bucket{le} {_num(n)}\n" for le, n in zip(les, counts, strict=True)]
        lines.append(f"{name}_count{self.base} {_num(counts[-1])}\n")
        lines.append(f"{name}_sum{self.base} {floatToGoString(hist.sum)}\n")  # type: ignore[attr-defined]
        return "".join(lines)

    def render_probe(self, stats: CheckStats) -> None:
        """The per-probe families' lines (names from monitor.families), in its order."""
        base = self.base
        last = stats.last
        reasons = []
        probes = f"{F.PROBES.name}_total"
        for reason, n in stats.reasons.items():
            labels = self.reasons.get(reason)
            if labels is None:
                labels = self.reasons[reason] = self.mid("reason", reason)
            reasons.append(f"{probes}{labels} {_num(n)}\n")
        text = {F.PROBES: "".join(reasons),
                F.PROBE_DURATION: self.histogram(F.PROBE_DURATION.name, stats.durations)}
        if stats.ttfts is not None:
            text[F.PROBE_TTFT] = self.histogram(F.PROBE_TTFT.name, stats.ttfts)
        if last is not None:
            speed, gap = last.output_tokens_per_second, last.stream_max_gap
            text[F.PROBE_SUCCESS] = f"{F.PROBE_SUCCESS.name}{base} {_ONE if last.success else _ZERO}\n"
            text[F.PROBE_PHASE] = "".join(f"{F.PROBE_PHASE.name}{self.mid('phase', name)} "
                                          f"{floatToGoString(last.phases.get(name, 0.0))}\n"
                                          for name in PHASES)
            text[F.PROBE_STATUS] = f"{F.PROBE_STATUS.name}{base} {_num(last.status_code)}\n"
            if last.cert_expiry is not None:
                text[F.PROBE_CERT] = f"{F.PROBE_CERT.name}{base} {floatToGoString(last.cert_expiry)}\n"
            text[F.PROBE_STEP] = "".join(f"{F.PROBE_STEP.name}{self.end('step', step)} "
                                         f"{floatToGoString(seconds)}\n"
                                         for step, seconds in last.steps.items())
            if speed is not None:
                text[F.PROBE_SPEED] = f"{F.PROBE_SPEED.name}{base} {floatToGoString(speed)}\n"
            if gap is not None:
                text[F.PROBE_GAP] = f"{F.PROBE_GAP.name}{base} {floatToGoString(gap)}\n"
        self.probe = [text.get(f, "").encode() for f in PER_PROBE]

    def render_outages(self, stats: CheckStats) -> None:
        """The outage families' lines but availability (`render_ratio`), in order."""
        base = self.base
        window = stats.window
        down = window is not None and window.kind == "down"
        last_down, closed = stats.last_down, stats.last_closed_down
        text = {
            F.CHECK_STATE: "".join(f"{F.CHECK_STATE.name}{self.end('state', name)} "
                                   f"{_ONE if stats.state == name else _ZERO}\n" for name in STATES),
            F.OUTAGE_ACTIVE: f"{F.OUTAGE_ACTIVE.name}{base} {_ONE if down else _ZERO}\n",
            F.OUTAGES: f"{F.OUTAGES.name}_total{base} {_num(stats.outages_opened)}\n",
        }
        if last_down is not None:
            text[F.OUTAGE_LAST_START] = (f"{F.OUTAGE_LAST_START.name}{base} "
                                         f"{floatToGoString(last_down.start)}\n")
        if closed is not None and closed.end is not None:
            text[F.OUTAGE_LAST_DURATION] = (f"{F.OUTAGE_LAST_DURATION.name}{base} "
                                            f"{floatToGoString(closed.end - closed.start)}\n")
        self.outages = [text.get(f, "").encode() for f in PER_OUTAGE[:-1]]

    def render_ratio(self, values: dict[str, float | None]) -> None:
        self.ratio = "".join(f"{F.AVAILABILITY.name}{self.end('window', name)} {floatToGoString(v)}\n"
                             for name, v in values.items() if v is not None).encode()


class _Families:
    """A stand-in registry: lets prometheus_client's encoders format some families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class _Exposition:
    """The fast path of `render` for one AipulseCollector."""

    def __init__(self, collector: AipulseCollector) -> None:
        self.collector = collector
        self.texts: dict[tuple[str, str], _CheckText] = {}
        self._headers: dict[tuple[Encoder, bool], list[bytes]] = {}
        self.statuses: dict[str, tuple[str, bytes]] = {}
        self._warmer: asyncio.Task[None] | None = None
        self.changed: set[tuple[str, str]] = set()  # checks with a new result, not yet rendered
        collector.live.on_change.append(self.changed.add)

    def headers(self, encoder: Encoder, openmetrics: bool) -> list[bytes]:
        """HELP/TYPE lines of each per-check family (and the service status), as
        prometheus_client writes them."""
        key = (encoder, openmetrics)
        if key not in self._headers:
            out = []
            for family in (*PER_PROBE, *PER_OUTAGE, F.SERVICE_STATUS):
                text = encoder(_Families([family.new()]))  # type: ignore[arg-type]
                out.append(text.removesuffix(b"# EOF\n") if openmetrics else text)
            self._headers[key] = out
        return self._headers[key]

    def _probe_text(self, key: tuple[str, str], stats: CheckStats) -> _CheckText:
        """The check's text, its per-probe families brought up to date."""
        text = self.texts.get(key)
        if text is None:
            text = self.texts[key] = _CheckText(key[0], key[1], self.collector.location)
        probe_key = stats.last
        if probe_key is None:
            probe_key = (stats.durations.count, len(stats.reasons), stats.ttfts)
        if text.probe_key is not probe_key and text.probe_key != probe_key:
            text.render_probe(stats)
            text.probe_key = probe_key
        return text

    def _render(self, key: tuple[str, str], stats: CheckStats, now: float, gaps: list[Interval],
                maintenance: dict[str, list[Interval]]) -> _CheckText:
        """The check's text, every family of it brought up to date."""
        text = self._probe_text(key, stats)
        outage_key = (stats.state, stats.window, stats.outages_opened, stats.last_down,
                      stats.last_closed_down)
        if outage_key != text.outage_key:
            text.render_outages(stats)
            text.outage_key = outage_key
        values = self.collector.availability(key, stats, now, gaps, maintenance.get(key[0], []))
        if values is not text.availability:
            text.render_ratio(values)
            text.availability = values
        return text

    async def _warm(self) -> None:
        """Render checks with new results or a new state as they come, a slice at a time
        between probes, so a scrape mostly joins text that is ready (at 10,000 checks it
        would otherwise render ~5,000 checks at once, blocking probes meanwhile; after
        a mass outage, every check's state lines and availability at once)."""
        collector = self.collector
        live = collector.live
        while True:
            await asyncio.sleep(WARM_EVERY)
            if self._warmer is not asyncio.current_task():
                return  # replaced (another event loop)
            changed = self.changed
            while changed:
                now = live.now()
                gaps, maintenance = collector.unknown_spans(now)
                for _ in range(min(WARM_SLICE, len(changed))):
                    key = changed.pop()
                    stats = live.checks.get(key)
                    if stats is not None:
                        self._render(key, stats, now, gaps, maintenance)
                await asyncio.sleep(0)

    def _start_warmer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # rendered outside an event loop: nothing to warm up
            return
        if self._warmer is None or self._warmer.done() or self._warmer.get_loop() is not loop:
            self._warmer = loop.create_task(self._warm(), name="metrics text")

    def __call__(self, encoder: Encoder, openmetrics: bool) -> bytes:
        *_, parts = self._steps(encoder, openmetrics)
        return b"".join(parts)  # type: ignore[arg-type]

    async def parts(self, encoder: Encoder, openmetrics: bool) -> list[bytes]:
        """The exposition as a list of byte strings (mostly each check's cached text, not
        copied), built yielding to the event loop every RENDER_SLICE checks, so a scrape
        of 10,000 checks neither holds probes back nor copies 30 MB into one buffer."""
        for parts in self._steps(encoder, openmetrics):
            if parts is not None:
                return parts
            await asyncio.sleep(0)
        raise AssertionError("unreachable: _steps ends with the parts")

    def _steps(self, encoder: Encoder, openmetrics: bool) -> Iterator[list[bytes] | None]:
        """The exposition, built in steps: None between slices of checks, then its parts."""
        collector = self.collector
        live, loc = collector.live, collector.location
        self._start_warmer()
        now = live.now()
        gaps, maintenance = collector.unknown_spans(now)
        order: list[_CheckText] = []
        self.changed.clear()  # all rendered below
        turn = time.perf_counter() + RENDER_TURN
        # A snapshot: a reload may change the checks while this yields.
        for n, (key, stats) in enumerate(list(live.checks.items()), 1):
            if n % RENDER_SLICE == 0 or (n % 64 == 0 and time.perf_counter() > turn):
                yield
                turn = time.perf_counter() + RENDER_TURN
            order.append(self._render(key, stats, now, gaps, maintenance))
        if len(self.texts) > len(live.checks):  # checks removed by a reload
            self.texts = {k: v for k, v in self.texts.items() if k in live.checks}
        collector.forget_removed()
        headers = iter(self.headers(encoder, openmetrics))
        parts: list[bytes] = []
        for i in range(len(PER_PROBE)):
            parts.append(next(headers))
            parts += [t.probe[i] for t in order]
        for i in range(len(PER_OUTAGE) - 1):  # the last one: availability, kept apart
            parts.append(next(headers))
            parts += [t.outages[i] for t in order]
        parts.append(next(headers))
        parts += [t.ratio for t in order]
        parts.append(next(headers))  # aipulse_service_status
        statuses = self.statuses
        for sid, sstats in live.services.items():
            cached = statuses.get(sid)
            if cached is None or cached[0] != sstats.status:
                cached = statuses[sid] = (sstats.status, "".join(
                    f'{F.SERVICE_STATUS.name}{{location="{_esc(loc)}",service="{_esc(sid)}",'
                    f'status="{name}"}} '
                    f"{_ONE if sstats.status == name else _ZERO}\n" for name in SERVICE_STATUSES).encode())
            parts.append(cached[1])
        if len(statuses) > len(live.services):
            self.statuses = {k: v for k, v in statuses.items() if k in live.services}
        parts.append(encoder(_Families(collector.tail())))  # type: ignore[arg-type]
        yield parts


class _Registry(CollectorRegistry):
    """Our registry: remembers the AipulseCollector for the fast path of `render`."""

    fast: _Exposition | None = None

    def register(self, collector: Collector) -> None:
        super().register(collector)
        # Only when ours is the only collector: anything else goes the general way.
        self.fast = _Exposition(collector) if (
            isinstance(collector, AipulseCollector) and self.fast is None
            and len(self._collector_to_names) == 1) else None


def make_registry(live: LiveState, location: str) -> CollectorRegistry:
    registry = _Registry(auto_describe=False)
    registry.register(AipulseCollector(live, location))
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Exposition bytes and content type; OpenMetrics when the Accept header asks."""
    encoder, content_type = choose_encoder(accept or "")
    fast = getattr(registry, "fast", None)
    if isinstance(fast, _Exposition):
        return fast(encoder, content_type.startswith("application/openmetrics")), content_type
    return encoder(registry), content_type


async def render_parts(registry: CollectorRegistry, accept: str | None) -> tuple[list[bytes], str]:
    """`render` as a list of byte strings to send one after another, built yielding to
    the event loop between slices of checks (the server's way)."""
    encoder, content_type = choose_encoder(accept or "")
    fast = getattr(registry, "fast", None)
    if isinstance(fast, _Exposition):
        openmetrics = content_type.startswith("application/openmetrics")
        return await fast.parts(encoder, openmetrics), content_type
    return [encoder(registry)], content_type
