"""Small parts of the daemon's lifecycle: reloads that coalesce, and a shutdown that
keeps to a deadline.

* `Coalesced(fn)`: calls of `request()` share runs of `fn`: at most one runs and one
  waits. A request while one runs joins the waiting one, which starts when the running
  one ends and answers every request that joined it. 150 SIGHUPs in a row make two
  reloads, not 150 (each of which, on a large config, takes seconds).
* `Shutdown`: one exit stack for everything the daemon starts. Each part registers how
  it stops as it starts; they stop in the reverse order, each given what is left of
  one deadline (SIGTERM must end the daemon within a few seconds under any load: a
  part that overruns is logged and left behind, and the rest still stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("aipulse")

T = TypeVar("T")


class Coalesced(Generic[T]):
    """At most one run of `fn` at a time, and at most one more waiting (see module doc)."""

    def __init__(self, fn: Callable[[], Awaitable[T]]) -> None:
        self._fn = fn
        self._running: asyncio.Future[T] | None = None
        self._waiting: asyncio.Future[T] | None = None
        self.runs = 0  # runs started so far

    @property
    def busy(self) -> bool:
        return self._running is not None

    async def request(self) -> T:
        """The result of a run that starts after this call (now, or after the running one)."""
        if self._waiting is None:
            if self._running is None:
                fut = self._start()
            else:
                fut = self._waiting = asyncio.get_running_loop().create_future()
        else:
            fut = self._waiting
        return await asyncio.shield(fut)

    def cancel(self) -> None:
        """Cancel the running run and the waiting one (at shutdown)."""
        for fut in (self._waiting, self._running):
            if fut is not None:
                fut.cancel()
        self._waiting = None

    def _start(self) -> asyncio.Future[T]:
        self.runs += 1
        task = asyncio.ensure_future(self._fn())
        self._running = task
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Future[T]) -> None:
        self._running = None
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            return
        nxt = self._start()

        def answer(done: asyncio.Future[T]) -> None:
            if waiting.done():
                return
            if done.cancelled():
                waiting.cancel()
            elif (exc := done.exception()) is not None:
                waiting.set_exception(exc)
            else:
                waiting.set_result(done.result())

        nxt.add_done_callback(answer)


class Shutdown:
    """An exit stack whose callbacks share one deadline, set when the unwinding starts."""

    def __init__(self, within: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.within = within
        self._monotonic = monotonic
        self._stack = contextlib.AsyncExitStack()
        self._deadline: float | None = None

    def left(self) -> float:
        """Seconds left of the deadline (the whole budget before the unwinding starts)."""
        if self._deadline is None:
            return self.within
        return max(0.0, self._deadline - self._monotonic())

    def on_exit(self, name: str, stop: Callable[[], Awaitable[object] | object], *,
                at_most: float | None = None) -> None:
        """When unwinding: `stop()` (awaited if it returns an awaitable), given what is left
        of the deadline (and at most `at_most` seconds)."""

        async def bounded() -> None:
            budget = self.left() if at_most is None else min(at_most, self.left())
            try:
                async with asyncio.timeout(budget):
                    result = stop()
                    if isinstance(result, Awaitable):
                        await result
            except TimeoutError:
                log.warning("stopping: %s took more than %.1fs; left behind", name, budget)
            except Exception:
                log.exception("stopping: %s failed", name)

        self._stack.push_async_callback(bounded)

    async def __aenter__(self) -> Shutdown:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool:
        self._deadline = self._monotonic() + self.within
        return bool(await self._stack.__aexit__(*exc))  # type: ignore[arg-type]
