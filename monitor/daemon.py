"""The daemon: wires config, scheduler, probes, pipeline, store, notifier and server,
and applies a new config live (SIGHUP or POST /-/reload).

Lifecycle (`Daemon.run`): signals are handled first (a SIGHUP or SIGTERM that came
while aipulse was starting up is acted on once it is up, see monitor.early); then
each part starts and registers how it stops in one exit stack (monitor.lifecycle.
Shutdown), so they stop in the reverse order within one deadline: SIGTERM ends the
daemon within `stop_within` seconds under any load. Reloads coalesce: at most one
runs and one waits. What the daemon is made of comes in through its constructor: the
config, the clock every recorded time comes from, and receivers of window events
beside the configured notifications (the demo's feed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any

import stamina

from monitor import early, logs, server, shard, statuspage, systemd, vendorlog
from monitor import loop as event_loop
from monitor.announce import Publisher
from monitor.availability import WINDOWS
from monitor.clock import SteadyClock, stamped
from monitor.config import Config, ConfigError, database_path, load_file
from monitor.connectivity import CanaryProber
from monitor.delivery import Notifications, TargetNotifier
from monitor.lifecycle import Coalesced, Shutdown
from monitor.listener import DEFAULT_MAX_CONNECTIONS, connection_budget, raise_nofile_limit
from monitor.live import LiveState
from monitor.metrics import make_registry
from monitor.notify import Notifier
from monitor.outage import State, WindowClosed, WindowOpened
from monitor.pipeline import Pipeline, restart_gap_events
from monitor.probes import Prober
from monitor.redact import Redactor
from monitor.scheduler import Scheduler
from monitor.store import StorageError, Store
from monitor.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger("aipulse")

HEARTBEAT_EVERY = 5.0  # seconds; after a crash, the gap starts at most this much early
STOP_WITHIN = 4.0  # seconds from SIGTERM to every part stopped (systemd waits TimeoutStopSec=)
RESTART_ONLY = ("listen_host", "listen_port", "location", "storage_path", "web_config")


class _Fanout:
    """Window events to the configured notifications and to the caller's receivers."""

    def __init__(self, *receivers: Publisher) -> None:
        self.receivers = receivers

    def publish(self, event: WindowOpened | WindowClosed) -> None:
        for receiver in self.receivers:
            receiver.publish(event)


