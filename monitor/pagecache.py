"""Pages built once for all their readers, never on the event loop's time alone, and
sent without a copy per reader.

A status page of 5,000 checks takes about 2 CPU-seconds to build (views, Jinja, gzip).
Built per request on the event loop, four browsers reloading it stalled probing for
13.8 s (false timeouts), and 20 clients that never read held a copy of the body each
(+254 MB, kept after they left). So:

* `PageCache`: a page is rebuilt only when it is older than ten times its last build
  took, and at most `MAX_AGE` seconds old (a page says when it was built); every
  reader meanwhile gets the same bytes. One build at a time, all pages together;
  readers of a page being built wait for that build (one build, however many wait).
* The builder yields to the event loop every `SLICE` seconds of work (`Pacer`) and
  renders its template and gzips the result on a thread of its own (`off_loop`).
* `send`: the body, gzipped when the client accepts it, is written in `PIECE`-byte
  pieces, each after the client has taken the earlier ones (aiohttp drains its
  transport), so a reader that does not read holds a transport buffer (~100 KiB),
  not a copy of the page; a send not done in `SEND_TIMEOUT` is cut off.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("aipulse.web")

BUILD_FACTOR = 10.0  # a page is reused until it is this many times its build time old...
MAX_AGE = 10.0  # ...or this many seconds old, whichever is less
MAX_ENTRIES = 256  # pages kept (`/` and one per service); least recently built go first
SLICE = 0.01  # seconds of building between two yields to the event loop
PIECE = 16 * 1024  # bytes written at a time
BATCH = 64 * 1024  # characters of a template's output encoded and gzipped at a time
SEND_TIMEOUT = 60.0  # seconds for the whole body to leave
GZIP_LEVEL = 6

# Templates are rendered and gzipped here, never on the loop (one build at a time, so one thread).
_RENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aipulse-page")


@dataclass(frozen=True, slots=True)
class Body:
    """A built page, kept gzipped only."""

    status: int
    gzipped: bytes
    size: int  # bytes of the HTML (UTF-8) it inflates to


@dataclass(frozen=True, slots=True)
class Page:
    body: Body
    built_at: float  # monotonic, when its build began (its data is at least this old)
    build_seconds: float


def gzip_text(pieces: Iterable[str], status: int = 200) -> Body:
    """Encode (UTF-8) and gzip text as it comes, `BATCH` characters at a time: a
    template's `generate()` never becomes one string of the whole page."""
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: the gzip format
    out: list[bytes] = []
    batch: list[str] = []
    size = pending = 0
    for piece in itertools.chain(pieces, [None]):  # pieces as they come, then the end
        if piece is not None:
            batch.append(piece)
            pending += len(piece)
            if pending < BATCH:
                continue
        data = "".join(batch).encode("utf-8")
        size += len(data)
        out.append(deflate.compress(data))
        batch, pending = [], 0
    out.append(deflate.flush())
    return Body(status, b"".join(out), size)


async def off_loop(render: Callable[[], Iterable[str]], status: int = 200) -> Body:
    """`render()` (a template's generate() with its context: plain data, nothing
    live) gzipped, on the page thread."""
    return await asyncio.get_running_loop().run_in_executor(_RENDER, lambda: gzip_text(render(), status))


class Pacer:
    """`await pace()` in a loop of work on the event loop: it yields to the loop once
    `SLICE` seconds of work have passed since the last yield, so the loop's other
    tasks (probes, /healthz) wait at most about that long."""

    def __init__(self, slice_seconds: float = SLICE) -> None:
        self.slice = slice_seconds
        self._until = time.perf_counter() + slice_seconds

    async def __call__(self) -> None:
        if time.perf_counter() >= self._until:
            await asyncio.sleep(0)
            self._until = time.perf_counter() + self.slice


class PageCache:
    """Built pages by key (`/`, `/services/<id>`)."""

    def __init__(self, *, build_factor: float = BUILD_FACTOR, max_age: float = MAX_AGE,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.build_factor = build_factor
        self.max_age = max_age
        self.max_entries = max_entries
        self.builds = 0  # pages built so far (tests and benchmarks read it)
        self._pages: dict[str, Page] = {}
        self._building: dict[str, asyncio.Future[Page]] = {}
        self._one_build = asyncio.Semaphore(1)

    def clear(self) -> None:
        """Forget every built page (the next reader of each builds it anew)."""
        self._pages.clear()

    def _fresh(self, page: Page, now: float) -> bool:
        return now - page.built_at < min(self.max_age, self.build_factor * page.build_seconds)

    async def get(self, key: str, build: Callable[[], Awaitable[Body]]) -> Body:
        """The page under `key`: the one built, while fresh; else from the build under
        way, or from a new `build()`. A reader that goes away does not stop a build
        that others may be waiting for."""
        page = self._pages.get(key)
        if page is not None and self._fresh(page, time.monotonic()):
            return page.body
        future = self._building.get(key)
        if future is None:
            future = self._building[key] = asyncio.ensure_future(self._build(key, build))
            future.add_done_callback(_retrieve)
        return (await asyncio.shield(future)).body

    async def _build(self, key: str, build: Callable[[], Awaitable[Body]]) -> Page:
        try:
            async with self._one_build:
                began = time.monotonic()
                body = await build()
                page = Page(body, began, time.monotonic() - began)
                self._pages.pop(key, None)
                self._pages[key] = page  # newest last
                self.builds += 1
                while len(self._pages) > self.max_entries:
                    del self._pages[next(iter(self._pages))]
                return page
        finally:
            del self._building[key]


def _retrieve(future: asyncio.Future[Page]) -> None:
    """A build that failed after every reader had gone: logged, not 'never retrieved'."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("building a page failed", exc_info=exc)


def accepts_gzip(accept_encoding: str) -> bool:
    """Does an Accept-Encoding header value accept gzip (RFC 9110 12.5.3: a listed
    coding, or `*`, without q=0)?"""
    verdict: bool | None = None
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding != "*":
            return q > 0
        verdict = q > 0
    return bool(verdict)


async def send(request: web.Request, body: Body, headers: Mapping[str, str]) -> web.StreamResponse:
    """Answer with a built page: gzipped when the client accepts it (else inflated a
    piece at a time), in pieces written as the client takes them, cut off after
    `SEND_TIMEOUT`."""
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    response = web.StreamResponse(status=body.status, headers=headers)
    response.content_type = "text/html"
    response.charset = "utf-8"
    response.headers["Vary"] = "Accept-Encoding"
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    response.content_length = len(body.gzipped) if gzipped else body.size
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    try:
        async with asyncio.timeout(SEND_TIMEOUT):
            for piece in _pieces(body.gzipped) if gzipped else _inflated(body.gzipped):
                await response.write(piece)
            await response.write_eof()
    except TimeoutError:
        # A reader that takes nothing: let go of it (and of what its buffer holds).
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the reader went away mid-page; nothing of ours failed
    return response



def _pieces(data: bytes) -> Iterable[memoryview]:
    view = memoryview(data)
    return (view[start:start + PIECE] for start in range(0, len(data), PIECE))


def _inflated(data: bytes) -> Iterable[bytes]:
    inflate = zlib.decompressobj(31)
    while not inflate.eof:
        piece = inflate.decompress(data, PIECE)
        data = inflate.unconsumed_tail
        if not piece and not data:
            break
        yield piece
