"""The daemon: wires config, scheduler, probes, pipeline, store, notifier and server,
and applies a new config live (SIGHUP or POST /-/reload)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import time
from collections import Counter
from typing import Any

import stamina

from monitor import logs, server, shard, statuspage, systemd, vendorlog
from monitor import loop as event_loop
from monitor.availability import WINDOWS
from monitor.config import Config, ConfigError, database_path, load_file
from monitor.connectivity import CanaryProber
from monitor.delivery import Notifications, TargetNotifier
from monitor.listener import DEFAULT_MAX_CONNECTIONS, connection_budget, raise_nofile_limit
from monitor.live import LiveState
from monitor.metrics import make_registry
from monitor.notify import Notifier
from monitor.outage import State
from monitor.pipeline import Pipeline, restart_gap_events
from monitor.probes import Prober
from monitor.redact import Redactor
from monitor.scheduler import Scheduler
from monitor.store import StorageError, Store
from monitor.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger("aipulse")

HEARTBEAT_EVERY = 5.0  # seconds; after a crash, the gap starts at most this much early
RESTART_ONLY = ("listen_host", "listen_port", "location", "storage_path", "web_config")


class Daemon:
    """One running aipulse. `run()` until `stop()` (or SIGTERM/SIGINT); `reload()`
    (or SIGHUP) applies the config file again."""

    def __init__(self, config: Config, overrides: dict[str, Any] | None = None, *,
                 lifecycle: bool = False, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.config = self._select(config)  # only the checks of this instance's shard
        self.overrides = overrides or {}  # from the command line; they win on reload too
        self.lifecycle = lifecycle  # --web.enable-lifecycle: POST /-/reload allowed
        self.max_connections = max_connections  # --web.max-connections
        self._nofile = 0
        self._status_sent: str | None = None  # the last STATUS= told to systemd
        self.db_path = database_path(config.storage_path)
        self.live = LiveState()
        self.registry = make_registry(self.live, config.location)
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.sd = systemd.SystemdNotifier()  # no-op unless started by systemd (NOTIFY_SOCKET)
        self._served: server.Served | None = None
        self._vendor_logged: dict[str, vendorlog.VendorSnapshot] = {}  # last stored, per service
        self._vendor_writes: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        cfg = self.config
        logs.redact_with(logs.config_redactor(cfg))
        web_config = load_web_config(cfg.web_config) if cfg.web_config else WebConfig()
        self._nofile = raise_nofile_limit()
        for note in cfg.notes():
            log.warning("%s", note)
        self.prober = Prober(cfg.secrets)
        self.store = store = Store(self.db_path, cfg.results_retention)
        now = time.time()
        history = store.open(since=now - WINDOWS["30d"])
        self.notifications = Notifications(self._make_notifier(cfg), TargetNotifier(cfg, self.live))
        self.pipeline = pipeline = Pipeline(cfg, self.live, store, self.notifications)
        orphans = pipeline.restore(history.open_windows, history.windows, history.transitions,
                                   history.gaps, history.first_seen, last_seen=history.heartbeat or now,
                                   since=now - WINDOWS["30d"])
        self.notifications.targets.restore()  # windows open at the restart, not yet announced
        await pipeline.commit([*orphans, *restart_gap_events(history.gaps, history.heartbeat, now)])
        if history.open_windows:
            log.info("resuming %d open windows", len(history.open_windows))
        self.scheduler = scheduler = Scheduler(
            self.prober.run, pipeline.handle,
            max_in_flight=cfg.max_in_flight, per_host_rate=cfg.per_host_rate,
            on_lag=self.live.scheduler_lag.observe, on_missed=self._on_missed,
        )
        # Canaries have a scheduler of their own: they never wait behind the services' probes.
        self.canaries = canaries = Scheduler(
            CanaryProber(self.prober).run, pipeline.handle,
            max_in_flight=max(1, len(cfg.connectivity)), per_host_rate=cfg.per_host_rate)
        pipeline.start()
        heartbeat = asyncio.create_task(self._heartbeat(store))
        watchdog = asyncio.create_task(systemd.watchdog(notifier=self.sd))  # WatchdogSec=, from the loop
        vendor_client = statuspage.new_client()
        self.poller = poller = statuspage.StatusPagePoller(
            self._vendor_pages(cfg), vendor_client, interval=cfg.status_page_interval,
            on_update=self._vendor_update)
        loop = asyncio.get_running_loop()
        try:
            app = server.make_app(self.live, self.registry, self.db_path, self.reload, web_config,
                                  lifecycle=self.lifecycle)
            self._served = await server.start(app, cfg.listen_host, cfg.listen_port,
                                              max_connections=self._connection_cap(cfg))
            self.port = server.bound_port(self._served)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
            scheduler.set_checks(cfg.checks)
            canaries.set_checks([c.check for c in cfg.connectivity])
            poller.start()
            self.live.ready = True
            _settle_gc()
            log.info("aipulse started: %d checks in %d services, listening on %s://%s:%d, history in %s "
                     "(%s)", len(cfg.checks), len(cfg.services),
                     "https" if web_config.ssl_context else "http", cfg.listen_host, self.port, self.db_path,
                     event_loop.name())
            self._log_coverage(cfg)
            self._status_sent = self._sd_status()
            self.sd.ready(self._status_sent)  # after /readyz turned 200
            await self._stop.wait()
            log.info("stopping")
        finally:
            self.sd.stopping()
            await scheduler.stop()
            await canaries.stop()
            await poller.stop()
            await asyncio.gather(*self._vendor_writes, return_exceptions=True)
            await vendor_client.aclose()
            await pipeline.stop()
            heartbeat.cancel()
            if self._served is not None:
                await self._served.cleanup()
            if pipeline.notifier is not None:
                await pipeline.notifier.aclose(timeout=2.0)  # type: ignore[attr-defined]
            store.heartbeat(time.time())
            await store.close()
            await self.prober.aclose()
            watchdog.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def reload(self) -> str | None:
        """Read the config file again and apply it atomically. On any error the running
        config stays, the error is logged and returned, and the reload gauge goes to 0."""
        async with self._reload_lock:
            self.sd.reloading()
            try:
                return await self._reload()
            finally:
                self._status_sent = self._sd_status()
                self.sd.ready(self._status_sent)  # READY=1 ends the reload, failed or not

    async def _reload(self) -> str | None:
        """The body of reload(), under its lock."""
        old = self.config
        try:
            # Parsed in a thread: 10,000 checks take a second or two, and probes go on meanwhile.
            parsed = await asyncio.to_thread(load_file, old.path)
            new = self._select(dataclasses.replace(parsed, **self.overrides))
            web_config = load_web_config(new.web_config) if new.web_config else WebConfig()
        except (ConfigError, WebConfigError) as exc:
            self.live.reload_ok = False
            log.error("reload failed, keeping the running config:\n%s", exc)
            return str(exc)
        changed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
        if changed:
            log.warning("%s changed: takes effect after a restart", ", ".join(changed))
            new = dataclasses.replace(new, **{k: getattr(old, k) for k in changed})
        for note in new.notes():
            log.warning("%s", note)
        logs.redact_with(logs.config_redactor(new))
        self.prober.redact = Redactor(new.secrets)
        await self.pipeline.commit(self.pipeline.configure(new))
        self.scheduler.set_checks(new.checks)
        self.canaries.set_checks([c.check for c in new.connectivity])
        await self.poller.update(self._vendor_pages(new))
        if new.webhooks != old.webhooks:
            if self.notifications.webhooks is not None:
                await self.notifications.webhooks.aclose(timeout=2.0)
            self.notifications.webhooks = self._make_notifier(new)
        self.notifications.targets.configure(new)
        if self._served is not None:
            if "web_config" not in changed:
                self._served.security.apply(web_config)  # users, certificates: from the next request on
            self._served.listener.max_connections = self._connection_cap(new)
        self.config = new
        self.live.reload_ok = True
        _settle_gc()
        log.info("config reloaded: %d checks in %d services", len(new.checks), len(new.services))
        self._log_coverage(new)
        return None

    def _connection_cap(self, cfg: Config) -> int:
        """--web.max-connections, less what the probes may need of the descriptors."""
        cap = connection_budget(self.max_connections, self._nofile, cfg.max_in_flight)
        if cap < self.max_connections:
            log.warning("serving at most %d connections, not %d (--web.max-connections): the limit on open "
                        "files is %d and %d probes may run at once (limits.max_in_flight); raise "
                        "LimitNOFILE= or ulimit -n", cap, self.max_connections, self._nofile,
                        cfg.max_in_flight)
        return cap

    @staticmethod
    def _log_coverage(cfg: Config) -> None:
        """How the monitor tells it is offline, and a warning when it watches nothing."""
        if cfg.connectivity:
            log.info("connectivity: %d canaries; the monitor is offline while every one fails",
                     len(cfg.connectivity))
        else:
            log.info("no connectivity canaries: the monitor is taken to be offline when every host "
                     "fails with dns/connect (see `connectivity:` in the bundled config)")
        if not cfg.checks:
            log.warning("no active check (%d skipped): aipulse watches nothing; /readyz answers 503",
                        len(cfg.skipped))

    @staticmethod
    def _select(config: Config) -> Config:
        """The checks this instance probes: with `--shard I/N`, those of shard I. On a
        reload the same filter applies to the new file, so the pipeline sees a check
        that left the shard as removed (its open window closes, its series vanish) and
        one that joined as new (it starts at its own slot); a restart with another
        shard closes the windows of checks that moved away the same way."""
        selected = shard.select(config)
        if config.shard != (1, 1):
            log.info("shard %s: probing %d of the %d checks in the config", shard.format_shard(config.shard),
                     len(selected.checks), len(config.checks))
            if not selected.checks:
                log.warning("shard %s has none of the %d checks in the config: this instance probes nothing",
                            shard.format_shard(config.shard), len(config.checks))
        return selected

    def _make_notifier(self, cfg: Config) -> Notifier | None:
        if not cfg.webhooks:
            return None
        # The notifier logs one line per delivery given up; stamina's own per-retry
        # warnings would repeat it for every attempt.
        stamina.instrumentation.set_on_retry_hooks([])
        # The log lines' redactor: it knows the webhook URLs too (a receiver's error can
        # echo the path); a narrower one first would leave the tail of a token behind.
        return Notifier(cfg.webhooks, cfg.location, logs.config_redactor(cfg),
                        titles={s.id: s.title for s in cfg.services})

    @staticmethod
    def _vendor_pages(cfg: Config) -> dict[str, statuspage.PageSpec]:
        return {s.id: s.status_page_spec for s in cfg.services if s.status_page_spec is not None}

    def _sd_status(self) -> str:
        states = Counter(stats.state for stats in self.live.checks.values())
        return systemd.status_line(len(self.config.checks), len(self.config.services),
                                   down=states[State.DOWN], degraded=states[State.DEGRADED],
                                   listen=f"{self.config.listen_host}:{self.port}")

    async def _heartbeat(self, store: Store) -> None:
        while True:
            store.heartbeat(time.time())
            # (not the STATUS= that READY=1 just carried: whether this runs first after the
            # start depends on which awaits of the start happened to suspend)
            if self.live.ready and (text := self._sd_status()) != self._status_sent:
                self._status_sent = text
                self.sd.status(text)
            self.live.storage_errors = store.errors
            await asyncio.sleep(HEARTBEAT_EVERY)

    def _vendor_update(self, service: str, vendor: statuspage.VendorStatus) -> None:
        now = time.time()
        if (sstats := self.live.services.get(service)) is not None:
            sstats.vendor_update(vendor, now)
        event = vendorlog.snapshot(service, vendor, now, self._vendor_logged.get(service))
        if event is not None:  # the vendor's incidents, for /history (stored off the loop)
            self._vendor_logged[service] = event
            task = asyncio.get_running_loop().create_task(self._store_vendor(event))
            self._vendor_writes.add(task)
            task.add_done_callback(self._vendor_writes.discard)

    async def _store_vendor(self, event: vendorlog.VendorSnapshot) -> None:
        try:
            await self.store.write([event])
        except StorageError as exc:  # the store keeps it queued and retries
            log.debug("storing the vendor snapshot of %s failed: %s", event.service, exc)

    def _on_missed(self, n: int) -> None:
        self.live.missed_intervals += n


def _settle_gc() -> None:
    """Move the objects alive now (configs, check tasks, per-check state: about 100
    per check) out of the cyclic garbage collector's view. They live as long as their
    config, and a full collection walking them all blocked the event loop for
    80-300 ms at 10,000 checks (BENCHMARKS.md). Reference counting still frees them
    when a reload replaces them; only a reference cycle among them would outlive it."""
    gc.freeze()
