"""The event loop: asyncio's, or uvloop when asked (`AIPULSE_LOOP=uvloop`, with
`pip install 'aipulse[uvloop]'`).

asyncio is the default. uvloop measured no CPU gain per probe on this daemon
(BENCHMARKS.md: side by side, 1.69 and 1.78 with asyncio, 1.59 and 1.95 with uvloop),
and its TLS transport logs a traceback for a connection aborted while a read is in
flight (a probe that stops reading a hostile server), which asyncio does not.

    monitor.loop.run(main())     # like asyncio.run(main()), on the chosen loop
    monitor.loop.install()       # or: make the next asyncio.run() use it (Python < 3.14)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CHOICES = ("asyncio", "uvloop")


def _choice(choice: str | None) -> str:
    choice = (choice or os.environ.get("AIPULSE_LOOP") or "asyncio").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f'AIPULSE_LOOP: invalid "{choice}" (use {", ".join(CHOICES)})')
    return choice


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    choice = _choice(choice)
    if choice == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """asyncio.run(main) on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def install(choice: str | None = None) -> str:
    """Make later asyncio.run() calls use the chosen loop; returns "uvloop" or "asyncio".

    Sets the event loop policy, which Python 3.14 deprecates: there, and anywhere
    new, prefer `run()`.
    """
    factory = loop_factory(choice)
    if factory is None:
        return "asyncio"
    if sys.version_info >= (3, 14):  # pragma: no cover - policies are deprecated there
        raise RuntimeError("monitor.loop.install() needs Python < 3.14; use monitor.loop.run()")
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def name() -> str:
    """The running loop's kind, for logs: "uvloop" or "asyncio"."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
