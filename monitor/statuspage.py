"""Vendor status pages: what the vendor says, next to what we measure.

The formats and their parsers live in `monitor.vendorformats` (Atlassian Statuspage
v2 and incident.io's shim, incident.io native, Instatus, Better Stack, Rootly, Google
Cloud incidents.json, RSS/Atom feeds); `parse` and the result types are re-exported
here. The rule that matters most: **an unreadable source is unknown -- never
operational and never down**, with a `detail` saying why.

This module holds what is done with a parsed page: Prometheus-safe component labels
(`component_label` / `component_labels`: ``[a-z0-9_]``, at most 64 characters, unique
per page), the detection lead, and the fetching half: `StatusPagePoller` fetches each
configured page on its own asyncio task, once right away and then every
``interval``, each fetch under one hard deadline with a bounded body (the probes'
HTTP client), and keeps the newest answer in ``latest``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import ssl
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from monitor import __version__
from monitor.probes import verified_context
from monitor.probes.client import Client, get
from monitor.probes.net import ProbeTrace
from monitor.reasons import Failure
from monitor.vendorformats import FORMATS, PageSpec, parse
from monitor.vendorformats.model import (
    COMPONENT_STATUSES,
    MAX_COMPONENTS,
    MAX_INCIDENTS,
    STATUSES,
    VendorComponent,
    VendorIncident,
    VendorStatus,
    unknown,
)

__all__ = [
    "COMPONENT_STATUSES", "FORMATS", "MAX_COMPONENTS", "MAX_INCIDENTS", "STATUSES", "PageSpec",
    "StatusPagePoller", "VendorComponent", "VendorIncident", "VendorStatus", "component_label",
    "component_labels", "detection_lead", "fetch", "new_client", "parse", "unknown",
]

log = logging.getLogger("aipulse.statuspage")

MAX_LABEL = 64
# A body larger than this is parsed off the event loop, on a thread of its own (the
# default executor resolves the probes' DNS).
LARGE_BODY = 256 * 1024
_PARSER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aipulse-statuspage")


# ------------------------------------------------------------------------- labels

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def component_label(name: str) -> str:
    """A Prometheus-safe label value for a vendor component name.

    ``[a-z0-9_]``, 1 to 64 characters, deterministic. Accents are folded
    ("Générateur" -> "generateur"); a name with no ASCII letters or digits left
    ("接口") becomes ``c_<hash>``; a name cut at 64 characters keeps a hash of
    the whole name so two long names that share a prefix stay apart.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = _NOT_SLUG.sub("_", folded).strip("_")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    if not slug:
        return "c_" + digest[:12]
    if len(slug) > MAX_LABEL:
        slug = slug[: MAX_LABEL - 9].rstrip("_") + "_" + digest[:8]
    return slug


