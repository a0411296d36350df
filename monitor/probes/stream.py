"""`kind: stream`: one streaming completion under one hard deadline.

What it measures and how it fails (see DESIGN.md and the research notes, section 3):

* TTFT = the first output event (content, a refusal or a tool call: each is an answer
  to the vendors' SDKs) minus the moment the request was sent. Role-only chunks,
  empty deltas, Anthropic `ping`s and SSE `:` comments (DeepSeek `: keep-alive`,
  OpenRouter `: OPENROUTER PROCESSING`) are not output; reasoning is progress.
* Output speed: output tokens (the vendor's usage count when the stream reports it,
  else output events) per second of generation after the first token; the longest
  silence between output or progress events (`max_gap`): past `expect.max_stall` the
  probe is degraded, not down.
* Three deadlines: the check's `timeout` over everything; `expect.max_ttft`, absolute
  from the request, for the first output; `idle_timeout` (default: `timeout`) for the
  longest wait between output or progress events. A comment or a ping never re-arms
  it: a server that keeps a queued request alive with keep-alives is stalled, not slow.
* A status the check does not accept, before the stream starts, is judged like the
  http probe judges it (429 -> rate_limited, 503/529 -> overloaded, challenge -> blocked).
* After a 200: an error event/chunk -> stream_error; the end of the stream (or a cut
  connection) without the format's terminal marker -> stream_truncated; a data line
  that is not JSON -> protocol; no output in time -> timeout; more than
  `max_body_bytes` -> body_too_large.

Generated text is parsed only to learn whether it is empty. It is never stored or
logged: details name the vendor's error type and message, sizes and times, never content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from monitor.config import CheckConfig
from monitor.probes.client import Response
from monitor.probes.judge import judge
from monitor.probes.runner import Probe, Verdict
from monitor.probes.sse import END, PARSERS, PROGRESS, TERMINAL, TOKEN, SSEParser, json_error
from monitor.reasons import Failure, Reason

STREAMING = "reading the stream"


async def probe(check: CheckConfig, probe: Probe) -> Verdict:
    state = _State(check)
    probe.on_timeout = state.on_timeout
    try:
        state.sent = time.perf_counter()
        response = await probe.send(check.method, check.url, _request_headers(check), check.body)
        try:
            verdict = await _judge_response(response, check, probe, state)
        finally:
            response.close()
    finally:  # also when the deadline cancels the stream: what was seen is kept
        probe.fields.update(state.fields())
    stall = check.expect.max_stall
    probe.degraded = stall is not None and state.max_gap is not None and state.max_gap > stall
    return verdict


def _request_headers(check: CheckConfig) -> tuple[tuple[str, str], ...]:
    """The check's headers, plus Accept: text/event-stream and Accept-Encoding: identity
    unless the check sets them (a compressed stream can hold tokens back in the
    compressor; we still decode one, bounded, if a server compresses anyway)."""
    present = {name.lower() for name, _ in check.headers}
    extra = [(k, v) for k, v in (("Accept", "text/event-stream"), ("Accept-Encoding", "identity"))
             if k.lower() not in present]
    return (*check.headers, *extra)


async def _judge_response(response: Response, check: CheckConfig, probe: Probe,
                          state: _State) -> Verdict:
    status, headers, trace = response.status, response.headers, probe.trace
    if not 200 <= status < 300 or not check.expect.accepts(status):
        # The stream never started: an ordinary error answer, judged like the http probe.
        # (A non-2xx the check accepts, e.g. 401 without a key, is ok without a TTFT.)
        body = await response.read(trace)
        return judge(check.expect, status, headers, body, trace.cert_expiry, time.time())
    # Status, headers, challenge and certificate assertions apply before the stream;
    # body assertions do not apply to a stream (its body is generated text).
    head_only = dataclasses.replace(check.expect, body_contains=(), body_regex=None, json=(),
                                    body_not_contains=(), body_not_regex=None)
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type and content_type != "text/event-stream":
        body = await response.read(trace)
        reason, detail = judge(head_only, status, headers, body, trace.cert_expiry, time.time())
        if reason is not Reason.OK:
            return reason, detail
        error = json_error(body)
        if error is not None:
            return Reason.STREAM_ERROR, f"HTTP {status} with an error instead of a stream: {error}"
        return Reason.PROTOCOL, f"HTTP {status} is {content_type}, not text/event-stream"
    reason, detail = judge(head_only, status, headers, b"", trace.cert_expiry, time.time())
    if reason is not Reason.OK:
        return reason, detail
    if response.undecodable:
        return Reason.PROTOCOL, (f"stream is encoded as {headers.get('content-encoding')!r}, "
                                 "which aipulse cannot decode")
    trace.stage = STREAMING
    began = time.perf_counter()
    try:
        return await _read_stream(response, check, state)
    finally:
        trace.add("transfer", time.perf_counter() - began)


class _State:
    """Clock and progress of one stream. Times are time.perf_counter() values."""

    def __init__(self, check: CheckConfig) -> None:
        self.timeout = check.timeout
        self.format = check.format or "openai"
        self.max_ttft = check.expect.max_ttft
        self.idle = check.idle_timeout or check.timeout
        self.sent = time.perf_counter()
        self.last_progress = self.sent  # re-armed at stream start, then by output/progress only
        self.first_token: float | None = None
        self.last_event: float | None = None  # the last output or progress event
        self.max_gap: float | None = None
        self.tokens = 0  # output events
        self.usage: int | None = None  # output tokens, when the vendor reports them
        self.ended_at: float | None = None
        self.waiting = ""  # what the stream watchdog is waiting for, if it fires
        self.streaming = False  # headers judged, reading events

    def deadline(self) -> float:
        """The nearer of the TTFT deadline (until the first output) and the idle one."""
        idle_at = self.last_progress + self.idle
        if self.first_token is None and self.max_ttft is not None:
            ttft_at = self.sent + self.max_ttft
            if ttft_at <= idle_at:
                self.waiting = f"no token within {self.max_ttft:g}s"
                return ttft_at
        self.waiting = f"no token for {self.idle:g}s"
        return idle_at

    def apply(self, flags: int, usage: int | None, now: float) -> None:
        if usage is not None:
            self.usage = usage
        if flags & TOKEN:
            self.tokens += 1
            if self.first_token is None:
                self.first_token = now
        if flags & (TOKEN | PROGRESS):
            if self.last_event is not None:
                self.max_gap = max(self.max_gap or 0.0, now - self.last_event)
            self.last_event = self.last_progress = now
        if flags & END and self.ended_at is None:
            self.ended_at = now

    def verdict(self) -> Verdict:
        """At the terminal marker (openai, anthropic, responses) or at the end (gemini)."""
        if self.ended_at is None:
            return Reason.STREAM_TRUNCATED, (
                f"stream ended without {TERMINAL[self.format]} after {self.tokens} content events")
        if self.first_token is None:
            # The service answered and finished, but generated nothing we can time.
            return Reason.ASSERTION, "stream completed without a content token"
        return Reason.OK, ""

    def on_timeout(self, said: str) -> Verdict:
        if not self.streaming:
            return Reason.TIMEOUT, said
        return Reason.TIMEOUT, f"timed out after {self.timeout:g}s " + (
            "waiting for the first token" if self.first_token is None
            else f"after {self.tokens} content events")

    def fields(self) -> dict[str, float | None]:
        ttft = None if self.first_token is None else self.first_token - self.sent
        speed = None
        if self.first_token is not None and self.ended_at is not None:
            generating = self.ended_at - self.first_token
            count = self.usage if self.usage is not None else self.tokens
            if generating > 0 and count:
                speed = count / generating
        return {"ttft": ttft, "output_tokens_per_second": speed, "stream_max_gap": self.max_gap}


async def _read_stream(response: Response, check: CheckConfig, state: _State) -> Verdict:
    loop = asyncio.get_running_loop()
    parse = PARSERS[state.format]
    stop_at_end = state.format != "gemini"  # Gemini's stream ending is its end marker
    # The response bounds the whole stream (decompressed, if a server compressed
    # anyway); the SSE parser bounds a single line.
    sse = SSEParser(max_line=check.max_body_bytes)
    state.last_progress = time.perf_counter()
    state.streaming = True
    try:
        # One watchdog for the stream deadlines, re-armed before each read; the check's
        # own `timeout` (around us) still covers everything.
        async with asyncio.timeout(None) as watchdog:
            while True:
                watchdog.reschedule(loop.time() + (state.deadline() - time.perf_counter()))
                try:
                    chunk = await response.next_chunk()
                except Failure as failure:
                    if failure.reason is Reason.BODY_TOO_LARGE:
                        return failure.reason, f"stream larger than {check.max_body_bytes} bytes"
                    # The connection broke mid-stream: it ended without its terminal marker.
                    return Reason.STREAM_TRUNCATED, (
                        f"stream cut after {state.tokens} content events ({failure.detail})")
                now = time.perf_counter()
                events = sse.close() if chunk is None else sse.feed(chunk)
                for event, payload in events:
                    state.apply(*parse(event, payload), now)
                    if state.ended_at is not None and stop_at_end:
                        return state.verdict()
                if chunk is None:
                    return state.verdict()
    except TimeoutError:
        if watchdog.expired():
            return Reason.TIMEOUT, state.waiting
        raise
