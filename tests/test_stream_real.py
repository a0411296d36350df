"""Streams nobody on this project wrote: the OpenAI and Anthropic SDKs' recorded streams
(../shared/fixtures/real/sse, sources in its SOURCES.md), served byte for byte over a
real socket, whole and split at awkward places (every byte alone, inside a CRLF,
inside a UTF-8 character); and the stream rules of WHATWG SSE and the vendors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from helpers import make_check
from targets import REAL, in_thread

from monitor.probes import Prober
from monitor.probes.sse import SSEParser, parse_anthropic, parse_openai
from monitor.reasons import Reason
from monitor.result import ProbeResult

SSE = REAL / "sse"
OPENAI = sorted(SSE.glob("openai_*.sse"))
ANTHROPIC_SSE = sorted(SSE.glob("anthropic_*.sse"))
ANTHROPIC_TXT = sorted(SSE.glob("anthropic_*.txt"))


@dataclass
class Script:
    """What the server sends after the head: pieces, each after a pause (seconds)."""

    pieces: list[tuple[float, bytes]] = field(default_factory=list)
    keep_open: bool = False  # after the last piece, hold the connection open


@dataclass
class StreamServer:
    port: int = 0
    script: Script = field(default_factory=Script)


@contextmanager
def serve_stream() -> Iterator[StreamServer]:
    """An SSE server: a chunked `text/event-stream` answer made of the script's pieces."""
    server = StreamServer()
    listening: list[asyncio.AbstractServer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = server.script
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for pause, piece in script.pieces:
                if pause:
                    await asyncio.sleep(pause)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            if script.keep_open:
                await asyncio.sleep(3600)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except Exception:  # the probe left first
            pass
        finally:
            writer.transport.abort()

    async def start() -> None:
        listening.append(await asyncio.start_server(handle, "127.0.0.1", 0))
        server.port = listening[0].sockets[0].getsockname()[1]

    async def stop() -> None:
        listening[0].close()

    with in_thread(start, stop, "sse-server"):
        yield server


@pytest.fixture(scope="module")
def sse_server() -> Iterator[StreamServer]:
    with serve_stream() as server:
        yield server


async def probe(server: StreamServer, fmt: str, pieces: list[bytes], **keys: object) -> ProbeResult:
    server.script = Script([(0.0, p) for p in pieces])
    check = make_check(f"http://127.0.0.1:{server.port}/v1/stream", kind="stream", format=fmt,
                       timeout=keys.pop("timeout", "3s"), **keys)
    return await Prober().run(check)


def splits(data: bytes) -> dict[str, list[bytes]]:
    """The same bytes, cut in ways a network may cut them."""
    crlf = data.find(b"\r\n")
    utf8 = next((i for i, b in enumerate(data) if b >= 0xC0), -1)
    return {
        "whole": [data],
        "every_byte": [data[i:i + 1] for i in range(len(data))] if len(data) <= 6000 else
        [data[i:i + 3] for i in range(0, len(data), 3)],
        "sevens": [data[i:i + 7] for i in range(0, len(data), 7)],
        "in_crlf_or_eol": [data[: crlf + 1], data[crlf + 1:]] if crlf > 0 else
        [data[: data.find(b"\n")], data[data.find(b"\n"):]],
        "in_utf8": [data[: utf8 + 1], data[utf8 + 1:]] if utf8 > 0 else [data[:10], data[10:]],
    }


def anthropic_replay(path: object) -> bytes:
    """The SDK replays its .txt recordings as each line + "\\n" (tests/lib/streaming/
    helpers.py get_response); a live server ends the last event with a blank line too."""
    return b"".join(line + b"\n" for line in path.read_bytes().splitlines()) + b"\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["whole", "every_byte", "sevens", "in_crlf_or_eol", "in_utf8"])
@pytest.mark.parametrize("path", OPENAI + ANTHROPIC_SSE + ANTHROPIC_TXT, ids=lambda p: p.name)
async def test_every_sdk_recording_is_a_complete_answer(sse_server: StreamServer, path: object,
                                                        how: str) -> None:
    """Refusal-only and tool-call-only streams included: the SDKs treat them as
    complete answers, and so does the probe (it failed them as "completed without a
    content token")."""
    name = path.name  # type: ignore[attr-defined]
    fmt = "openai" if name.startswith("openai") else "anthropic"
    data = anthropic_replay(path) if name.endswith(".txt") else path.read_bytes()  # type: ignore[attr-defined]
    result = await probe(sse_server, fmt, splits(data)[how])
    assert result.reason is Reason.OK, result.detail
    assert result.ttft is not None and 0 <= result.ttft < 3


def _meanings(path: object, parse: object) -> list[int]:
    parser = SSEParser(1 << 20)
    return [parse(event, data)[0] for event, data in parser.feed(path.read_bytes())]  # type: ignore


def test_refusal_and_tool_call_streams_have_output_and_end() -> None:
    refusal = _meanings(SSE / "openai_173417d55340.sse", parse_openai)  # test_parse_pydantic_model_refusal
    tool = _meanings(SSE / "openai_c6aa7e397b71.sse", parse_openai)  # test_parse_pydantic_tool
    claude_refusal = _meanings(SSE / "anthropic_refusal_response.txt", parse_anthropic)
    assert refusal[0] == 0 and refusal[1] == 1 and refusal[-1] == 4  # role chunk, "I'm", [DONE]
    assert tool[0] == 1 and tool[-1] == 4  # the call's name is output; [DONE]
    # no text at all: the refusal is the message_delta's stop_reason
    assert 1 in claude_refusal and claude_refusal.index(1) == len(claude_refusal) - 1


async def test_the_anthropic_replay_without_its_last_blank_line_is_truncated(
        sse_server: StreamServer) -> None:
    """WHATWG SSE: an event the stream ends before its blank line is not dispatched, so
    a stream whose message_stop was never terminated did not end."""
    data = anthropic_replay(SSE / "anthropic_basic_response.txt")[:-1]
    result = await probe(sse_server, "anthropic", [data])
    assert result.reason is Reason.STREAM_TRUNCATED
    assert result.detail.startswith("stream ended without message_stop after 3 content events"), result.detail


async def test_cr_only_line_ends_and_a_connection_held_open_after_done(sse_server: StreamServer) -> None:
    """A stream with CR-only line endings whose server keeps the connection open after
    [DONE] timed out: the last CR waited for an LF that never came."""
    chunk = json.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]}).encode()
    sse_server.script = Script([(0.0, b"data: " + chunk + b"\r\r"), (0.05, b"data: [DONE]\r\r")],
                               keep_open=True)
    check = make_check(f"http://127.0.0.1:{sse_server.port}/v1/stream", kind="stream", format="openai",
                       timeout="2s")
    result = await Prober().run(check)
    assert result.reason is Reason.OK, result.detail
    assert result.duration < 1.0


