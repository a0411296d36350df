"""The stream probe against fake AI providers on 127.0.0.1 (real sockets, real SSE).

One aiohttp server per format (OpenAI Chat Completions, Anthropic Messages, Gemini
streamGenerateContent?alt=sse) runs on its own event loop in a background thread. A
test scripts what the provider does with the `script` query parameter, a comma-
separated list of operations:

    start          the format's non-token preamble (role-only chunk, message_start, ...)
    token          one content token carrying SECRET (must never reach a result)
    end            the format's normal finish (finish chunk + [DONE], message_stop, ...)
    error          the format's mid-stream error (event: error, {"error": ...})
    error_finish   (openai) an OpenRouter-style chunk with finish_reason "error"
    garbage        (anthropic) a data line that is not JSON
    ping           the format's keep-alive (": keep-alive", event: ping)
    comment        an SSE comment (": OPENROUTER PROCESSING")
    sleep:S        wait S seconds
    keepalive:E:D  a ping every E seconds for D seconds (D = inf: until the client leaves)
    flood          comment bytes as fast as the socket takes them, forever
    hugeline       one "data:" line that never ends
    cut            drop the connection without finishing the chunked body
    status:N       answer HTTP N with the format's JSON error body (no stream)

Servers sleep to shape timing; tests only measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from helpers import make_check
from targets import in_thread, listen

from monitor.config import CheckConfig
from monitor.probes import Prober
from monitor.probes.sse import SSEParser
from monitor.reasons import Reason
from monitor.result import ProbeResult

SECRET = "ZEBRA-7731-GENERATED"  # the generated text: must never appear in a result
FORMATS = ("openai", "anthropic", "gemini")
PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/fake:streamGenerateContent",
}


def sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _gemini_frame(text: str, finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "fake"}


FRAMES: dict[str, dict[str, bytes]] = {
    "openai": {
        "start": sse(_openai_chunk({"role": "assistant", "content": ""})),
        "token": sse(_openai_chunk({"content": SECRET})),
        "end": sse(_openai_chunk({}, "stop"))
        + sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})
        + sse("[DONE]"),
        "error": sse({"error": {"message": "The server is overloaded", "type": "server_error",
                                "code": "server_is_overloaded"}}),
        "ping": b": keep-alive\n\n",
        "comment": b": OPENROUTER PROCESSING\n\n",
        # OpenRouter: a provider failed mid-stream (no error object in this variant)
        "error_finish": sse(_openai_chunk({"content": ""}, "error")),
    },
    "anthropic": {
        "start": sse({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "fake",
            "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}, "message_start")
        + sse({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}, "content_block_start")
        + sse({"type": "ping"}, "ping")
        + sse({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": ""}}, "content_block_delta"),
        "token": sse({"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": SECRET}}, "content_block_delta"),
        "end": sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        + sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
               "usage": {"output_tokens": 1}}, "message_delta")
        + sse({"type": "message_stop"}, "message_stop"),
        "error": sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                     "error"),
        "ping": sse({"type": "ping"}, "ping"),
        "comment": b": comment\n\n",
        "garbage": sse('{"type": "content_block_delta", "delta": {"te', "content_block_delta"),
    },
    "gemini": {
        "start": sse(_gemini_frame("")),
        "token": sse(_gemini_frame(SECRET)),
        "end": sse({**_gemini_frame("", "STOP"), "usageMetadata": {
            "promptTokenCount": 5, "candidatesTokenCount": 1, "totalTokenCount": 6}}),
        "error": sse({"error": {"code": 503, "message": "The model is overloaded.",
                                "status": "UNAVAILABLE"}}),
        "ping": b": keep-alive\n\n",
        "comment": b": keep-alive\n\n",
    },
}

ERROR_BODIES = {
    "openai": lambda code: {"error": {"message": f"status {code}", "type": "requests", "code": None}},
    "anthropic": lambda code: {"type": "error", "error": {
        "type": "overloaded_error" if code == 529 else "rate_limit_error", "message": "Overloaded"}},
    "gemini": lambda code: {"error": {"code": code, "message": "busy", "status": "RESOURCE_EXHAUSTED"}},
}

FLOOD = b": keep-alive\n" * 5000  # ~65 KB, written again and again
HUGE = b"x" * 65536


class Provider:
    """A fake AI provider for one format; remembers the headers of each request."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.port = 0
        self.requests: list[dict[str, str]] = []

    def url(self, script: str) -> str:
        query = "alt=sse&" if self.format == "gemini" else ""
        return f"http://127.0.0.1:{self.port}{PATHS[self.format]}?{query}script={quote(script)}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATHS[self.format], self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        await request.read()
        ops = request.query["script"].split(",")
        if ops[0].startswith("status:"):
            code = int(ops[0].split(":")[1])
            return web.json_response(ERROR_BODIES[self.format](code), status=code)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        frames = FRAMES[self.format]
        with contextlib.suppress(ConnectionError):  # the probe hung up: fine
            for op in ops:
                name, *args = op.split(":")
                if name == "sleep":
                    await asyncio.sleep(float(args[0]))
                elif name == "keepalive":
                    every, duration = float(args[0]), min(float(args[1]), 30.0)
                    until = time.monotonic() + duration
                    while (left := until - time.monotonic()) > 0:
                        await response.write(frames["ping"])
                        await asyncio.sleep(min(every, left))
                elif name == "flood":
                    for _ in range(100_000):
                        await response.write(FLOOD)
                elif name == "hugeline":
                    await response.write(b"data: ")
                    for _ in range(100_000):
                        await response.write(HUGE)
                elif name == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                else:
                    await response.write(frames[name])
            await response.write_eof()
        return response


