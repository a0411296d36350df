"""Connectivity canaries: can the monitor itself reach the network? (the I/O shell)

A canary (config `connectivity:`) is a target that is not a service. A URL canary is
probed as an http check that accepts any status, through the probes' own entry point
(`Prober.run`); a host:port canary is a TCP connect. Either way the result is a
`ProbeResult` of the service `CANARY_SERVICE`, and the canary *answered* when its
reason is `ok`. The pipeline decides from all of them whether the monitor is offline
(`monitor.rollup.OfflineDetector`); nothing here keeps state.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from monitor.config import CANARY_SERVICE, CheckConfig
from monitor.probes import Prober, net
from monitor.reasons import Failure, Reason
from monitor.result import ProbeResult


class CanaryProber:
    """Probes canaries: URLs with the daemon's Prober, host:port with a TCP connect."""

    def __init__(self, prober: Prober) -> None:
        self.prober = prober

    async def run(self, check: CheckConfig) -> ProbeResult:
        if check.url.startswith("tcp://"):
            return await tcp_connect(check)
        return await self.prober.run(check)


async def tcp_connect(check: CheckConfig) -> ProbeResult:
    """Open (and close) one TCP connection to the check's tcp://host:port within its
    timeout, as the probes connect (monitor.probes.net: timed DNS, Happy Eyeballs).
    Never raises (except CancelledError on shutdown)."""
    parts = urlsplit(check.url)
    host, port = parts.hostname or "", parts.port or 0
    started, t0 = time.time(), time.perf_counter()
    trace = net.ProbeTrace()
    try:
        async with asyncio.timeout(check.timeout):
            net.PlainConn(await net.connect(host, port, check.ip_protocol, trace)).close()
        reason, detail = Reason.OK, ""
    except TimeoutError:
        reason, detail = Reason.TIMEOUT, f"connect to {host}:{port}: no connection within {check.timeout:g}s"
    except Failure as failure:
        reason, detail = failure.reason, f"connect to {host}:{port}: {failure.detail}"
    return ProbeResult(CANARY_SERVICE, check.id, started=started, duration=time.perf_counter() - t0,
                       reason=reason, detail=detail, phases=trace.phases)
