"""`kind: http`: one request (redirects followed unless `follow_redirects: false`),
its response judged against `expect`."""

from __future__ import annotations

import time

from monitor.config import CheckConfig
from monitor.probes.judge import judge
from monitor.probes.runner import Probe, Verdict


async def probe(check: CheckConfig, probe: Probe) -> Verdict:
    response, body = await probe.fetch(check.method, check.url, check.headers, check.body)
    return judge(check.expect, response.status, response.headers, body, probe.trace.cert_expiry, time.time(),
                 undecodable=response.headers.get("content-encoding") or "" if response.undecodable else "")
