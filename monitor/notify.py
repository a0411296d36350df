"""Outage notifications: window events POSTed to webhooks, off the probe path.

`Notifier.publish()` only appends the event to one bounded queue per webhook and
returns. One background task per webhook sends its queue in order (a window's open
before its close), retrying transient failures with `stamina`:

    retried      connection errors, timeouts, dropped connections, 5xx, 429
                 (a 429/503 Retry-After in seconds replaces the backoff, capped)
    not retried  any other status outside 2xx (4xx, 3xx): logged once and dropped

Every delivery carries `X-Aipulse-Delivery`, the same for every attempt (and for
every send of the same window event), so receivers can drop duplicates; with a
`secret`, `X-Aipulse-Signature: sha256=<hex HMAC of the body>` (GitHub style).

Logs name a webhook by scheme and host only: Slack-style URLs carry their token in
the path, others in the query string, and every logged text goes through `redact`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import stamina

from monitor import __version__
from monitor.config import WebhookConfig
from monitor.outage import WindowClosed, WindowOpened
from monitor.redact import Redactor
from monitor.units import format_duration, rfc3339

log = logging.getLogger("aipulse.notify")

USER_AGENT = f"aipulse/{__version__} (webhook)"
MAX_QUEUE = 10_000
MAX_BACKOFF = 300.0  # seconds between two attempts, whatever Retry-After says
_RESPONSE_PEEK = 2048  # bytes of an error response kept for the log line

WindowEvent = WindowOpened | WindowClosed


def _human_time(epoch: float) -> str:
    """'2025-01-27T13:33:00Z': whole seconds read better in a chat line."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(event: WindowEvent) -> str:
    return "outage_opened" if isinstance(event, WindowOpened) else "outage_closed"


def delivery_id(event: WindowEvent, location: str) -> str:
    """Stable id of one window event: identical across retries and re-sends."""
    w = event.window
    key = "\x1f".join((location, w.service, w.check or "", w.kind, repr(w.start), event_name(event)))
    return hashlib.sha256(key.encode()).hexdigest()


def json_payload(event: WindowEvent, location: str) -> dict[str, object]:
    w = event.window
    return {
        "event": event_name(event),
        "service": w.service,
        "check": w.check,
        "kind": w.kind,
        "severity": w.severity,
        "reason": w.reason,
        "start": rfc3339(w.start),
        "end": rfc3339(w.end),
        "duration_seconds": None if w.end is None else round(w.end - w.start, 3),
        "location": location,
    }


def slack_text(event: WindowEvent, location: str, title: str) -> str:
    """One readable line, e.g. ':red_circle: DeepSeek api is DOWN since ... (overloaded) [fra1]'."""
    w = event.window
    what = _slack_escape(f"{title} {w.check}" if w.check else title)
    where = _slack_escape(location)
    if isinstance(event, WindowOpened):
        icon = ":red_circle:" if w.kind == "down" else ":large_yellow_circle:"
        why = f" ({_slack_escape(w.reason)})" if w.reason else ""
        return f"{icon} {what} is {w.kind.upper()} since {_human_time(w.start)}{why} [{where}]"
    took = format_duration((w.end if w.end is not None else w.start) - w.start)
    return (f":large_green_circle: {what} recovered after {took} "
            f"(was {w.kind} since {_human_time(w.start)}) [{where}]")


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn gives meaning to exactly these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class DeliveryFailed(Exception):
    """One failed attempt. Its text is already safe to log (redacted, no URL)."""

    def __init__(self, detail: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after

    def __repr__(self) -> str:  # stamina's retry hooks log repr(exception)
        return f"DeliveryFailed({self.detail!r})"


def _backoff(exc: Exception) -> bool | float:
    """stamina hook: False = give up now, True = usual backoff, float = this wait."""
    if not isinstance(exc, DeliveryFailed) or not exc.retryable:
        return False
    if exc.retry_after is not None:
        return min(exc.retry_after, MAX_BACKOFF)
    return True


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP date); None when absent or unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


@dataclass(eq=False)
class _Webhook:
    config: WebhookConfig
    where: str  # scheme://host[:port], for logs
    queue: deque[WindowEvent] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    in_flight: WindowEvent | None = None
    overflowing: bool = False  # a drop was logged; reset once the queue drains
    dropped: int = 0


