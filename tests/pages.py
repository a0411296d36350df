"""A local vendor status-page server for daemon tests: each path serves whatever
document a test puts there (`pages.docs[path] = (body, content type)`), or a redirect
to the site root (`pages.moved.add(path)`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web
from targets import in_thread, listen


@dataclass
class Pages:
    port: int = 0
    docs: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    moved: set[str] = field(default_factory=set)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def serve_pages() -> Iterator[Pages]:
    pages = Pages()

    async def page(request: web.Request) -> web.Response:
        path = request.path
        pages.hits[path] = pages.hits.get(path, 0) + 1
        if path in pages.moved:
            raise web.HTTPMovedPermanently("/")
        if path == "/":
            return web.Response(text="<!doctype html><html><body>Our new status page</body></html>",
                                content_type="text/html")
        if path == "/ok":
            return web.Response(text="ok")
        if path not in pages.docs:
            raise web.HTTPNotFound()
        body, content_type = pages.docs[path]
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)

    async def start() -> None:
        await runner.setup()
        pages.port = await listen(runner)

    with in_thread(start, runner.cleanup, "status-pages"):
        yield pages