class Daemon:
    """One running aipulse. `run()` until `stop()` (or SIGTERM/SIGINT); `reload()`
    (or SIGHUP) applies the config file again."""

    def __init__(self, config: Config, overrides: dict[str, Any] | None = None, *,
                 lifecycle: bool = False, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 clock: SteadyClock | None = None, receivers: Sequence[Publisher] = (),
                 stop_within: float = STOP_WITHIN) -> None:
        self.config = self._select(config)  # only the checks of this instance's shard
        self.overrides = overrides or {}  # from the command line; they win on reload too
        self.lifecycle = lifecycle  # --web.enable-lifecycle: POST /-/reload allowed
        self.max_connections = max_connections  # --web.max-connections
        self.clock = clock or SteadyClock()  # every time the daemon records comes from here
        self.receivers = tuple(receivers)  # of window events, once stored (beside notify:)
        self.stop_within = stop_within
        self._nofile = 0
        self._status_sent: str | None = None  # the last STATUS= told to systemd
        self.db_path = database_path(config.storage_path)
        self.live = LiveState(clock=self.clock.now)
        self.registry = make_registry(self.live, config.location)
        self.port: int | None = None
        self._stop = asyncio.Event()
        self._started = False
        self._hup_while_starting = False
        self._reloads: Coalesced[str | None] = Coalesced(self._reload_now)
        self._tasks: set[asyncio.Task[Any]] = set()  # background work (heartbeat, watchdog, reloads)
        self._vendor_writes: set[asyncio.Task[None]] = set()
        self.sd = systemd.SystemdNotifier()  # no-op unless started by systemd (NOTIFY_SOCKET)
        self._served: server.Served | None = None
        self._vendor_logged: dict[str, vendorlog.VendorSnapshot] = {}  # last stored, per service

    def stop(self) -> None:
        self._stop.set()

    @property
    def reloads(self) -> int:
        """Reloads run so far (requests that came while one ran share the next one)."""
        return self._reloads.runs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with Shutdown(self.stop_within) as down:
            self._handle_signals(loop, down)
            held = early.take()  # what came before the loop handled signals
            if signal.SIGTERM in held or signal.SIGINT in held:
                log.info("a stop signal came while starting: stopping once started")
                self.stop()
            self._hup_while_starting |= signal.SIGHUP in held
            await self._start(down)
            self._started = True
            down.on_exit("reloads", self._reloads.cancel)  # (first to stop: parts are about to go)
            if self._hup_while_starting:
                log.info("a SIGHUP came while starting: reloading the config now")
                self._spawn(self.reload())
            await self._stop.wait()
            log.info("stopping")
            self.sd.stopping()

    def _handle_signals(self, loop: asyncio.AbstractEventLoop, down: Shutdown) -> None:
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self._hup}
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals
                continue
            down.on_exit(f"{sig.name} handler", lambda sig=sig: loop.remove_signal_handler(sig))

    def _hup(self) -> None:
        if self._started:
            self._spawn(self.reload())
        else:  # the parts a reload touches are not all there yet
            self._hup_while_starting = True

    async def _start(self, down: Shutdown) -> None:
        """Start every part; each registers how it stops (they stop in reverse order)."""
        cfg = self.config
        logs.redact_with(logs.config_redactor(cfg))
        web_config = load_web_config(cfg.web_config) if cfg.web_config else WebConfig()
        self._nofile = raise_nofile_limit()
        for note in cfg.notes():
            log.warning("%s", note)
        self.prober = Prober(cfg.secrets)
        down.on_exit("probes", self.prober.aclose)
        self.store = store = Store(self.db_path, cfg.results_retention, clock=self.clock)
        now = self.clock.now()
        history = store.open(since=now - WINDOWS["30d"])
        down.on_exit("history", self._close_store)
        self.notifications = Notifications(self._make_notifier(cfg), TargetNotifier(cfg, self.live))
        down.on_exit("notifications", lambda: self.notifications.aclose(timeout=1.0), at_most=1.5)
        publisher = _Fanout(self.notifications, *self.receivers) if self.receivers else self.notifications
        self.pipeline = pipeline = Pipeline(cfg, self.live, store, publisher)
        orphans = pipeline.restore(history.open_windows, history.windows, history.transitions,
                                   history.gaps, history.first_seen, last_seen=history.heartbeat or now,
                                   since=now - WINDOWS["30d"])
        self.notifications.targets.restore()  # windows open at the restart, not yet announced
        await pipeline.commit([*orphans, *restart_gap_events(history.gaps, history.heartbeat, now)])
        if history.open_windows:
            log.info("resuming %d open windows", len(history.open_windows))
        pipeline.start()
        down.on_exit("pipeline", lambda: pipeline.stop(timeout=max(0.1, down.left() - 1.5)))
        self._spawn(self._heartbeat(store), down, "heartbeat")
        self._spawn(systemd.watchdog(notifier=self.sd), down, "watchdog")  # WatchdogSec=, from the loop
        app = server.make_app(self.live, self.registry, self.db_path, self.reload, web_config,
                              lifecycle=self.lifecycle)
        self._served = served = await server.start(app, cfg.listen_host, cfg.listen_port,
                                                   max_connections=self._connection_cap(cfg))
        down.on_exit("server", served.cleanup)
        self.port = server.bound_port(served)
        vendor_client = statuspage.new_client()
        down.on_exit("vendor pages' client", vendor_client.aclose)
        self.poller = statuspage.StatusPagePoller(self._vendor_pages(cfg), vendor_client,
                                                  interval=cfg.status_page_interval,
                                                  on_update=self._vendor_update)
        down.on_exit("vendor writes", lambda: asyncio.gather(*self._vendor_writes, return_exceptions=True))
        down.on_exit("vendor pages", self.poller.stop)
        self.scheduler = Scheduler(
            stamped(self.prober.run, self.clock), pipeline.handle,
            max_in_flight=cfg.max_in_flight, per_host_rate=cfg.per_host_rate,
            on_lag=self.live.scheduler_lag.observe, on_missed=self._on_missed,
        )
        # Canaries have a scheduler of their own: they never wait behind the services' probes.
        self.canaries = Scheduler(
            stamped(CanaryProber(self.prober).run, self.clock), pipeline.handle,
            max_in_flight=max(1, len(cfg.connectivity)), per_host_rate=cfg.per_host_rate)
        down.on_exit("canaries", self.canaries.stop)
        down.on_exit("probing", self.scheduler.stop)
        self.scheduler.set_checks(cfg.checks)
        self.canaries.set_checks([c.check for c in cfg.connectivity])
        self.poller.start()
        self.live.ready = True
        _settle_gc()
        log.info("aipulse started: %d checks in %d services, listening on %s://%s:%d, history in %s "
                 "(%s)", len(cfg.checks), len(cfg.services),
                 "https" if web_config.ssl_context else "http", cfg.listen_host, self.port, self.db_path,
                 event_loop.name())
        self._log_coverage(cfg)
        self._status_sent = self._sd_status()
        self.sd.ready(self._status_sent)  # after /readyz turned 200

    async def _close_store(self) -> None:
        self.store.heartbeat(self.clock.now())
        await self.store.close()

    def _spawn(self, work: Coroutine[Any, Any, Any], down: Shutdown | None = None, name: str = "",
               into: set[asyncio.Task[Any]] | None = None) -> None:
        """Run `work` as a task the daemon keeps (in `into`, else with its background
        tasks); with `down`, cancelled when the daemon stops."""
        tasks = self._tasks if into is None else into
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if down is not None:
            down.on_exit(name, task.cancel)

    async def reload(self) -> str | None:
        """Read the config file again and apply it atomically. On any error the running
        config stays, the error is logged and returned, and the reload gauge goes to 0.
        Calls while a reload runs share the next one (see monitor.lifecycle)."""
        return await self._reloads.request()

    async def _reload_now(self) -> str | None:
        self.sd.reloading()
        try:
            return await self._reload()
        finally:
            self._status_sent = self._sd_status()
            self.sd.ready(self._status_sent)  # READY=1 ends the reload, failed or not

    async def _reload(self) -> str | None:
        old = self.config
        try:
            # Parsed in a thread: 10,000 checks take a second or two, and probes go on meanwhile.
            parsed = await asyncio.to_thread(load_file, old.path)
            new = self._select(dataclasses.replace(parsed, **self.overrides))
            web_config = load_web_config(new.web_config) if new.web_config else WebConfig()
            _keeps_running_checks(old, new)
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
        await self.pipeline.commit(self.pipeline.configure(new, now=self.clock.now()))
        self.scheduler.set_checks(new.checks)
        self.canaries.set_checks([c.check for c in new.connectivity])
        await self.poller.update(self._vendor_pages(new))
        if new.webhooks != old.webhooks:
            await self.notifications.set_webhooks(self._make_notifier(new))
        self.notifications.targets.configure(new)
        if self._served is not None:
            self._served.reconfigure(None if "web_config" in changed else web_config,  # from the next request
                                     max_connections=self._connection_cap(new))
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

    @staticmethod
    def _make_notifier(cfg: Config) -> Notifier | None:
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
            store.heartbeat(self.clock.now())
            # (not the STATUS= that READY=1 just carried: whether this runs first after the
            # start depends on which awaits of the start happened to suspend)
            if self.live.ready and (text := self._sd_status()) != self._status_sent:
                self._status_sent = text
                self.sd.status(text)
            self.live.storage_errors = store.errors
            self.live.storage_replaced = store.replaced
            await asyncio.sleep(HEARTBEAT_EVERY)

    def _vendor_update(self, service: str, vendor: statuspage.VendorStatus) -> None:
        now = self.clock.now()
        if (sstats := self.live.services.get(service)) is not None:
            sstats.vendor_update(vendor, now)
        event = vendorlog.snapshot(service, vendor, now, self._vendor_logged.get(service))
        if event is not None:  # the vendor's incidents, for /history (stored off the loop)
            self._vendor_logged[service] = event
            self._spawn(self._store_vendor(event), into=self._vendor_writes)

    async def _store_vendor(self, event: vendorlog.VendorSnapshot) -> None:
        try:
            await self.store.write([event])
        except StorageError as exc:  # the store keeps it queued and retries
            log.debug("storing the vendor snapshot of %s failed: %s", event.service, exc)

    def _on_missed(self, n: int) -> None:
        self.live.missed_intervals += n


def _keeps_running_checks(old: Config, new: Config) -> None:
    """A reload must not drop a running check because a secret it needs cannot be read
    right now (a credential file replaced, an environment without the variable): that
    would close a real outage and open it again as a new window on the next reload.
    Raises ConfigError naming each such check and what it needs (never the value)."""
    running = {c.key for c in old.checks}
    lost = [(s, c, needs) for s, c, needs in new.skipped if (s, c) in running]
    if lost:
        raise ConfigError([f"{old.path}: services.{s}.checks.{c}: running, but it needs {needs}, which "
                           "cannot be read now; the reload is refused as a whole (no check, window or "
                           "setting changes)" for s, c, needs in lost])


def _settle_gc() -> None:
    """Move the objects alive now (configs, check tasks, per-check state: about 100
    per check) out of the cyclic garbage collector's view. They live as long as their
    config, and a full collection walking them all blocked the event loop for
    80-300 ms at 10,000 checks (BENCHMARKS.md). Reference counting still frees them
    when a reload replaces them; only a reference cycle among them would outlive it."""
    gc.freeze()