async def test_an_event_cut_between_its_data_lines_is_truncated_not_protocol(
        sse_server: StreamServer) -> None:
    first = json.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]}).encode()
    result = await probe(sse_server, "openai", [b"data: " + first + b"\n\n", b'data: {"choices": [\n'])
    assert result.reason is Reason.STREAM_TRUNCATED, result.detail
    assert result.detail == "stream ended without data: [DONE] after 1 content events"


# --- the Responses API, output speed and stalls ------------------------------------


def responses_event(kind: str, **body: object) -> bytes:
    """An OpenAI Responses API event as its docs show them (event: + typed data)."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **body})}\n\n".encode()


RESPONSES_START = (responses_event("response.created", response={"id": "resp_1", "status": "in_progress"})
                   + responses_event("response.output_item.added", output_index=0,
                                     item={"type": "message", "id": "msg_1", "role": "assistant"}))


@pytest.mark.parametrize(("events", "reason", "detail"), [
    ([responses_event("response.output_text.delta", delta="Hel"), responses_event(
        "response.output_text.delta", delta="lo"), responses_event(
        "response.completed", response={"id": "resp_1", "usage": {"output_tokens": 2}})], Reason.OK, ""),
    ([responses_event("response.refusal.delta", delta="I can't"), responses_event(
        "response.completed", response={"id": "resp_1"})], Reason.OK, ""),
    ([responses_event("response.output_text.delta", delta="Hel"), responses_event(
        "response.incomplete", response={"id": "resp_1",
                                         "incomplete_details": {"reason": "max_output_tokens"}})],
     Reason.OK, ""),
    ([responses_event("response.output_text.delta", delta="Hel"), responses_event(
        "error", code="server_error", message="The server had an error")],
     Reason.STREAM_ERROR, "error event: error: The server had an error"),
    ([responses_event("response.failed", response={"error": {"code": "server_error", "message": "boom"}})],
     Reason.STREAM_ERROR, "response.failed: server_error: boom"),
    ([responses_event("response.output_text.delta", delta="Hel")], Reason.STREAM_TRUNCATED,
     "stream ended without response.completed after 1 content events"),
])
async def test_openai_responses_format(sse_server: StreamServer, events: list[bytes], reason: Reason,
                                       detail: str) -> None:
    result = await probe(sse_server, "openai_responses", [RESPONSES_START, *events])
    assert (result.reason, result.detail) == (reason, detail)


async def test_output_speed_gap_and_stall(sse_server: StreamServer) -> None:
    def token(text: str) -> bytes:
        chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    usage = b'data: {"choices": [], "usage": {"completion_tokens": 40}}\n\n'
    sse_server.script = Script([(0.05, token("a")), (0.1, token("b")), (0.4, token("c")), (0.1, usage),
                                (0.0, b"data: [DONE]\n\n")])
    url = f"http://127.0.0.1:{sse_server.port}/v1/stream"
    result = await Prober().run(make_check(url, kind="stream", format="openai", timeout="3s",
                                           expect={"max_stall": "250ms"}))
    assert result.reason is Reason.OK, result.detail
    assert result.degraded  # a 0.4 s silence mid-answer, past max_stall
    assert result.stream_max_gap is not None and 0.38 <= result.stream_max_gap < 0.6
    # 40 usage tokens over the ~0.6 s from the first token to [DONE]
    speed = result.output_tokens_per_second
    assert speed is not None and 40 / 0.9 < speed < 40 / 0.55
    sse_server.script = Script([(0.0, token("a")), (0.05, token("b")), (0.0, b"data: [DONE]\n\n")])
    calm = await Prober().run(make_check(url, kind="stream", format="openai", timeout="3s",
                                         expect={"max_stall": "250ms"}))
    assert (calm.reason, calm.degraded) == (Reason.OK, False)
    assert calm.output_tokens_per_second is not None  # 2 events, no usage: events per second
