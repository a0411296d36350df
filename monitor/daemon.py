"""The daemon: wires config, scheduler, probes, live state and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from monitor import server
from monitor.config import Config
from monitor.live import LiveState
from monitor.metrics import make_registry
from monitor.probes import Prober
from monitor.result import ProbeResult
from monitor.scheduler import Scheduler

log = logging.getLogger("aipulse")


class Daemon:
    """One running aipulse. `run()` until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.live = LiveState()
        self.registry = make_registry(self.live, config.location)
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        prober = Prober(cfg.secrets)
        self.live.set_checks(cfg.checks)
        scheduler = Scheduler(
            prober.run, self.on_result,
            max_in_flight=cfg.max_in_flight, per_host_rate=cfg.per_host_rate,
            on_lag=self.live.scheduler_lag.observe, on_missed=self._on_missed,
        )
        self._runner = await server.start(
            server.make_app(self.live, self.registry), cfg.listen_host, cfg.listen_port
        )
        self.port = server.bound_port(self._runner)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            scheduler.set_checks(cfg.checks)
            self.live.ready = True
            log.info("aipulse started: %d checks in %d services, listening on %s:%d",
                     len(cfg.checks), len(cfg.services), cfg.listen_host, self.port)
            await self._stop.wait()
            log.info("stopping")
        finally:
            await scheduler.stop()
            await self._runner.cleanup()
            await prober.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def on_result(self, result: ProbeResult) -> None:
        stats = self.live.checks.get((result.service, result.check))
        before = stats.last if stats is not None else None
        self.live.record(result)
        # One line per change of outcome, not per probe.
        if before is None or before.reason != result.reason:
            name = f"{result.service}/{result.check}"
            if result.success:
                if before is not None:
                    log.info("%s is ok again (was %s)", name, before.reason)
            else:
                log.warning("%s failed: %s: %s", name, result.reason, result.detail)

    def _on_missed(self, n: int) -> None:
        self.live.missed_intervals += n
