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

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from monitor import __version__
from monitor.availability import WINDOWS, Interval
from monitor.live import DURATION_BUCKETS, TTFT_BUCKETS, CheckStats, LiveState
from monitor.outage import State
from monitor.result import PHASES
from monitor.rollup import SERVICE_STATUSES
from monitor.statuspage import COMPONENT_STATUSES, component_labels

STATES = tuple(s.value for s in State)
CHECK_LABELS = ["service", "check", "location"]


class AipulseCollector(Collector):
    def __init__(self, live: LiveState, location: str) -> None:
        self.live = live
        self.location = location

    def collect(self) -> Iterator[Metric]:
        yield from self._probe_families()
        yield from self._outages(CHECK_LABELS)
        yield from self._service_families()

    def _probe_families(self) -> Iterator[Metric]:
        loc = self.location
        check_labels = CHECK_LABELS
        success = GaugeMetricFamily(
            "aipulse_probe_success", "1 if the last probe succeeded, else 0.", labels=check_labels)
        duration = HistogramMetricFamily(
            "aipulse_probe_duration_seconds", "Duration of whole probes.", labels=check_labels)
        phase = GaugeMetricFamily(
            "aipulse_probe_phase_seconds", "Time spent in each phase of the last probe.",
            labels=["service", "check", "phase", "location"])
        probes = CounterMetricFamily(
            "aipulse_probes", "Probes run, by result reason.",
            labels=["service", "check", "reason", "location"])
        status = GaugeMetricFamily(
            "aipulse_probe_http_status_code", "HTTP status of the last probe, 0 when no response.",
            labels=check_labels)
        cert = GaugeMetricFamily(
            "aipulse_probe_tls_cert_expiry_timestamp_seconds",
            "Earliest expiry (notAfter) in the served certificate chain, also when verification failed.",
            labels=check_labels)
        ttft = HistogramMetricFamily(
            "aipulse_probe_ttft_seconds", "Stream probes: time to the first content token.",
            labels=check_labels)
        steps = GaugeMetricFamily(
            "aipulse_probe_step_seconds", "Duration of each step of the last flow probe.",
            labels=["service", "check", "step", "location"])
        speed = GaugeMetricFamily(
            "aipulse_probe_output_tokens_per_second",
            "Stream probes: output tokens (usage, else events) per second after the first, last probe.",
            labels=check_labels)
        gap = GaugeMetricFamily(
            "aipulse_probe_stream_max_gap_seconds",
            "Stream probes: the longest silence between output events of the last probe.",
            labels=check_labels)
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
        yield from (success, duration, phase, probes, status, cert, steps, ttft, speed, gap)

    def _service_families(self) -> Iterator[Metric]:
        """Everything after the per-check families: services, vendors, the daemon."""
        yield from self._service_status()
        yield from self._tail_families()

    def _tail_families(self) -> Iterator[Metric]:
        """Vendor status pages and the daemon's own families."""
        loc = self.location
        yield from self._vendor()
        lag = HistogramMetricFamily(
            "aipulse_scheduler_lag_seconds", "Delay between a probe's due time and its start.",
            labels=["location"])
        lag.add_metric([loc], self.live.scheduler_lag.cumulative(), self.live.scheduler_lag.sum)
        yield lag
        missed = CounterMetricFamily(
            "aipulse_scheduler_missed_intervals",
            "Intervals skipped because the previous probe of the check overran.",
            labels=["location"])
        missed.add_metric([loc], self.live.missed_intervals)
        yield missed
        storage = CounterMetricFamily(
            "aipulse_storage_errors", "Failed writes to the SQLite history (retried).",
            labels=["location"])
        storage.add_metric([loc], self.live.storage_errors)
        yield storage
        yield from self._notifications()
        reload_ok = GaugeMetricFamily(
            "aipulse_config_last_reload_successful", "1 if the last config load succeeded.",
            labels=["location"])
        reload_ok.add_metric([loc], 1.0 if self.live.reload_ok else 0.0)
        yield reload_ok
        build = GaugeMetricFamily("aipulse_build_info", "aipulse version.", labels=["version", "location"])
        build.add_metric([__version__, loc], 1.0)
        yield build

    def _notifications(self) -> Iterator[Metric]:
        loc = self.location
        total = CounterMetricFamily(
            "aipulse_notifications",
            "Messages to notify.targets: sent, failed (every attempt failed), dropped (queue full).",
            labels=["target", "result", "location"])
        depth = GaugeMetricFamily(
            "aipulse_notification_queue_depth",
            "Messages waiting for the target, the one being sent included.",
            labels=["target", "location"])
        for name, stats in self.live.notifications.items():
            for result in ("sent", "failed", "dropped"):
                total.add_metric([name, result, loc], getattr(stats, result))
            depth.add_metric([name, loc], stats.queued)
        yield from (total, depth)

    def _outages(self, check_labels: list[str]) -> Iterator[Metric]:
        loc, now = self.location, time.time()
        state = GaugeMetricFamily(
            "aipulse_check_state", "Current state of the check: 1 for the current state.",
            labels=["service", "check", "state", "location"])
        active = GaugeMetricFamily(
            "aipulse_outage_active", "1 while the check has an open outage (down) window.",
            labels=check_labels)
        opened = CounterMetricFamily(
            "aipulse_outages", "Outage (down) windows opened.", labels=check_labels)
        last_start = GaugeMetricFamily(
            "aipulse_outage_last_start_timestamp_seconds",
            "Start of the latest outage window (back-dated to its first failure).", labels=check_labels)
        last_duration = GaugeMetricFamily(
            "aipulse_outage_last_duration_seconds", "Duration of the latest closed outage window.",
            labels=check_labels)
        ratio = GaugeMetricFamily(
            "aipulse_availability_ratio",
            "Time up / time observed (unknown and maintenance excluded) over the window.",
            labels=["service", "check", "window", "location"])
        gaps, maintenance = self._unknown_spans(now)
        for (service, check), stats in self.live.checks.items():
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
            for name, value in stats.availability(now, gaps, maintenance.get(service, [])).items():
                if value is not None:
                    ratio.add_metric([service, check, name, loc], value)
        yield from (state, active, opened, last_start, last_duration, ratio)

    def _service_status(self) -> Iterator[Metric]:
        loc = self.location
        status = GaugeMetricFamily(
            "aipulse_service_status", "Service status (Statuspage vocabulary): 1 for the current one.",
            labels=["service", "status", "location"])
        for sid, sstats in self.live.services.items():
            for name in SERVICE_STATUSES:
                status.add_metric([sid, name, loc], 1.0 if sstats.status == name else 0.0)
        yield status

    def _unknown_spans(self, now: float) -> tuple[list[Interval], dict[str, list[Interval]]]:
        gaps = self.live.gap_spans()
        maintenance: dict[str, list[Interval]] = {
            sid: [span for m in s.service.maintenance for span in m.spans(now - WINDOWS["30d"], now)]
            for sid, s in self.live.services.items() if s.service.maintenance
        }
        return gaps, maintenance

    def _vendor(self) -> Iterator[Metric]:
        loc = self.location
        component = GaugeMetricFamily(
            "aipulse_vendor_component_status",
            "The vendor's own status page: 1 for each component's current status.",
            labels=["service", "component", "status", "location"])
        overall = GaugeMetricFamily(
            "aipulse_vendor_status", "The vendor's own status page, overall: 1 for the current status.",
            labels=["service", "status", "location"])
        incident = GaugeMetricFamily(
            "aipulse_vendor_incident_open", "1 while the vendor's status page shows an unresolved incident.",
            labels=["service", "location"])
        lead = GaugeMetricFamily(
            "aipulse_detection_lead_seconds",
            "Vendor incident start minus the start of our outage window (positive: we were first).",
            labels=["service", "location"])
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
        yield from (component, overall, incident, lead)


