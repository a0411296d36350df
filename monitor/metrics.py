"""Prometheus exposition: a custom collector over `LiveState`, built fresh per scrape.

Nothing is registered per check, so a check removed by a reload simply stops
appearing. Every series carries the constant `location` label.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from monitor import __version__
from monitor.availability import WINDOWS
from monitor.live import LiveState
from monitor.outage import State
from monitor.result import PHASES
from monitor.rollup import SERVICE_STATUSES
from monitor.statuspage import COMPONENT_STATUSES, component_labels

STATES = tuple(s.value for s in State)


class AipulseCollector(Collector):
    def __init__(self, live: LiveState, location: str) -> None:
        self.live = live
        self.location = location

    def collect(self) -> Iterator[Metric]:
        loc = self.location
        check_labels = ["service", "check", "location"]
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
            "Expiry (notAfter) of the served leaf certificate, also when verification failed.",
            labels=check_labels)
        ttft = HistogramMetricFamily(
            "aipulse_probe_ttft_seconds", "Stream probes: time to the first content token.",
            labels=check_labels)
        steps = GaugeMetricFamily(
            "aipulse_probe_step_seconds", "Duration of each step of the last flow probe.",
            labels=["service", "check", "step", "location"])
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
        yield from (success, duration, phase, probes, status, cert, steps, ttft)
        yield from self._outages(check_labels)

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
        reload_ok = GaugeMetricFamily(
            "aipulse_config_last_reload_successful", "1 if the last config load succeeded.",
            labels=["location"])
        reload_ok.add_metric([loc], 1.0 if self.live.reload_ok else 0.0)
        yield reload_ok
        build = GaugeMetricFamily("aipulse_build_info", "aipulse version.", labels=["version", "location"])
        build.add_metric([__version__, loc], 1.0)
        yield build


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
        gaps = self.live.gap_spans()
        maintenance = {
            sid: [span for m in s.service.maintenance for span in m.spans(now - WINDOWS["30d"], now)]
            for sid, s in self.live.services.items()
        }
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
        status = GaugeMetricFamily(
            "aipulse_service_status", "Service status (Statuspage vocabulary): 1 for the current one.",
            labels=["service", "status", "location"])
        for sid, sstats in self.live.services.items():
            for name in SERVICE_STATUSES:
                status.add_metric([sid, name, loc], 1.0 if sstats.status == name else 0.0)
        yield status
        yield from self._vendor()

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
            if vendor.source != "unknown":
                incident.add_metric([sid, loc], 1.0 if vendor.incidents else 0.0)
            if sstats.detection_lead is not None:
                lead.add_metric([sid, loc], sstats.detection_lead)
        yield from (component, overall, incident, lead)


def make_registry(live: LiveState, location: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AipulseCollector(live, location))
    return registry


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """Exposition bytes and content type; OpenMetrics when the Accept header asks."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
