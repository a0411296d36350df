"""systemd service integration: the sd_notify protocol and the watchdog, without libsystemd.

`Type=notify` services tell the service manager about their state by sending small
datagrams to the AF_UNIX socket named in `$NOTIFY_SOCKET`: newline-separated
`KEY=value` assignments such as `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`,
`RELOADING=1` (see sd_notify(3) and systemd.service(5)). The protocol is tiny and
documented as a stable interface, so it is implemented here in a few lines of the
standard library instead of a dependency: the `sdnotify` package is unmaintained (its
last release, 0.3.2, is years old; it keeps one blocking socket, swallows every error
with a bare `except`, and has no WATCHDOG_USEC/WATCHDOG_PID handling), and
`systemd-python` is a C extension that needs the libsystemd headers (and a compiler)
at install time, which a plain `pip install` on a server usually does not have.

Everything here is a no-op outside systemd (`$NOTIFY_SOCKET` unset) and never raises:
a failed notification is logged at debug level and otherwise ignored, because the
monitor must keep monitoring even if the service manager went away.

The watchdog (`WatchdogSec=` in the unit) is fed by `watchdog()`, a task that runs *on
the event loop*: if the loop is stuck (a blocking call, a runaway callback), the pings
stop and systemd kills and restarts the daemon, which is exactly what a watchdog is for.
A thread would keep pinging for a dead loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("aipulse.systemd")

__all__ = ["SystemdNotifier", "status_line", "watchdog", "watchdog_interval"]


def _address(value: str | None) -> str | bytes | None:
    """`$NOTIFY_SOCKET` -> a sendto() address: a path, or `@name` for the abstract namespace."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@"):  # abstract namespace: a leading NUL byte instead of the '@'
        return b"\0" + value[1:].encode()
    # `vsock:CID:PORT` (systemd 253+, for VMs) and anything else are not supported here.
    log.debug("NOTIFY_SOCKET=%r: unsupported address, systemd notifications disabled", value)
    return None


class SystemdNotifier:
    """Sends sd_notify messages to `$NOTIFY_SOCKET` (or to `address` when given).

    Named to stay apart from `monitor.notify.Notifier` (webhooks). Each message is one
    datagram on a fresh socket, as libsystemd does, but non-blocking: nothing to keep
    open, and a full receive queue drops the message instead of blocking the event loop.
    """

    def __init__(self, address: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket_name = address if address is not None else env.get("NOTIFY_SOCKET")
        self._address = _address(self.socket_name)
        self.sent = 0  # messages delivered, for tests and debugging
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def notify(self, *assignments: str, **fields: object) -> bool:
        """Send `KEY=value` lines in one datagram; True if it was handed to the socket.

        `notify("READY=1", STATUS="ok")` sends `READY=1\\nSTATUS=ok`. Values never contain
        a newline (it would start a new assignment): newlines become spaces.
        """
        if self._address is None:
            return False
        lines = [*assignments, *(f"{k}={v}" for k, v in fields.items())]
        payload = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                s.sendto(payload, self._address)
        except OSError as exc:  # no listener, queue full, path too long: never fatal
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "systemd notification to %s failed: %s", self.socket_name, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete: `READY=1`, with an optional status line."""
        return self.notify("READY=1", **({"STATUS": status} if status is not None else {}))

    def status(self, text: str) -> bool:
        """Free-form status shown by `systemctl status`."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping for `WatchdogSec=`."""
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """A config reload began; send `ready()` when it is done.

        `MONOTONIC_USEC` (CLOCK_MONOTONIC, which `time.monotonic_ns` uses on Linux) is
        required by `Type=notify-reload` (systemd 253+) and ignored by older managers.
        """
        fields: dict[str, object] = {"MONOTONIC_USEC": time.monotonic_ns() // 1000}
        if status is not None:
            fields["STATUS"] = status
        return self.notify("RELOADING=1", **fields)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: `STOPPING=1`."""
        return self.notify("STOPPING=1", **({"STATUS": status} if status is not None else {}))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for the current start-up or shutdown step."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from `$WATCHDOG_USEC`, or None when not enabled.

    As sd_watchdog_enabled(3): if `$WATCHDOG_PID` is set it must be our pid (otherwise
    the variable was inherited from a parent that is the one being watched).
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


async def watchdog(loop_alive_check: Callable[[], bool] | None = None,
                   notifier: SystemdNotifier | None = None,
                   interval: float | None = None) -> None:
    """Send `WATCHDOG=1` every `interval / 2` seconds from the event loop, until cancelled.

    `interval` defaults to `watchdog_interval()`; without a watchdog (or without
    `$NOTIFY_SOCKET`) this returns at once, so it can always be started. Each ping is
    sent only if `loop_alive_check()` (when given) returns True, so the daemon can also
    withhold pings when something other than the loop itself is wedged.
    """
    notifier = notifier if notifier is not None else SystemdNotifier()
    interval = interval if interval is not None else watchdog_interval()
    if interval is None or not notifier.enabled:
        return
    period = interval / 2
    log.debug("systemd watchdog: %.3gs, pinging every %.3gs", interval, period)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    was_healthy = True
    while True:
        healthy = True
        if loop_alive_check is not None:
            try:
                healthy = bool(loop_alive_check())
            except Exception:
                log.exception("watchdog health check failed")
                healthy = False
        if healthy:
            notifier.watchdog()
        elif was_healthy:
            log.warning("systemd watchdog pings withheld: the health check failed")
        was_healthy = healthy
        # Fixed rate, but never catch up with a burst after the loop was blocked.
        next_at = max(next_at + period, loop.time())
        await asyncio.sleep(next_at - loop.time())


def status_line(checks: int, services: int, down: int = 0, degraded: int = 0,
                listen: str | None = None) -> str:
    """A one-line summary for `STATUS=` (`systemctl status` shows it)."""
    text = f"monitoring {_plural(checks, 'check')} in {_plural(services, 'service')}"
    problems = [f"{n} {what}" for n, what in ((down, "down"), (degraded, "degraded")) if n]
    if problems:
        text += "; " + ", ".join(problems)
    if listen:
        text += f"; listening on {listen}"
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