# ---------------------------------------------------------------- fast exposition
#
# The per-check families in the order `collect` yields them. Sample lines are the
# same in both formats (labels sorted by name, values via floatToGoString); only the
# HELP/TYPE header lines differ, and those are taken from prometheus_client itself.

WARM_EVERY = 1.0  # seconds between background renders of checks with new results
WARM_SLICE = 200  # checks rendered between two yields to the event loop
RENDER_SLICE = 1000  # checks a scrape joins between two yields to the event loop
_PROBE_FAMILIES = 10  # success, duration, phase, probes, status, cert, steps, ttft, speed, gap
_OUTAGE_FAMILIES = 6  # state, active, opened, last_start, last_duration, ratio
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
        base = self.base
        last = stats.last
        reasons = []
        for reason, n in stats.reasons.items():
            labels = self.reasons.get(reason)
            if labels is None:
                labels = self.reasons[reason] = self.mid("reason", reason)
            reasons.append(f"aipulse_probes_total{labels} {_num(n)}\n")
        duration = self.histogram("aipulse_probe_duration_seconds", stats.durations)
        ttft = "" if stats.ttfts is None else self.histogram("aipulse_probe_ttft_seconds", stats.ttfts)
        if last is None:
            parts = ["", duration, "", "".join(reasons), "", "", "", ttft, "", ""]
        else:
            speed, gap = last.output_tokens_per_second, last.stream_max_gap
            phases = "".join(f"aipulse_probe_phase_seconds{self.mid('phase', name)} "
                             f"{floatToGoString(last.phases.get(name, 0.0))}\n" for name in PHASES)
            cert = "" if last.cert_expiry is None else \
                f"aipulse_probe_tls_cert_expiry_timestamp_seconds{base} {floatToGoString(last.cert_expiry)}\n"
            steps = "".join(f"aipulse_probe_step_seconds{self.end('step', step)} {floatToGoString(seconds)}\n"
                            for step, seconds in last.steps.items())
            parts = [
                f"aipulse_probe_success{base} {_ONE if last.success else _ZERO}\n",
                duration,
                phases,
                "".join(reasons),
                f"aipulse_probe_http_status_code{base} {_num(last.status_code)}\n",
                cert,
                steps,
                ttft,
                "" if speed is None else
                f"aipulse_probe_output_tokens_per_second{base} {floatToGoString(speed)}\n",
                "" if gap is None else f"aipulse_probe_stream_max_gap_seconds{base} {floatToGoString(gap)}\n",
            ]
        self.probe = [p.encode() for p in parts]

    def render_outages(self, stats: CheckStats) -> None:
        base = self.base
        window = stats.window
        down = window is not None and window.kind == "down"
        last_down, closed = stats.last_down, stats.last_closed_down
        parts = [
            "".join(f"aipulse_check_state{self.end('state', name)} {_ONE if stats.state == name else _ZERO}\n"
                    for name in STATES),
            f"aipulse_outage_active{base} {_ONE if down else _ZERO}\n",
            f"aipulse_outages_total{base} {_num(stats.outages_opened)}\n",
            "" if last_down is None else
            f"aipulse_outage_last_start_timestamp_seconds{base} {floatToGoString(last_down.start)}\n",
            "" if closed is None or closed.end is None else
            f"aipulse_outage_last_duration_seconds{base} {floatToGoString(closed.end - closed.start)}\n",
        ]
        self.outages = [p.encode() for p in parts]

    def render_ratio(self, values: dict[str, float | None]) -> None:
        self.ratio = "".join(f"aipulse_availability_ratio{self.end('window', name)} {floatToGoString(v)}\n"
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

    def headers(self, encoder: Encoder, openmetrics: bool) -> list[bytes]:
        """HELP/TYPE lines of each per-check family, as prometheus_client writes them."""
        key = (encoder, openmetrics)
        if key not in self._headers:
            c = AipulseCollector(LiveState(), self.collector.location)
            out = []
            for family in [*c._probe_families(), *c._outages(CHECK_LABELS), *c._service_status()]:
                text = encoder(_Families([family]))  # type: ignore[arg-type]
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

    async def _warm(self) -> None:
        """Render checks with new results as they come, a slice at a time between
        probes, so a scrape mostly joins text that is ready (at 10,000 checks it
        would otherwise render ~5,000 checks at once, blocking probes meanwhile)."""
        live = self.collector.live
        while True:
            await asyncio.sleep(WARM_EVERY)
            if self._warmer is not asyncio.current_task():
                return  # replaced (another event loop)
            changed = live.changed
            while changed:
                for _ in range(min(WARM_SLICE, len(changed))):
                    key = changed.pop()
                    stats = live.checks.get(key)
                    if stats is not None:
                        self._probe_text(key, stats)
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
        now = time.time()
        gaps, maintenance = collector._unknown_spans(now)
        order: list[_CheckText] = []
        live.changed.clear()  # all rendered below
        # A snapshot: a reload may change the checks while this yields.
        for n, (key, stats) in enumerate(list(live.checks.items()), 1):
            if n % RENDER_SLICE == 0:
                yield
            text = self._probe_text(key, stats)
            outage_key = (stats.state, stats.window, stats.outages_opened, stats.last_down,
                          stats.last_closed_down)
            if outage_key != text.outage_key:
                text.render_outages(stats)
                text.outage_key = outage_key
            values = stats.availability(now, gaps, maintenance.get(key[0], []))
            if values is not text.availability:
                text.render_ratio(values)
                text.availability = values
            order.append(text)
        if len(self.texts) > len(live.checks):  # checks removed by a reload
            self.texts = {k: v for k, v in self.texts.items() if k in live.checks}
        headers = self.headers(encoder, openmetrics)
        parts: list[bytes] = []
        for i in range(_PROBE_FAMILIES):
            parts.append(headers[i])
            parts += [t.probe[i] for t in order]
        for i in range(_OUTAGE_FAMILIES - 1):
            parts.append(headers[_PROBE_FAMILIES + i])
            parts += [t.outages[i] for t in order]
        parts.append(headers[_PROBE_FAMILIES + _OUTAGE_FAMILIES - 1])
        parts += [t.ratio for t in order]
        parts.append(headers[-1])  # aipulse_service_status
        statuses = self.statuses
        for sid, sstats in live.services.items():
            cached = statuses.get(sid)
            if cached is None or cached[0] != sstats.status:
                cached = statuses[sid] = (sstats.status, "".join(
                    f'aipulse_service_status{{location="{_esc(loc)}",service="{_esc(sid)}",status="{name}"}} '
                    f"{_ONE if sstats.status == name else _ZERO}\n" for name in SERVICE_STATUSES).encode())
            parts.append(cached[1])
        if len(statuses) > len(live.services):
            self.statuses = {k: v for k, v in statuses.items() if k in live.services}
        parts.append(encoder(_Families(collector._tail_families())))  # type: ignore[arg-type]
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