@contextlib.contextmanager
def serve_providers() -> Iterator[dict[str, Provider]]:
    """One aiohttp server per format, all on one event loop in a background thread."""
    providers = {fmt: Provider(fmt) for fmt in FORMATS}
    runners = [web.AppRunner(p.app(), access_log=None, shutdown_timeout=0.1) for p in providers.values()]

    async def start() -> None:
        for provider, runner in zip(providers.values(), runners, strict=True):
            await runner.setup()
            provider.port = await listen(runner)

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()

    with in_thread(start, stop, "providers"):
        yield providers


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, Provider]]:
    with serve_providers() as p:
        yield p


REQUEST_BODY = {"model": "fake", "max_tokens": 1, "stream": True,
                "messages": [{"role": "user", "content": "Say OK"}]}


def stream_check(provider: Provider, script: str, **keys: Any) -> CheckConfig:
    keys.setdefault("timeout", "5s")
    return make_check(provider.url(script), kind="stream", format=provider.format,
                      json=REQUEST_BODY, **keys)


async def run(check: CheckConfig) -> ProbeResult:
    prober = Prober()
    try:
        return await prober.run(check)
    finally:
        await prober.aclose()


def assert_no_generated_text(result: ProbeResult) -> None:
    assert SECRET not in repr(result)
    assert "ZEBRA" not in repr(result)


# --- TTFT -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
async def test_ttft_measures_the_injected_delay(providers: dict[str, Provider], fmt: str) -> None:
    check = stream_check(providers[fmt], "start,sleep:0.3,token,end", expect={"max_ttft": "2s"})
    result = await run(check)
    assert result.reason is Reason.OK, result.detail
    assert (result.status_code, result.detail, result.degraded) == (200, "", False)
    assert result.ttft is not None
    assert 0.3 <= result.ttft < 0.35, result.ttft
    assert result.phases["transfer"] >= 0.29  # the stream was read for the whole delay
    assert result.phases["processing"] < 0.2  # headers came at once
    assert_no_generated_text(result)


async def test_role_only_chunk_is_not_a_token(providers: dict[str, Provider]) -> None:
    # The role-only chunk arrives at once; the token 0.3 s later.
    result = await run(stream_check(providers["openai"], "start,sleep:0.3,token,end"))
    assert result.reason is Reason.OK, result.detail
    assert result.ttft is not None and 0.3 <= result.ttft < 0.35, result.ttft


async def test_keepalive_comments_do_not_count_as_tokens(providers: dict[str, Provider]) -> None:
    # DeepSeek under load: `: keep-alive` every 100 ms for 3 s, then the answer.
    check = stream_check(providers["openai"], "start,keepalive:0.1:3,token,end",
                         timeout="10s", idle_timeout="5s")
    result = await run(check)
    assert result.reason is Reason.OK, result.detail
    assert result.ttft is not None and 3.0 <= result.ttft < 3.2, result.ttft


