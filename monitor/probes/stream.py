"""`kind: stream`: one streaming completion under one hard deadline.

What it measures and how it fails (see DESIGN.md and the research notes, section 3):

* TTFT = first non-empty content token minus the moment the request was sent. Role-only
  chunks, empty deltas, Anthropic `ping`s and SSE `:` comments (DeepSeek `: keep-alive`,
  OpenRouter `: OPENROUTER PROCESSING`) are not tokens.
* Three deadlines: the check's `timeout` over everything; `expect.max_ttft`, absolute
  from the request, for the first token; `idle_timeout` (default: `timeout`) for the
  longest wait between content events, measured from the start of the stream. Only
  generated output re-arms the idle watchdog, never a comment or a ping: a server that
  keeps a queued request alive with keep-alives for ten minutes is stalled, not slow.
* A status the check does not accept, before the stream starts, is judged like the
  http probe judges it (429 -> rate_limited, 503/529 -> overloaded, challenge -> blocked).
* After a 200: an error event/chunk -> stream_error; EOF (or a cut connection) without
  the format's terminal marker -> stream_truncated; a data line that is not JSON ->
  protocol; no token in time -> timeout; more than `max_body_bytes` -> body_too_large.

Generated text is parsed only to learn whether it is empty. It is never stored or
logged: details name the vendor's error type and message, sizes and times, never content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from monitor.config import CheckConfig
from monitor.probes.http import failure, fetch_refused_cert, read_body, result_of, send
from monitor.probes.judge import judge
from monitor.probes.transport import BoundedDecoder, ProbeTrace
from monitor.reasons import BodyTooLarge, Reason
from monitor.redact import Redactor
from monitor.result import ProbeResult

# What a parsed event means (bit flags; Gemini's last frame is often TOKEN | END).
NOTHING, TOKEN, PROGRESS, END = 0, 1, 2, 4

TERMINAL = {"openai": "data: [DONE]", "anthropic": "message_stop", "gemini": "a finishReason"}


async def probe(check: CheckConfig, client: httpx.AsyncClient, redact: Redactor) -> ProbeResult:
    """Probe `check` once. Never raises (except CancelledError on shutdown)."""
    started = time.time()
    t0 = time.perf_counter()
    trace = ProbeTrace()
    token = trace.activate()
    state = _State(check, sent=t0)
    try:
        async with asyncio.timeout(check.timeout):
            try:
                state.sent = time.perf_counter()
                response = await send(client, check.method, check.url, _request_headers(check),
                                      check.body, trace)
            except Exception as exc:
                await fetch_refused_cert(exc, trace)
                raise
            reason, detail = await _judge_response(response, check, trace, state)
        duration = time.perf_counter() - t0
    except Exception as exc:
        duration = time.perf_counter() - t0
        if isinstance(exc, BodyTooLarge):
            reason, detail = Reason.BODY_TOO_LARGE, str(exc)
        else:
            reason, detail = failure(exc, check, trace)
            if reason is Reason.TIMEOUT and state.streaming:
                detail = f"timed out after {check.timeout:g}s " + (
                    "waiting for the first token" if state.first_token is None
                    else f"after {state.tokens} content events")
    finally:
        trace.deactivate(token)
    return result_of(check, trace, started, duration, reason, redact(detail), ttft=state.ttft)


def _request_headers(check: CheckConfig) -> tuple[tuple[str, str], ...]:
    """The check's headers, plus Accept: text/event-stream and Accept-Encoding: identity
    unless the check sets them (a compressed stream can hold tokens back in the
    compressor; we still decode one, bounded, if a server compresses anyway)."""
    present = {name.lower() for name, _ in check.headers}
    extra = [(k, v) for k, v in (("Accept", "text/event-stream"), ("Accept-Encoding", "identity"))
             if k.lower() not in present]
    return (*check.headers, *extra)


async def _judge_response(response: httpx.Response, check: CheckConfig, trace: ProbeTrace,
                          state: _State) -> tuple[Reason, str]:
    status, headers = response.status_code, response.headers
    if not 200 <= status < 300 or not check.expect.accepts(status):
        # The stream never started: an ordinary error answer, judged like the http probe.
        # (A non-2xx the check accepts, e.g. 401 without a key, is ok without a TTFT.)
        body = await read_body(response, check.max_body_bytes, trace)
        return judge(check.expect, status, headers, body, trace.cert_expiry, time.time())
    # Status, headers, challenge and certificate assertions apply before the stream;
    # body assertions do not apply to a stream (its body is generated text).
    head_only = dataclasses.replace(check.expect, body_contains=(), body_regex=None, json=())
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "text/event-stream":
        body = await read_body(response, check.max_body_bytes, trace)
        reason, detail = judge(head_only, status, headers, body, trace.cert_expiry, time.time())
        if reason is not Reason.OK:
            return reason, detail
        error = _json_error(body)
        if error is not None:
            return Reason.STREAM_ERROR, f"HTTP {status} with an error instead of a stream: {error}"
        return Reason.PROTOCOL, f"HTTP {status} is {content_type}, not text/event-stream"
    reason, detail = judge(head_only, status, headers, b"", trace.cert_expiry, time.time())
    if reason is not Reason.OK:
        await response.aclose()
        return reason, detail
    return await _read_stream(response, check, trace, state)


class _State:
    """Clock and progress of one stream. Times are time.perf_counter() values."""

    def __init__(self, check: CheckConfig, sent: float) -> None:
        self.format = check.format or "openai"
        self.max_ttft = check.expect.max_ttft
        self.idle = check.idle_timeout or check.timeout
        self.sent = sent
        self.last_progress = sent  # re-armed at stream start, then by content events only
        self.first_token: float | None = None
        self.tokens = 0
        self.ended = False
        self.waiting = ""  # what the stream watchdog is waiting for, if it fires
        self.streaming = False  # headers judged, reading events

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    def deadline(self) -> float:
        """The nearer of the TTFT deadline (until the first token) and the idle one."""
        idle_at = self.last_progress + self.idle
        if self.first_token is None and self.max_ttft is not None:
            ttft_at = self.sent + self.max_ttft
            if ttft_at <= idle_at:
                self.waiting = f"no token within {self.max_ttft:g}s"
                return ttft_at
        self.waiting = f"no token for {self.idle:g}s"
        return idle_at

    def apply(self, flags: int, now: float) -> None:
        if flags & TOKEN:
            self.tokens += 1
            if self.first_token is None:
                self.first_token = now
        if flags & (TOKEN | PROGRESS):
            self.last_progress = now
        if flags & END:
            self.ended = True

    def verdict(self) -> tuple[Reason, str]:
        """At the terminal marker (openai, anthropic) or at EOF."""
        if not self.ended:
            return Reason.STREAM_TRUNCATED, (
                f"stream ended without {TERMINAL[self.format]} after {self.tokens} content events")
        if self.first_token is None:
            # The service answered and finished, but generated nothing we can time.
            return Reason.ASSERTION, "stream completed without a content token"
        return Reason.OK, ""


async def _read_stream(response: httpx.Response, check: CheckConfig, trace: ProbeTrace,
                       state: _State) -> tuple[Reason, str]:
    loop = asyncio.get_running_loop()
    parse = PARSERS[state.format]
    stop_at_end = state.format != "gemini"  # Gemini's stream ending is its end marker
    # The decoder bounds the whole stream (decompressed, if a server compressed anyway);
    # the SSE splitter bounds a single line. We drain the decoder after every feed, so
    # we hold one read chunk plus at most one partial line.
    decoder = BoundedDecoder(response.headers.get("content-encoding", ""), check.max_body_bytes)
    sse = SSEParser(max_line=check.max_body_bytes)
    chunks = response.aiter_raw()
    began = state.last_progress = time.perf_counter()
    state.streaming = True
    try:
        # One watchdog for the stream deadlines, re-armed before each read; the check's
        # own `timeout` (around us) still covers everything.
        async with asyncio.timeout(None) as watchdog:
            while True:
                watchdog.reschedule(loop.time() + (state.deadline() - time.perf_counter()))
                chunk = await anext(chunks, None)
                now = time.perf_counter()
                if chunk is None:
                    events = sse.close()
                else:
                    try:
                        decoder.feed(chunk)
                    except BodyTooLarge:
                        raise BodyTooLarge(f"stream larger than {check.max_body_bytes} bytes") from None
                    data = decoder.drain()
                    events = sse.feed(data)
                for event, payload in events:
                    state.apply(parse(event, payload), now)
                    if state.ended and stop_at_end:
                        return state.verdict()
                if chunk is None:
                    return state.verdict()
    except TimeoutError:
        if watchdog.expired():
            return Reason.TIMEOUT, state.waiting
        raise
    except _Failed as exc:
        return exc.reason, exc.detail
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        # The connection broke mid-stream: the stream ended without its terminal marker.
        why = (str(exc) or type(exc).__name__).splitlines()[0][:200]
        return Reason.STREAM_TRUNCATED, (
            f"stream cut after {state.tokens} content events ({why})")
    finally:
        trace.add("transfer", time.perf_counter() - began)
        await chunks.aclose()  # type: ignore[attr-defined]  # an async generator
        await response.aclose()


# --- Server-Sent Events ----------------------------------------------------------
#
# We split and parse SSE ourselves instead of using httpx-sse. Its SSEDecoder is the
# same few lines of the spec, but it is fed by `aiter_lines()`, which buffers a line of
# any length, so we would have to split bounded lines ourselves anyway; what is left
# (field/value, comments, dispatch on a blank line) is smaller than a dependency.

_EOL = re.compile(rb"[\r\n]")


class SSEParser:
    """Incremental SSE parser (WHATWG HTML, "event stream interpretation").

    Lines end with CRLF, LF or CR; `:` starts a comment (ignored); `field: value`;
    a blank line dispatches the event as (event type, data lines joined by LF).
    `id` and `retry` are ignored: a probe never reconnects.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no line end
        self._event = ""
        self._data: list[str] = []
        self._at_start = True

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self._buf += data
        events: list[tuple[str, str]] = []
        pos = 0
        buf = self._buf
        while True:
            m = _EOL.search(buf, max(pos, self._scanned))
            if m is None:
                self._scanned = len(buf)
                break
            end = m.start()
            if buf[end] == 0x0D:  # CR: a CRLF may be split across reads
                if end + 1 == len(buf):
                    self._scanned = end
                    break
                nxt = end + 2 if buf[end + 1] == 0x0A else end + 1
            else:
                nxt = end + 1
            self._line(bytes(buf[pos:end]), events)
            pos = nxt
            self._scanned = nxt
        del buf[:pos]
        self._scanned -= pos
        if len(buf) > self.max_line:
            raise BodyTooLarge(f"stream line longer than {self.max_line} bytes")
        return events

    def close(self) -> list[tuple[str, str]]:
        """At EOF: an unterminated last line is dropped (it may be cut mid-JSON); an
        event whose lines all arrived but lacks its blank line is still dispatched."""
        events: list[tuple[str, str]] = []
        self._buf.clear()
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[tuple[str, str]]) -> None:
        if self._at_start:
            self._at_start = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        if not raw:
            if self._data:
                events.append((self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
            return
        if raw[:1] == b":":  # comment: keep-alives live here
            return
        line = raw.decode("utf-8", errors="replace")
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)


# --- Formats: what an event means --------------------------------------------------


class _Failed(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _json(data: str, fmt: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise _Failed(Reason.PROTOCOL, f"{fmt} stream: data line is not JSON") from None
    if not isinstance(obj, dict):
        raise _Failed(Reason.PROTOCOL, f"{fmt} stream: data is not a JSON object")
    return obj


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(value: Any) -> dict[str, Any]:
    return _dict(value[0]) if isinstance(value, list) and value else {}


def describe_error(error: Any) -> str:
    """`type: message` from a vendor error object (OpenAI, Anthropic, Gemini, OpenRouter)."""
    if isinstance(error, dict):
        kind = next((str(error[k]) for k in ("type", "status", "code") if error.get(k) not in (None, "")),
                    "error")
        message = error.get("message")
        text = f"{kind}: {message}" if isinstance(message, str) and message else kind
    else:
        text = str(error)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def _json_error(body: bytes) -> str | None:
    """The vendor error in a JSON body, if it is one."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("error"):
        return describe_error(obj["error"])
    return None


def parse_openai(event: str, data: str) -> int:
    """Chat Completions chunks (OpenAI, DeepSeek, Groq, Mistral, OpenRouter, ...)."""
    if data.strip() == "[DONE]":
        return END
    chunk = _json(data, "openai")
    choice = _first(chunk.get("choices"))
    if chunk.get("error"):  # {"error": {...}}, with or without choices
        raise _Failed(Reason.STREAM_ERROR, f"error chunk: {describe_error(chunk['error'])}")
    if choice.get("finish_reason") == "error":  # OpenRouter: a provider failed mid-stream
        raise _Failed(Reason.STREAM_ERROR, "error chunk: finish_reason error")
    delta = _dict(choice.get("delta"))
    if _text(delta.get("content")):
        return TOKEN
    if _text(delta.get("reasoning_content")) or _text(delta.get("reasoning")):
        return PROGRESS  # DeepSeek/OpenRouter reasoning: generating, but not a token
    return NOTHING


def parse_anthropic(event: str, data: str) -> int:
    """Messages API events: message_start ... content_block_delta* ... message_stop."""
    obj = _json(data, "anthropic")
    kind = event if event != "message" else str(obj.get("type", ""))
    if kind == "error":
        raise _Failed(Reason.STREAM_ERROR, f"error event: {describe_error(obj.get('error'))}")
    if kind == "message_stop":
        return END
    if kind == "content_block_delta":
        delta = _dict(obj.get("delta"))
        if _text(delta.get("text")):
            return TOKEN
        if _text(delta.get("thinking")) or _text(delta.get("partial_json")):
            return PROGRESS
    return NOTHING  # ping, message_start, content_block_start/stop, message_delta, unknown


def parse_gemini(event: str, data: str) -> int:
    """streamGenerateContent?alt=sse frames; the stream ending is the end, so END here
    only records that a candidate finished (a stream that never finishes is truncated)."""
    frame = _json(data, "gemini")
    if frame.get("error"):
        raise _Failed(Reason.STREAM_ERROR, f"error frame: {describe_error(frame['error'])}")
    blocked = _dict(frame.get("promptFeedback")).get("blockReason")
    if blocked:
        raise _Failed(Reason.ASSERTION, f"prompt blocked ({describe_error(blocked)})")
    candidate = _first(frame.get("candidates"))
    flags = NOTHING
    for part in _dict(candidate.get("content")).get("parts") or ():
        if isinstance(part, dict) and _text(part.get("text")):
            flags |= PROGRESS if part.get("thought") else TOKEN
    if candidate.get("finishReason"):
        flags |= END
    return flags


PARSERS: dict[str, Callable[[str, str], int]] = {
    "openai": parse_openai,
    "anthropic": parse_anthropic,
    "gemini": parse_gemini,
}

