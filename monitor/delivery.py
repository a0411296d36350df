"""Notification targets: outage messages sent through Apprise, off the probe path.

    publish(event)   on the event loop, never waits: each target's Grouper routes,
                     holds (min_duration) and groups (group_wait) the event
    timer            when a group is complete, its Digest becomes a Message
                     (monitor.messages, with what LiveState says of the service now)
                     and joins the target's bounded queue; a full queue drops its
                     oldest message and counts it
    one task per target   takes its queue in order, at most one message per
                     MIN_INTERVAL (and Apprise keeps its own pace per service), and
                     hands each to Apprise in a worker thread (Apprise is
                     synchronous); a failed attempt is retried with backoff and
                     jitter (stamina), then given up with one log line

Targets run in parallel: a slow or dead one delays only its own queue. Counts go to
LiveState (aipulse_notifications_total{target, result}, aipulse_notification_queue_depth).

Secrets: a target URL holds tokens (in its path, user, password, query, even its
"host": tgram://BOTTOKEN/...). No URL is ever logged or printed; a target is named by
its `name` and scheme. What Apprise says about a delivery comes back in its result and
passes a Redactor holding every part of the URL that could be a secret (see
monitor.apprise_url.url_secrets) and every ${VAR} value; Apprise's and urllib3's own
loggers (which print URLs at debug level) are cut off from ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import stamina

from monitor.apprise_url import asset, quiet_libraries, url_secrets
from monitor.config import Config, TargetConfig
from monitor.grouping import Grouper, Route
from monitor.live import LiveState, TargetStats
from monitor.messages import Message, ServiceInfo, notify_test_message, render
from monitor.outage import OutageWindow, WindowClosed, WindowOpened
from monitor.redact import Redactor

log = logging.getLogger("aipulse.notify")

MAX_QUEUE = 1000  # messages per target (each tells of a whole group of windows)
MIN_INTERVAL = 1.0  # seconds between two messages (or attempts) to one target
ATTEMPT_TIMEOUT = 30.0  # seconds Apprise may take for one attempt
MAX_BACKOFF = 60.0
MAX_WORKERS = 16  # threads; one per target sending at the moment
_DETAIL = 300  # characters of what a service answered, in a log line or notify-test


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to. `detail` is what the service answered, redacted."""

    ok: bool
    detail: str
    elapsed: float


class AttemptFailed(Exception):
    """One failed attempt; its text is already safe to log."""

    def __repr__(self) -> str:  # stamina's hooks log repr(exception)
        return f"AttemptFailed({str(self)!r})"


def describe(target: TargetConfig) -> str:
    """How a target is named in logs and output: never its URL."""
    scheme = urlsplit(target.url).scheme if "://" in target.url else "?"
    return f"{target.name} ({scheme})"


class Channel:
    """One target's Apprise object. `send` blocks: call it in a worker thread, one
    call at a time per Channel."""

    def __init__(self, target: TargetConfig, secrets: Iterable[str] = ()) -> None:
        quiet_libraries()
        import apprise

        self.target = target
        self.redact = Redactor(frozenset(secrets) | url_secrets(target.url))
        self._apprise = apprise.Apprise(asset=asset())
        if not self._apprise.add(target.url):  # validated with the config; a bug if it happens
            raise ValueError(f"target {describe(target)}: Apprise cannot use its URL")

    def send(self, message: Message, timeout: float = ATTEMPT_TIMEOUT) -> Outcome:
        import apprise

        started = time.monotonic()
        try:
            with self._apprise.notify(
                body=message.body, title=message.title, notify_type=apprise.NotifyType(message.level),
                body_format=apprise.NotifyFormat.MARKDOWN, timeout=timeout, log_level=logging.DEBUG,
            ) as result:
                ok = result.status == apprise.AppriseResultStatus.SUCCESS
                detail = self._detail(ok, [(e.level, e.message) for e in result.logs()])
        except Exception as exc:  # Apprise handles its services' errors; this would be its bug
            ok, detail = False, f"{type(exc).__name__}: {self.redact(str(exc))}"
        return Outcome(ok, detail, time.monotonic() - started)

    def _detail(self, ok: bool, entries: Sequence[tuple[str, str]]) -> str:
        """What the service answered: on success Apprise's last word, on failure its
        warnings and errors, with the response it quotes (at debug level)."""
        if ok:
            said = [m for level, m in entries if level == "INFO" and not m.startswith("Notifying ")][-1:]
        else:
            said = [m for level, m in entries if level in ("WARNING", "ERROR", "CRITICAL")
                    or m.startswith("Response Details")]
        text = " ".join(" ".join(said).split())
        text = self.redact(text)
        return text if len(text) <= _DETAIL else text[: _DETAIL - 1] + "…"


@dataclass(eq=False)
class _Target:
    config: TargetConfig
    channel: Channel
    grouper: Grouper
    stats: TargetStats
    queue: deque[Message] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0
    in_flight: bool = False
    overflowing: bool = False  # a drop was logged; reset once the queue drains
    last_attempt: float = float("-inf")  # loop time the last attempt ended
    closing: bool = False

    def count_queue(self) -> None:
        self.stats.queued = len(self.queue) + self.in_flight