@pytest.mark.parametrize("fmt", FORMATS)
async def test_success_always_has_a_ttft(providers: dict[str, Provider], fmt: str) -> None:
    result = await run(stream_check(providers[fmt], "start,comment,ping,token,token,end"))
    assert result.reason is Reason.OK, result.detail
    assert result.ttft is not None and 0 < result.ttft <= result.duration
    assert_no_generated_text(result)


async def test_slow_stream_is_degraded_not_down(providers: dict[str, Provider]) -> None:
    check = stream_check(providers["anthropic"], "start,sleep:0.3,token,end",
                         expect={"max_latency": "100ms"})
    result = await run(check)
    assert (result.reason, result.degraded) == (Reason.OK, True)


# --- deadlines --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fmt", "script"),
    [
        ("openai", "start,keepalive:0.1:inf"),  # DeepSeek: keep-alives, never a token
        ("anthropic", "start,token,keepalive:0.1:inf"),  # pings after a token
        ("gemini", "start,sleep:30"),  # silence
    ],
)
async def test_idle_deadline_is_not_reset_by_keepalives(
    providers: dict[str, Provider], fmt: str, script: str
) -> None:
    check = stream_check(providers[fmt], script, timeout="10s", idle_timeout="1s")
    began = time.perf_counter()
    result = await run(check)
    elapsed = time.perf_counter() - began
    assert result.reason is Reason.TIMEOUT
    assert result.detail == "no token for 1s"
    assert 1.0 <= elapsed < 1.5, elapsed
    assert result.status_code == 200
    assert_no_generated_text(result)


async def test_max_ttft_is_absolute_from_the_request(providers: dict[str, Provider]) -> None:
    check = stream_check(providers["openai"], "start,keepalive:0.1:3,token,end",
                         timeout="10s", expect={"max_ttft": "500ms"})
    began = time.perf_counter()
    result = await run(check)
    elapsed = time.perf_counter() - began
    assert (result.reason, result.detail, result.ttft) == (Reason.TIMEOUT, "no token within 0.5s", None)
    assert 0.5 <= elapsed < 1.0, elapsed


async def test_overall_timeout_still_applies(providers: dict[str, Provider]) -> None:
    check = stream_check(providers["anthropic"], "start,keepalive:0.1:inf", timeout="500ms")
    began = time.perf_counter()
    result = await run(check)
    assert time.perf_counter() - began < 1.0
    assert result.reason is Reason.TIMEOUT
    assert result.detail == "timed out after 0.5s waiting for the first token"


# --- failures after HTTP 200 ------------------------------------------------------

@pytest.mark.parametrize(
    ("fmt", "detail"),
    [
        ("anthropic", "error event: overloaded_error: Overloaded"),
        ("openai", "error chunk: server_error: The server is overloaded"),
        ("gemini", "error frame: UNAVAILABLE: The model is overloaded."),
    ],
)
async def test_mid_stream_error_is_stream_error(
    providers: dict[str, Provider], fmt: str, detail: str
) -> None:
    result = await run(stream_check(providers[fmt], "start,token,error"))
    assert (result.reason, result.status_code, result.detail) == (Reason.STREAM_ERROR, 200, detail)
    assert result.ttft is not None  # a token did arrive before the error
    assert_no_generated_text(result)


async def test_openrouter_finish_reason_error_is_stream_error(providers: dict[str, Provider]) -> None:
    result = await run(stream_check(providers["openai"], "start,token,error_finish"))
    assert (result.reason, result.detail) == (Reason.STREAM_ERROR, "error chunk: finish_reason error")


@pytest.mark.parametrize(
    ("fmt", "detail"),
    [
        ("openai", "stream ended without data: [DONE] after 1 content events"),
        ("anthropic", "stream ended without message_stop after 1 content events"),
        ("gemini", "stream ended without a finishReason after 1 content events"),
    ],
)
async def test_eof_without_terminal_marker_is_truncated(
    providers: dict[str, Provider], fmt: str, detail: str
) -> None:
    result = await run(stream_check(providers[fmt], "start,token"))
    assert (result.reason, result.detail) == (Reason.STREAM_TRUNCATED, detail)
    assert result.ttft is not None


@pytest.mark.parametrize("fmt", FORMATS)
async def test_connection_cut_mid_stream_is_truncated(providers: dict[str, Provider], fmt: str) -> None:
    result = await run(stream_check(providers[fmt], "start,token,cut"))
    assert result.reason is Reason.STREAM_TRUNCATED
    assert result.detail.startswith("stream cut after 1 content events"), result.detail


