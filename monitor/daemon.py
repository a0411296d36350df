"""The daemon: wires config, scheduler, probes, pipeline, store, notifier and server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import stamina
from aiohttp import web

from monitor import server, statuspage
from monitor.availability import WINDOWS
from monitor.config import Config, database_path
from monitor.live import LiveState
from monitor.metrics import make_registry
from monitor.notify import Notifier
from monitor.pipeline import Pipeline, restart_gap_events
from monitor.probes import Prober
from monitor.scheduler import Scheduler
from monitor.store import Store

log = logging.getLogger("aipulse")

HEARTBEAT_EVERY = 5.0  # seconds; after a crash, the gap starts at most this much early


class Daemon:
    """One running aipulse. `run()` until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.db_path = database_path(config.storage_path)
        self.live = LiveState()
        self.registry = make_registry(self.live, config.location)
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        for note in cfg.skipped_notes():
            log.warning("%s", note)
        prober = Prober(cfg.secrets)
        store = Store(self.db_path, cfg.results_retention)
        now = time.time()
        history = store.open(since=now - WINDOWS["30d"])
        notifier = None
        if cfg.webhooks:
            # The notifier logs one line per delivery given up; stamina's own per-retry
            # warnings would repeat it for every attempt.
            stamina.instrumentation.set_on_retry_hooks([])
            notifier = Notifier(cfg.webhooks, cfg.location, prober.redact,
                                titles={s.id: s.title for s in cfg.services})
        pipeline = Pipeline(cfg, self.live, store, notifier)
        orphans = pipeline.restore(history.open_windows, history.windows, history.transitions,
                                   history.gaps, history.first_seen, last_seen=history.heartbeat or now)
        await pipeline.commit([*orphans, *restart_gap_events(history.gaps, history.heartbeat, now)])
        if history.open_windows:
            log.info("resuming %d open windows", len(history.open_windows))
        scheduler = Scheduler(
            prober.run, pipeline.handle,
            max_in_flight=cfg.max_in_flight, per_host_rate=cfg.per_host_rate,
            on_lag=self.live.scheduler_lag.observe, on_missed=self._on_missed,
        )
        pipeline.start()
        heartbeat = asyncio.create_task(self._heartbeat(store))
        vendor_pages = {s.id: s.status_page for s in cfg.services if s.status_page}
        vendor_client = statuspage.new_client()
        poller = statuspage.StatusPagePoller(vendor_pages, vendor_client, interval=cfg.status_page_interval,
                                             on_update=self._vendor_update)
        loop = asyncio.get_running_loop()
        try:
            self._runner = await server.start(
                server.make_app(self.live, self.registry, self.db_path), cfg.listen_host, cfg.listen_port
            )
            self.port = server.bound_port(self._runner)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            scheduler.set_checks(cfg.checks)
            poller.start()
            self.live.ready = True
            log.info("aipulse started: %d checks in %d services, listening on %s:%d, history in %s",
                     len(cfg.checks), len(cfg.services), cfg.listen_host, self.port, self.db_path)
            await self._stop.wait()
            log.info("stopping")
        finally:
            await scheduler.stop()
            await poller.stop()
            await vendor_client.aclose()
            await pipeline.stop()
            heartbeat.cancel()
            if self._runner is not None:
                await self._runner.cleanup()
            if notifier is not None:
                await notifier.aclose(timeout=2.0)
            store.heartbeat(time.time())
            await store.close()
            await prober.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _heartbeat(self, store: Store) -> None:
        while True:
            store.heartbeat(time.time())
            self.live.storage_errors = store.errors
            await asyncio.sleep(HEARTBEAT_EVERY)

    def _vendor_update(self, service: str, vendor: statuspage.VendorStatus) -> None:
        if (sstats := self.live.services.get(service)) is not None:
            sstats.vendor_update(vendor, time.time())

    def _on_missed(self, n: int) -> None:
        self.live.missed_intervals += n