class TargetNotifier:
    """Sends outage messages to the config's notify.targets, never delaying the caller.

    Call `publish()` from the event loop's thread; `configure()` on a reload (targets
    that did not change keep their queue and groups); `aclose()` once at shutdown.
    """

    def __init__(self, config: Config, live: LiveState, *, max_queue: int = MAX_QUEUE,
                 min_interval: float = MIN_INTERVAL) -> None:
        self._live = live
        self._max_queue = max_queue
        self._min_interval = min_interval
        self._targets: dict[str, _Target] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False
        self.configure(config)

    # -- configuration ------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        """Adopt a config's targets. A target whose settings changed keeps its queue and
        groups; a removed one is stopped (what it had not sent is logged and lost)."""
        self._config = config
        if config.targets:
            stamina.instrumentation.set_on_retry_hooks([])  # we log one line per message given up
        old, self._targets = self._targets, {}
        for tc in config.targets:
            route = Route(tc.services, tc.kinds, tc.min_duration)
            t = old.pop(tc.name, None)
            if t is None:
                t = _Target(tc, Channel(tc, config.secrets), Grouper(route, config.group_wait),
                            self._live.notifications.get(tc.name) or TargetStats())
                t.grouper.restore(self._open_windows(), time.time())
            elif t.config != tc or t.grouper.group_wait != config.group_wait:
                if t.config != tc:  # the next message goes through the new settings
                    t.channel = Channel(tc, config.secrets)
                t.config, t.grouper.route, t.grouper.group_wait = tc, route, config.group_wait
            self._targets[tc.name] = t
        self._live.notifications = {name: t.stats for name, t in self._targets.items()}
        for t in old.values():
            self._stop(t)
        for t in self._targets.values():
            self._schedule(t)

    def restore(self, windows: Iterable[OutageWindow] | None = None) -> None:
        """After a restart: open windows not yet announced (younger than min_duration)
        are held again. Default: the open windows LiveState holds."""
        windows = list(self._open_windows() if windows is None else windows)
        now = time.time()
        for t in self._targets.values():
            t.grouper.restore(windows, now)
            self._schedule(t)

    def _open_windows(self) -> list[OutageWindow]:
        return [s.window for s in self._live.checks.values() if s.window is not None]

    # -- the probe path -----------------------------------------------------------------

    def publish(self, event: WindowOpened | WindowClosed) -> None:
        """Hand a window event to every target and return at once (never awaits)."""
        if not self._targets or self._closing or not isinstance(event, (WindowOpened, WindowClosed)):
            return
        w = event.window
        removed = (isinstance(event, WindowClosed) and w.check is not None
                   and (w.service, w.check) not in self._live.checks)
        now = time.time()
        for t in self._targets.values():
            try:
                t.grouper.add(event, now, removed=removed)
                self._schedule(t)
            except Exception:  # a bug here must not stop the pipeline publishing the rest
                log.exception("notify %s: internal error taking a window event", describe(t.config))

    # -- grouping timers ----------------------------------------------------------------

    def _schedule(self, t: _Target) -> None:
        due = t.grouper.next_due()
        if due is None or t.closing:
            if t.timer is not None:
                t.timer.cancel()
                t.timer = None
            return
        if t.timer is not None and t.timer_due <= due:
            return
        if t.timer is not None:
            t.timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # configured outside the loop (tests, notify-test): nothing to time
            return
        t.timer_due = due
        t.timer = loop.call_later(max(0.0, due - time.time()), self._flush, t)

    def _flush(self, t: _Target) -> None:
        t.timer = None
        try:
            for digest in t.grouper.due(time.time()):
                self._enqueue(t, render(digest, self._info(digest.service)))
        except Exception:  # a bug here must not stop this target's later messages
            log.exception("notify %s: internal error making a message", describe(t.config))
        self._schedule(t)

    def _info(self, service: str) -> ServiceInfo:
        s = self._live.services.get(service)
        public = self._config.public_url
        return ServiceInfo(
            title=s.service.title if s is not None else service,
            status=s.status if s is not None else None,
            vendor=s.vendor if s is not None else None,
            link=f"{public}/services/{quote(service)}" if public else None,
            location=self._config.location,
        )

    # -- the queues ---------------------------------------------------------------------

    def _enqueue(self, t: _Target, message: Message) -> None:
        if len(t.queue) >= self._max_queue:
            t.queue.popleft()
            t.stats.dropped += 1
            if not t.overflowing:
                t.overflowing = True
                log.warning("notify %s: queue full (%d messages), dropping the oldest",
                            describe(t.config), self._max_queue)
        t.queue.append(message)
        t.count_queue()
        t.wakeup.set()
        if t.task is None:
            t.task = asyncio.get_running_loop().create_task(
                self._run(t), name=f"aipulse-notify {t.config.name}")

    async def _run(self, t: _Target) -> None:
        while True:
            while t.queue:
                message = t.queue.popleft()
                t.in_flight = True
                try:
                    await self._deliver(t, message)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug here must not stop later deliveries
                    log.exception("notify %s: internal error", describe(t.config))
                finally:
                    t.in_flight = False
                    t.count_queue()
            if t.overflowing:
                log.warning("notify %s: queue drained; %d message(s) were dropped meanwhile",
                            describe(t.config), t.stats.dropped)
                t.overflowing = False
            if t.closing or self._closing:
                return
            t.wakeup.clear()
            await t.wakeup.wait()

    async def _deliver(self, t: _Target, message: Message) -> None:
        cfg = t.config
        loop = asyncio.get_running_loop()
        attempts, outcome = 0, None
        try:
            async for attempt in stamina.retry_context(
                on=AttemptFailed, attempts=cfg.max_attempts, timeout=None,
                wait_initial=cfg.retry_initial, wait_max=MAX_BACKOFF, wait_jitter=cfg.retry_initial,
            ):
                with attempt:
                    attempts = attempt.num
                    wait = t.last_attempt + self._min_interval - loop.time()
                    if wait > 0:  # the per-target rate limit, from the end of the last attempt
                        await asyncio.sleep(wait)
                    try:
                        outcome = await loop.run_in_executor(self._executor(), t.channel.send, message)
                    finally:
                        t.last_attempt = loop.time()
                    if not outcome.ok:
                        log.debug("notify %s: attempt %d failed: %s", describe(cfg), attempts, outcome.detail)
                        raise AttemptFailed(outcome.detail)
        except AttemptFailed as exc:
            t.stats.failed += 1
            log.warning("notify %s: %r not sent, given up after %d attempt(s): %s",
                        describe(cfg), message.title, attempts, exc)
            return
        t.stats.sent += 1
        log.info("notify %s: sent %r (%s)", describe(cfg), message.title,
                 outcome.detail if outcome is not None else "")

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                MAX_WORKERS, thread_name_prefix="aipulse-notify")
        return self._pool

    # -- shutdown -----------------------------------------------------------------------

    def _stop(self, t: _Target) -> None:
        """A target removed by a reload: stop it; what it had not sent is dropped."""
        t.closing = True
        if t.timer is not None:
            t.timer.cancel()
        lost = len(t.queue) + t.in_flight + t.grouper.pending
        if t.task is not None:
            t.task.cancel()
        if lost:
            log.warning("notify %s: removed from the config; %d message(s)/window(s) not sent",
                        describe(t.config), lost)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Send what is gathered now (groups not waited out; windows still held for
        min_duration are not announced), let the queues drain for up to `timeout`,
        then cancel."""
        now = time.time()
        for t in self._targets.values():
            if t.timer is not None:
                t.timer.cancel()
                t.timer = None
            for digest in t.grouper.flush(now):
                self._enqueue(t, render(digest, self._info(digest.service)))
        self._closing = True
        tasks = [t.task for t in self._targets.values() if t.task is not None]
        for t in self._targets.values():
            t.wakeup.set()
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in self._targets.values():
                left = len(t.queue) + t.in_flight
                if left:
                    log.warning("notify %s: shutting down, %d message(s) not sent", describe(t.config), left)
                t.queue.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)