async def test_unparseable_data_is_protocol(providers: dict[str, Provider]) -> None:
    result = await run(stream_check(providers["anthropic"], "start,garbage,end"))
    assert (result.reason, result.detail) == (Reason.PROTOCOL, "anthropic stream: data line is not JSON")


async def test_finished_stream_without_a_token_fails(providers: dict[str, Provider]) -> None:
    result = await run(stream_check(providers["openai"], "start,comment,end"))
    assert (result.reason, result.ttft) == (Reason.ASSERTION, None)
    assert result.detail == "stream completed without a content token"


# --- before the stream ----------------------------------------------------------

@pytest.mark.parametrize(
    ("fmt", "code", "reason"),
    [
        ("openai", 429, Reason.RATE_LIMITED),
        ("anthropic", 429, Reason.RATE_LIMITED),
        ("anthropic", 529, Reason.OVERLOADED),
        ("gemini", 503, Reason.OVERLOADED),
        ("openai", 500, Reason.HTTP_5XX),
    ],
)
async def test_error_status_before_the_stream(
    providers: dict[str, Provider], fmt: str, code: int, reason: Reason
) -> None:
    result = await run(stream_check(providers[fmt], f"status:{code}"))
    assert (result.reason, result.status_code, result.ttft) == (reason, code, None)
    assert result.detail == f"HTTP {code} not expected"


async def test_accepted_error_status_is_ok_without_ttft(providers: dict[str, Provider]) -> None:
    # "the API answers" checks without a key: a well-formed 401 is the expected answer
    check = stream_check(providers["openai"], "status:401", expect={"status": [200, 401]})
    result = await run(check)
    assert (result.reason, result.status_code, result.ttft) == (Reason.OK, 401, None)


async def test_asks_for_an_uncompressed_event_stream(providers: dict[str, Provider]) -> None:
    provider = providers["gemini"]
    await run(stream_check(provider, "start,token,end"))
    sent = provider.requests[-1]
    assert (sent["Accept"], sent["Accept-Encoding"]) == ("text/event-stream", "identity")
    await run(stream_check(provider, "start,token,end", headers={"accept": "*/*"}))
    sent = provider.requests[-1]
    assert (sent["Accept"], sent["Accept-Encoding"]) == ("*/*", "identity")


# --- bounds -----------------------------------------------------------------------

@pytest.mark.parametrize("script", ["start,flood", "start,hugeline"])
async def test_oversized_stream_is_bounded(providers: dict[str, Provider], script: str) -> None:
    check = stream_check(providers["openai"], script, max_body_bytes="1MiB")
    tracemalloc.start()
    try:
        result = await run(check)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.reason is Reason.BODY_TOO_LARGE, result.detail
    assert result.detail in ("stream larger than 1048576 bytes", "stream line longer than 1048576 bytes")
    # Hundreds of MB were on offer; we held little more than the 1 MiB cap.
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak} bytes"


# --- the SSE parser on its own ------------------------------------------------------

def test_sse_parser_line_endings_comments_and_split_reads() -> None:
    wire = (b"\xef\xbb\xbf: hello\r\nevent: a\r\ndata: 1\r\ndata:2\r\n\r\n"
            b"data: x\rdata: y\r\r: keep-alive\n\nid: 7\nretry: 10\ndata: z\n\n")
    whole = SSEParser(1 << 20)
    expected = [("a", "1\n2"), ("message", "x\ny"), ("message", "z")]
    assert whole.feed(wire) + whole.close() == expected
    byte_by_byte = SSEParser(1 << 20)
    events = []
    for i in range(len(wire)):
        events += byte_by_byte.feed(wire[i:i + 1])
    assert events + byte_by_byte.close() == expected


def test_sse_parser_bounds_a_line_and_drops_what_the_end_cuts() -> None:
    parser = SSEParser(max_line=100)
    assert parser.feed(b"data: " + b"x" * 90) == []
    with pytest.raises(Exception, match="longer than 100 bytes"):
        parser.feed(b"x" * 20)
    parser = SSEParser(max_line=100)
    assert parser.feed(b'data: {"a": 1}\n') == []
    assert parser.feed(b'data: {"cut') == []
    # WHATWG: an event without its blank line is never dispatched, whole lines or not
    assert parser.close() == []
