"""ProbeResult: the one value a probe produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.reasons import Reason

PHASES = ("resolve", "connect", "tls", "processing", "transfer")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One attempt at one check, with one hard deadline.

    `degraded` is set when every assertion held but the probe was slower than
    `expect.max_latency`; the reason is then still `ok`.
    """

    service: str
    check: str
    started: float  # wall-clock epoch seconds when the probe started
    duration: float  # seconds, whole probe
    reason: Reason
    detail: str = ""  # human text; never a secret, never used as a label
    status_code: int = 0  # 0 when no response
    phases: dict[str, float] = field(default_factory=dict)
    redirects: int = 0
    cert_expiry: float | None = None  # epoch seconds: the earliest notAfter in the certificate chain
    degraded: bool = False
    ttft: float | None = None  # stream probes only: time to the first output
    output_tokens_per_second: float | None = None  # stream probes: usage tokens (else events) / s
    stream_max_gap: float | None = None  # stream probes: longest silence between output events
    step: str | None = None  # flow probes: the failing step
    steps: dict[str, float] = field(default_factory=dict)  # flow probes: seconds per step
    internal: bool = False  # aipulse failed, not the service: tells nothing about it

    @property
    def success(self) -> bool:
        return self.reason is Reason.OK