class Notifications:
    """The pipeline's one publisher: webhooks (monitor.notify) and Apprise targets."""

    def __init__(self, webhooks: Any, targets: TargetNotifier) -> None:
        self.webhooks = webhooks  # monitor.notify.Notifier | None
        self.targets = targets

    def publish(self, event: WindowOpened | WindowClosed) -> None:
        if self.webhooks is not None:
            self.webhooks.publish(event)
        self.targets.publish(event)

    async def set_webhooks(self, webhooks: Any) -> None:
        """A reload changed `notify.webhooks`: the old notifier finishes (up to 2 s), the
        new one takes over."""
        if self.webhooks is not None:
            await self.webhooks.aclose(timeout=2.0)
        self.webhooks = webhooks

    async def aclose(self, timeout: float = 5.0) -> None:
        closing = [self.targets.aclose(timeout)]
        if self.webhooks is not None:
            closing.append(self.webhooks.aclose(timeout))
        await asyncio.gather(*closing)


def send_tests(config: Config, names: Sequence[str] | None = None,
               timeout: float = ATTEMPT_TIMEOUT) -> list[tuple[TargetConfig, Outcome]]:
    """`aipulse notify-test`: one test message to each target (or those named), all at
    once, one attempt each; what each answered."""
    targets = [t for t in config.targets if names is None or t.name in names]
    link = f"{config.public_url}/" if config.public_url else None

    def one(t: TargetConfig) -> Outcome:
        return Channel(t, config.secrets).send(notify_test_message(t.name, config.location, link), timeout)

    with concurrent.futures.ThreadPoolExecutor(min(MAX_WORKERS, max(1, len(targets)))) as pool:
        return list(zip(targets, pool.map(one, targets), strict=True))
