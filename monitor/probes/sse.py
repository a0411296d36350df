"""Server-Sent Events and the vendors' streaming formats (pure: bytes in, meanings out).

`SSEParser` follows the WHATWG HTML "event stream interpretation": lines end with CRLF,
LF or CR alike (a CR is a line end at once; an LF right after it is skipped, even in
the next read), `:` starts a comment, a blank line dispatches the event, and at the
end of the stream an event without its blank line is discarded, never half-used.

The format parsers say what one event means for a probe, as flags:
TOKEN (generated output: text, a refusal, a tool call; what TTFT times), PROGRESS
(generating, but not output: reasoning), END (the format's terminal marker), and the
output token count when the vendor reports usage. An error event raises
`Failure(stream_error)`; a data line that is not JSON, `Failure(protocol)`.
Generated text is read only to learn whether it is empty; it is never kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from monitor.reasons import Failure, Reason

NOTHING, TOKEN, PROGRESS, END = 0, 1, 2, 4

# What each format's stream ends with: without it the stream was truncated.
TERMINAL = {"openai": "data: [DONE]", "openai_responses": "response.completed",
            "anthropic": "message_stop", "gemini": "a finishReason"}


class SSEParser:
    """Incremental SSE parser: `feed` bytes, get [(event type, data)] dispatched.
    `id` and `retry` are ignored: a probe never reconnects."""

    __slots__ = ("_at_start", "_buf", "_data", "_event", "_skip_lf", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()  # an unfinished line
        self._event = ""
        self._data: list[str] = []
        self._at_start = True
        self._skip_lf = False  # the last line ended with CR: an LF right after belongs to it

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        if not data:
            return events
        if self._skip_lf and data[:1] == b"\n":
            data = data[1:]
        self._skip_lf = False
        pos = 0
        n = len(data)
        while pos < n:
            cr = data.find(b"\r", pos)
            lf = data.find(b"\n", pos)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            if self._buf:
                self._buf += data[pos:end]
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = data[pos:end]
            self._line(line, events)
            pos = end + 1
            if data[end] == 0x0D:  # CR: a following LF is part of this line end
                if pos < n:
                    if data[pos] == 0x0A:
                        pos += 1
                else:
                    self._skip_lf = True
        self._buf += data[pos:]
        if len(self._buf) > self.max_line:
            raise Failure(Reason.BODY_TOO_LARGE, f"stream line longer than {self.max_line} bytes")
        return events

    def close(self) -> list[tuple[str, str]]:
        """At the end of the stream: an unfinished line and an event without its blank
        line are discarded (WHATWG: "If the file ends in the middle of an event, before
        the final empty line, the incomplete event is not dispatched")."""
        self._buf.clear()
        self._event, self._data = "", []
        return []

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

Meaning = tuple[int, int | None]  # (flags, output tokens reported so far, or None)


def _json(data: str, fmt: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise Failure(Reason.PROTOCOL, f"{fmt} stream: data line is not JSON") from None
    if not isinstance(obj, dict):
        raise Failure(Reason.PROTOCOL, f"{fmt} stream: data is not a JSON object")
    return obj


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(value: Any) -> dict[str, Any]:
    return _dict(value[0]) if isinstance(value, list) and value else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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


def json_error(body: bytes) -> str | None:
    """The vendor error in a JSON body, if it is one."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("error"):
        return describe_error(obj["error"])
    return None


def parse_openai(event: str, data: str) -> Meaning:
    """Chat Completions chunks (OpenAI, DeepSeek, Groq, Mistral, OpenRouter, ...). Output
    is content, a refusal, or a tool call (the SDK's complete answers all three)."""
    if data.strip() == "[DONE]":
        return END, None
    chunk = _json(data, "openai")
    if chunk.get("error"):  # {"error": {...}}, with or without choices
        raise Failure(Reason.STREAM_ERROR, f"error chunk: {describe_error(chunk['error'])}")
    choice = _first(chunk.get("choices"))
    if choice.get("finish_reason") == "error":  # OpenRouter: a provider failed mid-stream
        raise Failure(Reason.STREAM_ERROR, "error chunk: finish_reason error")
    tokens = _count(_dict(chunk.get("usage")).get("completion_tokens"))
    delta = _dict(choice.get("delta"))
    if _text(delta.get("content")) or _text(delta.get("refusal")):
        return TOKEN, tokens
    for call in delta.get("tool_calls") or ():
        function = _dict(_dict(call).get("function"))
        if _text(function.get("name")) or _text(function.get("arguments")):
            return TOKEN, tokens
    if _text(delta.get("reasoning_content")) or _text(delta.get("reasoning")):
        return PROGRESS, tokens  # DeepSeek/OpenRouter reasoning: generating, not output
    return NOTHING, tokens


_RESPONSES_OUTPUT = frozenset({"response.output_text.delta", "response.refusal.delta",
                               "response.function_call_arguments.delta"})
_RESPONSES_PROGRESS = frozenset({"response.reasoning_summary_text.delta", "response.reasoning_text.delta"})


def parse_openai_responses(event: str, data: str) -> Meaning:
    """The Responses API's typed events: response.output_text.delta ...
    response.completed (or response.incomplete: ended early, e.g. at max_output_tokens,
    still an answer); response.failed and error are errors."""
    obj = _json(data, "openai_responses")
    kind = str(obj.get("type") or event)
    if kind == "error":
        raise Failure(Reason.STREAM_ERROR, f"error event: {describe_error(obj)}")
    response = _dict(obj.get("response"))
    if kind == "response.failed":
        raise Failure(Reason.STREAM_ERROR, f"response.failed: {describe_error(response.get('error'))}")
    if kind in ("response.completed", "response.incomplete"):
        return END, _count(_dict(response.get("usage")).get("output_tokens"))
    if kind in _RESPONSES_OUTPUT:
        return (TOKEN if _text(obj.get("delta")) else NOTHING), None
    if kind == "response.output_item.added" and _dict(obj.get("item")).get("type") == "function_call":
        return TOKEN, None
    if kind in _RESPONSES_PROGRESS:
        return (PROGRESS if _text(obj.get("delta")) else NOTHING), None
    return NOTHING, None


def parse_anthropic(event: str, data: str) -> Meaning:
    """Messages API events: message_start ... content_block_delta* ... message_stop.
    Output is text, a tool call's input, or a refusal (stop_reason "refusal", which may
    come with no text at all)."""
    obj = _json(data, "anthropic")
    kind = event if event != "message" else str(obj.get("type", ""))
    if kind == "error":
        raise Failure(Reason.STREAM_ERROR, f"error event: {describe_error(obj.get('error'))}")
    if kind == "message_stop":
        return END, None
    if kind == "content_block_delta":
        delta = _dict(obj.get("delta"))
        if _text(delta.get("text")) or _text(delta.get("partial_json")):
            return TOKEN, None
        if _text(delta.get("thinking")):
            return PROGRESS, None
    if kind == "message_delta":
        tokens = _count(_dict(obj.get("usage")).get("output_tokens"))
        if _dict(obj.get("delta")).get("stop_reason") == "refusal":
            return TOKEN, tokens
        return NOTHING, tokens
    return NOTHING, None  # ping, message_start, content_block_start/stop, unknown


def parse_gemini(event: str, data: str) -> Meaning:
    """streamGenerateContent?alt=sse frames; the stream ending is the end, so END here
    only records that a candidate finished (a stream that never finishes is truncated)."""
    frame = _json(data, "gemini")
    if frame.get("error"):
        raise Failure(Reason.STREAM_ERROR, f"error frame: {describe_error(frame['error'])}")
    blocked = _dict(frame.get("promptFeedback")).get("blockReason")
    if blocked:
        raise Failure(Reason.ASSERTION, f"prompt blocked ({describe_error(blocked)})")
    candidate = _first(frame.get("candidates"))
    flags = NOTHING
    for part in _dict(candidate.get("content")).get("parts") or ():
        if not isinstance(part, dict):
            continue
        if _text(part.get("text")):
            flags |= PROGRESS if part.get("thought") else TOKEN
        elif part.get("functionCall"):
            flags |= TOKEN
    if candidate.get("finishReason"):
        flags |= END
    return flags, _count(_dict(frame.get("usageMetadata")).get("candidatesTokenCount"))


PARSERS: dict[str, Callable[[str, str], Meaning]] = {
    "openai": parse_openai,
    "openai_responses": parse_openai_responses,
    "anthropic": parse_anthropic,
    "gemini": parse_gemini,
}