class Notifier:
    """Sends outage window events to webhooks without ever delaying the caller.

    Call `publish()` from the event loop's thread; call `aclose()` once at shutdown.
    """

    def __init__(
        self,
        webhooks: Sequence[WebhookConfig],
        location: str,
        redact: Redactor,
        client: httpx.AsyncClient | None = None,
        *,
        titles: Mapping[str, str] | None = None,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.location = location
        self._redact = redact
        self._titles = dict(titles or {})  # service id -> title, for Slack text
        self._max_queue = max_queue
        self._hooks = [_Webhook(wc, _origin(wc.url)) for wc in webhooks]
        self._own_client = client is None and bool(self._hooks)
        self._client = client
        if self._own_client:
            self._client = httpx.AsyncClient(
                follow_redirects=False,  # a redirected POST is ambiguous: report it instead
                trust_env=False,
            )
        self._closing = False

    # -- the probe path ---------------------------------------------------------------

    def publish(self, event: WindowEvent) -> None:
        """Queue `event` for every webhook and return at once (never awaits)."""
        if not isinstance(event, (WindowOpened, WindowClosed)) or not self._hooks:
            return
        if self._closing:
            log.debug("notifier closed: %s not sent", event_name(event))
            return
        for hook in self._hooks:
            if len(hook.queue) >= self._max_queue:
                hook.queue.popleft()
                hook.dropped += 1
                if not hook.overflowing:
                    hook.overflowing = True
                    log.warning("webhook %s: queue full (%d events), dropping the oldest",
                                hook.where, self._max_queue)
            hook.queue.append(event)
            hook.wakeup.set()
            if hook.task is None:
                hook.task = asyncio.get_running_loop().create_task(
                    self._run(hook), name=f"aipulse-notify {hook.where}")

    # -- shutdown ---------------------------------------------------------------------

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let queued and in-flight deliveries finish for up to `timeout`, then cancel."""
        self._closing = True
        tasks = [h.task for h in self._hooks if h.task is not None]
        for hook in self._hooks:
            hook.wakeup.set()
        pending: set[asyncio.Task[None]] = set()
        try:
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=timeout)
        finally:
            # Count before cancelling: cancellation clears the in-flight slot.
            left = [len(h.queue) + (h.in_flight is not None) for h in self._hooks]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for hook, count in zip(self._hooks, left, strict=True):
                if count:
                    log.warning("webhook %s: shutting down, %d event(s) not delivered",
                                hook.where, count)
                hook.queue.clear()
            if self._own_client and self._client is not None:
                await self._client.aclose()
        if pending:
            log.debug("cancelled %d webhook sender(s) after %.1fs", len(pending), timeout)

    # -- the senders ------------------------------------------------------------------

    async def _run(self, hook: _Webhook) -> None:
        while True:
            while hook.queue:
                event = hook.in_flight = hook.queue.popleft()
                try:
                    await self._deliver(hook, event)
                except Exception as exc:  # a bug here must not stop later deliveries
                    log.error("webhook %s: internal error sending %s: %s", hook.where,
                              event_name(event), self._safe(hook, repr(exc)))
                finally:
                    hook.in_flight = None
            if hook.overflowing:
                log.warning("webhook %s: queue drained; %d event(s) were dropped",
                            hook.where, hook.dropped)
                hook.overflowing, hook.dropped = False, 0
            if self._closing:
                return
            hook.wakeup.clear()
            await hook.wakeup.wait()

    async def _deliver(self, hook: _Webhook, event: WindowEvent) -> None:
        cfg = hook.config
        body, headers = self._request(hook, event)
        attempts = 0
        try:
            async for attempt in stamina.retry_context(
                on=_backoff,
                attempts=cfg.max_attempts,
                timeout=None,  # attempts bound the total; stamina's 45 s default would not
                wait_initial=cfg.retry_initial,
                wait_max=MAX_BACKOFF,
                wait_jitter=cfg.retry_initial,  # jitter scales with the first wait
            ):
                with attempt:
                    attempts = attempt.num
                    await self._attempt(hook, body, headers)
        except DeliveryFailed as exc:
            w = event.window
            log.warning("webhook %s: %s %s/%s dropped after %d attempt(s): %s",
                        hook.where, event_name(event), w.service, w.check or "-", attempts,
                        exc.detail)

    def _request(self, hook: _Webhook, event: WindowEvent) -> tuple[bytes, dict[str, str]]:
        """Body and headers of one delivery, built once so every attempt is identical."""
        cfg = hook.config
        if cfg.format == "slack":
            title = self._titles.get(event.window.service, event.window.service)
            doc: Mapping[str, object] = {"text": slack_text(event, self.location, title)}
        else:
            doc = json_payload(event, self.location)
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "User-Agent": USER_AGENT,  # per request, so a caller's client sends it too
            "Content-Type": "application/json",
            "X-Aipulse-Event": event_name(event),
            "X-Aipulse-Delivery": delivery_id(event, self.location),
        }
        if cfg.secret:
            headers["X-Aipulse-Signature"] = signature(cfg.secret, body)
        return body, headers

    async def _attempt(self, hook: _Webhook, body: bytes, headers: dict[str, str]) -> None:
        cfg = hook.config
        assert self._client is not None
        try:
            async with asyncio.timeout(cfg.timeout):  # hard deadline, body read included
                async with self._client.stream("POST", cfg.url, content=body, headers=headers,
                                               timeout=cfg.timeout) as resp:
                    status = resp.status_code
                    if 200 <= status < 300:
                        return
                    peek = await _peek(resp)
                    retry_after = (_retry_after(resp.headers.get("Retry-After"))
                                   if status in (429, 503) else None)
        except (TimeoutError, httpx.TimeoutException):
            raise DeliveryFailed(f"timeout after {cfg.timeout:g}s", retryable=True) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise DeliveryFailed(self._safe(hook, _describe(exc)), retryable=True) from None
        except httpx.HTTPError as exc:  # invalid URL, local protocol error: retrying won't help
            raise DeliveryFailed(self._safe(hook, _describe(exc)), retryable=False) from None
        detail = f"HTTP {status}" + (f": {self._safe(hook, peek)}" if peek else "")
        raise DeliveryFailed(detail, retryable=status >= 500 or status == 429,
                             retry_after=retry_after)

    def _safe(self, hook: _Webhook, text: str) -> str:
        """Text fit for a log line: no secret, no URL path or query."""
        cfg = hook.config
        text = text.replace(cfg.url, hook.where)
        if cfg.secret:
            text = text.replace(cfg.secret, "<redacted>")
        return self._redact(text)


async def _peek(resp: httpx.Response) -> str:
    """The start of an error response, on one line (never the whole body)."""
    data = b""
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) >= _RESPONSE_PEEK:
            break
    text = data[:_RESPONSE_PEEK].decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"