def component_labels(components: Iterable[VendorComponent]) -> dict[str, str]:
    """component id -> label, unique within one page (``api``, ``api_2``, ...)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for component in components:
        if component.id in out:
            continue
        base = component_label(component.name)
        label, n = base, 1
        while label in used:
            n += 1
            suffix = f"_{n}"
            label = base[: MAX_LABEL - len(suffix)] + suffix
        used.add(label)
        out[component.id] = label
    return out


# ----------------------------------------------------------------- detection lead


def detection_lead(our_start: float | None, vendor: VendorStatus | None) -> float | None:
    """Earliest unresolved vendor incident start minus our outage window's start.

    Positive: we saw it first (by that many seconds). None when we have no open
    window or the vendor has no dated open incident. Maintenance incidents are not
    outages and are left out. Vendors may back-date ``started_at``, which makes the
    lead look smaller than what users experienced; that is the vendor's claim.
    """
    if our_start is None or vendor is None:
        return None
    starts = [i.started for i in vendor.incidents if i.started is not None and i.impact != "maintenance"]
    if not starts:
        return None
    return min(starts) - our_start


# ------------------------------------------------------------------------ fetching

_HEADERS = (
    ("Accept", "application/json, application/atom+xml, application/rss+xml, application/xml;q=0.9, "
               "*/*;q=0.1"),
    ("User-Agent", f"aipulse/{__version__} (availability monitor; status page reader)"),
)


def new_client(ssl_context: ssl.SSLContext | None = None) -> Client:
    """The probes' HTTP client (explicit DNS, no keep-alive, verified TLS, no env
    proxies, no client-side timeout: `fetch` owns the deadline)."""
    return Client(ssl_context or verified_context(), _HEADERS[1][1])


async def fetch(http: Client, url: str, timeout: float = 10.0,
                max_bytes: int = 4 * 1024 * 1024, spec: PageSpec | None = None) -> VendorStatus:
    """GET one status page under one hard deadline and parse it. Never raises
    (except CancelledError): a failure is `unknown` with the reason in `detail`.
    `spec`: the page as configured (format, components); default: `url`, auto."""
    trace = ProbeTrace()
    try:
        async with asyncio.timeout(timeout):
            response, body = await get(http, url, _HEADERS, trace, max_bytes)
    except TimeoutError:
        return unknown(f"fetch failed: timeout: no answer within {timeout:g}s ({trace.stage})")
    except Failure as failure:
        return unknown(f"fetch failed: {failure.reason.value}: {failure.detail[:200]}")
    args = (body, response.headers.get("content-type") or "", response.status, response.headers,
            response.url.text, spec or PageSpec(url))
    if len(body) > LARGE_BODY:  # a big document (Google Cloud's incidents.json) is parsed off the loop
        return await asyncio.get_running_loop().run_in_executor(_PARSER, functools.partial(parse, *args))
    return parse(*args)


OnUpdate = Callable[[str, VendorStatus], None]


class StatusPagePoller:
    """Polls each service's vendor status page: right away, then every `interval`.

    One asyncio task per page. Each poll has one hard deadline (`timeout`, covering
    DNS, connect, TLS, headers and body) and reads at most `max_bytes`. A task never
    raises: every failure becomes an `unknown` VendorStatus. `latest[service]` is
    ``(epoch seconds the poll finished, VendorStatus)``; `on_update` is called after
    every poll (exceptions in it are logged, not raised). One log line per change of
    a page's overall status.
    """

    def __init__(
        self,
        pages: Mapping[str, str | PageSpec],
        client: Client,
        interval: float = 120.0,
        timeout: float = 10.0,
        max_bytes: int = 4 * 1024 * 1024,
        on_update: OnUpdate | None = None,
    ) -> None:
        if not (interval > 0 and timeout > 0 and max_bytes > 0):
            raise ValueError("interval, timeout and max_bytes must be positive")
        self.pages = _specs(pages)
        self.client = client
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.on_update = on_update
        self.latest: dict[str, tuple[float, VendorStatus]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def start(self) -> None:
        """Start one task per page (call from inside the running event loop)."""
        self._running = True
        for service in self.pages:
            self._spawn(service)

    async def stop(self) -> None:
        """Cancel every task and wait for them; safe to call twice."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await _cancel(tasks)

    async def update(self, pages: Mapping[str, str | PageSpec]) -> None:
        """Apply a reloaded config: pages removed or whose URL (or format, components)
        changed are stopped and forgotten; new ones start right away (when running).
        Unchanged ones keep going."""
        new = _specs(pages)
        stale = [s for s, spec in self.pages.items() if new.get(s) != spec]
        await _cancel([self._tasks.pop(s) for s in stale if s in self._tasks])
        for service in stale:
            self.latest.pop(service, None)
        self.pages = new
        if self._running:
            for service in new:
                self._spawn(service)

    async def poll(self, service: str) -> VendorStatus:
        """Fetch one page now, record it and return it. Never raises (but CancelledError)."""
        try:
            spec = self.pages[service]
            status = await fetch(self.client, spec.url, self.timeout, spec.max_bytes or self.max_bytes, spec)
        except Exception as exc:  # a bug here must not kill the task
            log.exception("status page poll for %s failed", service)
            status = unknown(f"internal error: {type(exc).__name__}")
        self._record(service, status)
        return status

    def _record(self, service: str, status: VendorStatus) -> None:
        previous = self.latest.get(service)
        self.latest[service] = (time.time(), status)
        if previous is None or previous[1].overall != status.overall:
            was = previous[1].overall if previous is not None else "none"
            why = f" ({status.detail})" if status.overall == "unknown" and status.detail else ""
            log.info("vendor status of %s: %s -> %s%s", service, was, status.overall, why)
        if self.on_update is not None:
            try:
                self.on_update(service, status)
            except Exception:
                log.exception("status page on_update for %s failed", service)

    def _spawn(self, service: str) -> None:
        task = self._tasks.get(service)
        if task is None or task.done():
            self._tasks[service] = asyncio.get_running_loop().create_task(
                self._run(service), name=f"aipulse-statuspage-{service}"
            )

    async def _run(self, service: str) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.poll(service)
            due += self.interval
            now = loop.time()
            if due < now:  # the poll overran its slot: go again now, don't catch up
                due = now
            await asyncio.sleep(due - now)


def _specs(pages: Mapping[str, str | PageSpec]) -> dict[str, PageSpec]:
    return {s: p if isinstance(p, PageSpec) else PageSpec(p) for s, p in pages.items()}


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:  # a cancelled task ends in CancelledError, which gather returns, not raises
        await asyncio.gather(*tasks, return_exceptions=True)
