"""Every metric family aipulse exports, in one table: name, type, help, labels and
place in the exposition. Both output paths of monitor.metrics (the collector that
prometheus_client encodes, and the fast text path) take their families, and their
order, from here; tests/test_metrics_render.py holds them byte for byte equal.

Names follow DESIGN.md ("Metrics"); counters are named without `_total`, which the
encoders add.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

_TYPES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...]

    def new(self) -> Metric:
        """An empty prometheus_client family, to add samples to."""
        return _TYPES[self.type](self.name, self.help, labels=list(self.labels))  # type: ignore[no-any-return]


CHECK = ("service", "check", "location")


def _check(extra: str) -> tuple[str, ...]:
    return ("service", "check", extra, "location")


# -- per check, from each probe's result (in the order they are exposed)
PROBE_SUCCESS = Family("aipulse_probe_success", "gauge", "1 if the last probe succeeded, else 0.", CHECK)
PROBE_DURATION = Family("aipulse_probe_duration_seconds", "histogram", "Duration of whole probes.", CHECK)
PROBE_PHASE = Family("aipulse_probe_phase_seconds", "gauge",
                     "Time spent in each phase of the last probe.",
                     _check("phase"))
PROBES = Family("aipulse_probes", "counter", "Probes run, by result reason.", _check("reason"))
PROBE_STATUS = Family("aipulse_probe_http_status_code", "gauge",
                      "HTTP status of the last probe, 0 when no response.",
                      CHECK)
PROBE_CERT = Family("aipulse_probe_tls_cert_expiry_timestamp_seconds", "gauge",
                    "Earliest expiry (notAfter) in the served certificate chain, also when verification "
                    "failed.",
                    CHECK)
PROBE_STEP = Family("aipulse_probe_step_seconds", "gauge",
                    "Duration of each step of the last flow probe.",
                    _check("step"))
PROBE_TTFT = Family("aipulse_probe_ttft_seconds", "histogram",
                    "Stream probes: time to the first content token.",
                    CHECK)
PROBE_SPEED = Family("aipulse_probe_output_tokens_per_second", "gauge",
                     "Stream probes: output tokens (usage, else events) per second after the first, last "
                     "probe.",
                     CHECK)
PROBE_GAP = Family("aipulse_probe_stream_max_gap_seconds", "gauge",
                   "Stream probes: the longest silence between output events of the last probe.",
                   CHECK)
PER_PROBE = (PROBE_SUCCESS, PROBE_DURATION, PROBE_PHASE, PROBES, PROBE_STATUS, PROBE_CERT, PROBE_STEP,
             PROBE_TTFT, PROBE_SPEED, PROBE_GAP)

# -- per check, from its outage state
CHECK_STATE = Family("aipulse_check_state", "gauge",
                     "Current state of the check: 1 for the current state.",
                     _check("state"))
OUTAGE_ACTIVE = Family("aipulse_outage_active", "gauge",
                       "1 while the check has an open outage (down) window.",
                       CHECK)
OUTAGES = Family("aipulse_outages", "counter", "Outage (down) windows opened.", CHECK)
OUTAGE_LAST_START = Family("aipulse_outage_last_start_timestamp_seconds", "gauge",
                           "Start of the latest outage window (back-dated to its first failure).",
                           CHECK)
OUTAGE_LAST_DURATION = Family("aipulse_outage_last_duration_seconds", "gauge",
                              "Duration of the latest closed outage window.",
                              CHECK)
AVAILABILITY = Family("aipulse_availability_ratio", "gauge",
                      "Time up / time observed (unknown and maintenance excluded) over the window.",
                      _check("window"))
PER_OUTAGE = (CHECK_STATE, OUTAGE_ACTIVE, OUTAGES, OUTAGE_LAST_START, OUTAGE_LAST_DURATION, AVAILABILITY)

# -- per service
SERVICE_STATUS = Family("aipulse_service_status", "gauge",
                        "Service status (Statuspage vocabulary): 1 for the current one.",
                        ("service", "status", "location"))

# -- the vendors' own status pages
VENDOR_COMPONENT = Family("aipulse_vendor_component_status", "gauge",
                          "The vendor's own status page: 1 for each component's current status.",
                          ("service", "component", "status", "location"))
VENDOR_STATUS = Family("aipulse_vendor_status", "gauge",
                       "The vendor's own status page, overall: 1 for the current status.",
                       ("service", "status", "location"))
VENDOR_INCIDENT = Family("aipulse_vendor_incident_open", "gauge",
                         "1 while the vendor's status page shows an unresolved incident.",
                         ("service", "location"))
DETECTION_LEAD = Family("aipulse_detection_lead_seconds", "gauge",
                        "Vendor incident start minus the start of our outage window (positive: we were "
                        "first).",
                        ("service", "location"))
VENDOR = (VENDOR_COMPONENT, VENDOR_STATUS, VENDOR_INCIDENT, DETECTION_LEAD)

# -- the daemon itself
SCHEDULER_LAG = Family("aipulse_scheduler_lag_seconds", "histogram",
                       "Delay between a probe's due time and its start.",
                       ("location",))
MISSED = Family("aipulse_scheduler_missed_intervals", "counter",
                "Intervals skipped because the previous probe of the check overran.",
                ("location",))
STORAGE_ERRORS = Family("aipulse_storage_errors", "counter",
                        "Failed writes to the SQLite history (retried).",
                        ("location",))
STORAGE_REPLACED = Family("aipulse_storage_replaced", "counter",
                          "Times the SQLite history file was found deleted or replaced while running: a "
                          "fresh one was opened and the open windows carried over (earlier history is not "
                          "in it).",
                          ("location",))
NOTIFICATIONS = Family("aipulse_notifications", "counter",
                       "Messages to notify.targets: sent, failed (every attempt failed), dropped (queue "
                       "full).",
                       ("target", "result", "location"))
NOTIFICATION_QUEUE = Family("aipulse_notification_queue_depth", "gauge",
                            "Messages waiting for the target, the one being sent included.",
                            ("target", "location"))
MONITOR_OFFLINE = Family("aipulse_monitor_offline", "gauge",
                         "1 while the monitor cannot reach the network (every connectivity canary fails "
                         "or, without canaries, every host fails with dns/connect): every check is unknown "
                         "meanwhile.",
                         ("location",))
CHECKS_SKIPPED = Family("aipulse_checks_skipped", "gauge",
                        "Checks of the config left out because this machine lacks a key they need.",
                        ("location",))
RELOAD_OK = Family("aipulse_config_last_reload_successful", "gauge",
                   "1 if the last config load succeeded.",
                   ("location",))
BUILD_INFO = Family("aipulse_build_info", "gauge", "aipulse version.", ("version", "location"))
DAEMON = (SCHEDULER_LAG, MISSED, STORAGE_ERRORS, STORAGE_REPLACED, NOTIFICATIONS, NOTIFICATION_QUEUE,
          MONITOR_OFFLINE, CHECKS_SKIPPED, RELOAD_OK, BUILD_INFO)

# The whole exposition, in order.
ALL = (*PER_PROBE, *PER_OUTAGE, SERVICE_STATUS, *VENDOR, *DAEMON)
