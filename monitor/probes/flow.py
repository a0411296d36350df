"""`kind: flow`: ordered HTTP steps under one deadline, e.g. log in, then call the API.

Each step has its own `expect`; `extract` takes values from a response (JSONPath, a
header, a cookie or a regex) into `{{var}}` for later URLs, headers and bodies.
Cookies are carried across steps (one client per probe). After a failure the
remaining steps are skipped, except those marked `always_run` (clean-up). The result
names the first failing step; every step's duration is kept for the metrics.
Extracted values are treated as secrets: they never appear in a detail.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

import httpx

from monitor.config import TEMPLATE, CheckConfig, Extraction, FlowStep
from monitor.probes.http import failure, fetch_refused_cert, read_body, result_of, send
from monitor.probes.judge import judge
from monitor.probes.transport import ProbeTrace
from monitor.reasons import Reason
from monitor.redact import Redactor
from monitor.result import ProbeResult


class ExtractError(Exception):
    pass


async def probe(check: CheckConfig, client: httpx.AsyncClient, redact: Redactor) -> ProbeResult:
    started = time.time()
    t0 = time.perf_counter()
    trace = ProbeTrace()
    token = trace.activate()
    variables: dict[str, str] = {}
    step_seconds: dict[str, float] = {}
    failed: tuple[str, Reason, str] | None = None
    current = check.steps[0].name
    t_step = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            for step in check.steps:
                if failed is not None and not step.always_run:
                    continue
                current = step.name
                t_step = time.perf_counter()
                reason, detail = await _run_step(step, check, client, trace, variables)
                step_seconds[step.name] = time.perf_counter() - t_step
                if reason is not Reason.OK and failed is None:
                    failed = (step.name, reason, detail)
    except TimeoutError:
        step_seconds[current] = time.perf_counter() - t_step
        if failed is None:  # a clean-up step timing out does not hide the first failure
            failed = (current, Reason.TIMEOUT, f"timed out after {check.timeout:g}s {trace.stage}")
    finally:
        trace.deactivate(token)
    duration = time.perf_counter() - t0
    step, reason, detail = failed if failed is not None else (None, Reason.OK, "")
    if step is not None:
        detail = f"step {step}: {detail}"
    return result_of(check, trace, started, duration, reason, redact.with_secrets(variables.values())(detail),
                     step=step, steps=step_seconds)


async def _run_step(step: FlowStep, check: CheckConfig, client: httpx.AsyncClient, trace: ProbeTrace,
                    variables: dict[str, str]) -> tuple[Reason, str]:
    url = render(step.url, variables, url=True)
    headers = tuple((k, render(v, variables)) for k, v in step.headers)
    body = render(step.body.decode(), variables).encode() if step.body is not None else None
    try:
        response = await send(client, step.method, url, headers, body, trace)
        content = await read_body(response, check.max_body_bytes, trace)
    except Exception as exc:
        await fetch_refused_cert(exc, trace)
        return failure(exc, check, trace)
    reason, detail = judge(step.expect, response.status_code, response.headers, content,
                           trace.cert_expiry, time.time())
    if reason is Reason.OK:
        try:
            for extraction in step.extract:
                variables[extraction.var] = extract(extraction, response, content, client)
        except ExtractError as exc:
            return Reason.ASSERTION, str(exc)
        except (ValueError, RecursionError, LookupError) as exc:  # e.g. JSON nested too deeply
            return Reason.ASSERTION, f"extract failed: {type(exc).__name__}"
    return reason, detail


def render(text: str, variables: dict[str, str], url: bool = False) -> str:
    """Replace {{var}}; in a URL the value is percent-encoded."""
    def sub(m: object) -> str:
        value = variables.get(m.group(1), "")  # type: ignore[attr-defined]
        return quote(value, safe="") if url else value
    return TEMPLATE.sub(sub, text)


def extract(e: Extraction, response: httpx.Response, content: bytes, client: httpx.AsyncClient) -> str:
    """The value `e` selects, as text; ExtractError when nothing matches."""
    if e.source == "json":
        try:
            doc = json.loads(content)
        except ValueError:
            raise ExtractError(f"extract {e.var}: body is not JSON") from None
        found = e.compiled.findall(doc)
        if not found:
            raise ExtractError(f"extract {e.var}: JSONPath {e.expr} matched nothing")
        value = found[0]
        return value if isinstance(value, str) else json.dumps(value)
    if e.source == "header":
        header = response.headers.get(e.compiled)
        if header is None:
            raise ExtractError(f"extract {e.var}: no header {e.expr}")
        return header
    if e.source == "cookie":
        cookie = response.cookies.get(e.compiled) or client.cookies.get(e.compiled)
        if cookie is None:
            raise ExtractError(f"extract {e.var}: no cookie {e.expr}")
        return cookie
    m = e.compiled.search(content.decode("utf-8", errors="replace"))
    if m is None:
        raise ExtractError(f"extract {e.var}: /{e.expr}/ matched nothing")
    return m.group(1) if m.re.groups else m.group(0)
