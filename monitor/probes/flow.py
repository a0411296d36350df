"""`kind: flow`: ordered HTTP steps under one deadline, e.g. log in, then call the API.

Each step has its own `expect`; `extract` takes values from a response (JSONPath, a
header, a cookie or a regex) into `{{var}}` for later URLs, headers and bodies.
Cookies are carried across steps (one client per probe). After a failure the
remaining steps are skipped, except those marked `always_run` (clean-up). The result
names the first failing step; every step's duration is kept for the metrics.
Extracted values are treated as secrets: they never appear in a detail.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

from monitor.config import TEMPLATE, CheckConfig, Extraction, FlowStep
from monitor.probes.client import Cookies, Response
from monitor.probes.judge import judge
from monitor.probes.runner import Probe, Verdict
from monitor.reasons import Failure, Reason


class ExtractError(Exception):
    pass


async def probe(check: CheckConfig, probe: Probe) -> Verdict:
    steps: dict[str, float] = {}
    probe.fields["steps"] = steps
    failed: list[tuple[str, Reason, str]] = []  # the first failing step: it names the result
    current = check.steps[0].name

    def on_timeout(said: str) -> Verdict:
        # A clean-up step timing out does not hide the first failure.
        step, reason, detail = failed[0] if failed else (current, Reason.TIMEOUT, said)
        probe.fields["step"] = step
        return reason, f"step {step}: {detail}"

    probe.on_timeout = on_timeout
    variables: dict[str, str] = {}
    for step in check.steps:
        if failed and not step.always_run:
            continue
        current = step.name
        began = time.perf_counter()
        try:
            reason, detail = await _run_step(step, probe, variables)
        except Failure as failure:
            reason, detail = failure.reason, failure.detail
        finally:  # also when the deadline cancels the step
            steps[step.name] = time.perf_counter() - began
        if reason is not Reason.OK and not failed:
            failed.append((step.name, reason, detail))
    if not failed:
        return Reason.OK, ""
    step, reason, detail = failed[0]
    probe.fields["step"] = step
    return reason, f"step {step}: {detail}"


async def _run_step(step: FlowStep, probe: Probe, variables: dict[str, str]) -> Verdict:
    url = render(step.url, variables, url=True)
    headers = tuple((k, render(v, variables)) for k, v in step.headers)
    body = render(step.body.decode(), variables).encode() if step.body is not None else None
    response, content = await probe.fetch(step.method, url, headers, body)
    encoding = response.headers.get("content-encoding") or "" if response.undecodable else ""
    reason, detail = judge(step.expect, response.status, response.headers, content,
                           probe.trace.cert_expiry, time.time(), undecodable=encoding)
    if reason is Reason.OK:
        try:
            for extraction in step.extract:
                value = extract(extraction, response, content, probe.cookies)
                variables[extraction.var] = value
                probe.secrets.append(value)  # extracted values are treated as secrets
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


def extract(e: Extraction, response: Response, content: bytes, cookies: Cookies) -> str:
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
        cookie = cookies.get(e.compiled)
        if cookie is None:
            raise ExtractError(f"extract {e.var}: no cookie {e.expr}")
        return cookie
    m = e.compiled.search(content.decode("utf-8", errors="replace"))
    if m is None:
        raise ExtractError(f"extract {e.var}: /{e.expr}/ matched nothing")
    return m.group(1) if m.re.groups else m.group(0)
