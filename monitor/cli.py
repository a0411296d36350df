"""Command line: `aipulse run | check-config | once | outages | notify-test | demo | --version`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from monitor import __version__, early, logs
from monitor import loop as event_loop
from monitor.config import (
    LABEL_VALUE,
    Config,
    ConfigError,
    database_path,
    default_path,
    load_file,
    parse_listen,
)
from monitor.listener import DEFAULT_MAX_CONNECTIONS
from monitor.logs import printable
from monitor.probes import Prober
from monitor.result import ProbeResult
from monitor.scheduler import Scheduler
from monitor.store import StorageError
from monitor.units import format_duration, parse_time, rfc3339
from monitor.webconfig import WebConfigError, load_web_config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":  # only the daemon acts on signals held while starting (monitor.early)
        early.release()
    logs.setup(args.log_level, args.log_format)
    if args.command is None:
        _parser().print_help()
        return 2
    return int(args.func(args))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aipulse", description="Availability monitor for AI services.")
    p.add_argument("--version", action="version", version=f"aipulse {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=list(logs.FORMATS),
                   help="text (default; journald priorities when stderr is the journal) or json lines")
    sub = p.add_subparsers(dest="command")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, default=None,
                        help="config file (default ./config.yaml, else /etc/aipulse/config.yaml)")

    run = sub.add_parser("run", help="run the daemon")
    with_config(run)
    run.add_argument("--listen", help="HOST:PORT to serve /metrics on (default 127.0.0.1:9478)")
    run.add_argument("--db", help="SQLite database (default: storage.path, else "
                     "$STATE_DIRECTORY/aipulse.db, else ./aipulse.db)")
    run.add_argument("--location", help="value of the location label on every series")
    run.add_argument("--shard", metavar="I/N", help="probe only shard I of N (1-based) of the checks; "
                     "N instances of one location, same config, split it without overlap")
    run.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                     help="allow POST /-/reload (as Prometheus); off by default: SIGHUP always reloads")
    run.add_argument("--web.max-connections", dest="max_connections", type=_positive_int,
                     default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                     help=f"most connections served at once (default {DEFAULT_MAX_CONNECTIONS}, as "
                     "Prometheus); at the cap the longest idle one is closed to let a new one in")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate the config and exit")
    with_config(check)
    check.set_defaults(func=cmd_check_config)

    once = sub.add_parser("once", help="probe every check once and print the results")
    with_config(once)
    once.add_argument("--json", action="store_true", help="print JSON instead of a table")
    once.set_defaults(func=cmd_once)

    outages = sub.add_parser("outages", help="list outage windows from the history database")
    outages.add_argument("--db", help="SQLite database (default: as aipulse run)")
    outages.add_argument("--since", default="7d", help="RFC 3339 time or an age like 24h, 7d (default 7d)")
    outages.add_argument("--until", help="RFC 3339 time or an age")
    outages.add_argument("--service", help="only this service")
    outages.add_argument("--check", help="only this check")
    outages.add_argument("--limit", type=_positive_int, default=1000,
                         help="at most this many windows, the newest (default 1000); says when more matched")
    outages.add_argument("--json", action="store_true", help="print JSON instead of a table")
    outages.set_defaults(func=cmd_outages)

    ntest = sub.add_parser("notify-test", help="send a test message to each notify target (or one) and "
                           "print what each answered")
    with_config(ntest)
    ntest.add_argument("target", nargs="?", help="only this target (its name)")
    ntest.set_defaults(func=cmd_notify_test)

    demo = sub.add_parser("demo", help="offline demo: watch a simulated AI provider replay DeepSeek's "
                          "January 2025 incident")
    demo.add_argument("--duration", type=float, default=180.0,
                      help="wall-clock seconds the demo runs; the incident is fitted into it (default 180)")
    demo.add_argument("--speed", type=float, default=1.0,
                      help="how fast the simulated world runs: probes every 1/SPEED s (default 1, max 20)")
    demo.add_argument("--listen", default="127.0.0.1:9478",
                      help="HOST:PORT for the daemon's status page and /metrics (port 0: any free port)")
    demo.add_argument("--verbose", action="store_true", help="also show the daemon's own log lines")
    demo.set_defaults(func=cmd_demo)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _load(args: argparse.Namespace) -> Config | None:
    path = args.config or default_path()
    try:
        cfg = load_file(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    logs.redact_with(logs.config_redactor(cfg))  # what this command logs stays clean too
    return cfg


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 1
    skipped = f", {len(cfg.skipped)} skipped" if cfg.skipped else ""
    canaries = f", {len(cfg.connectivity)} connectivity canaries" if cfg.connectivity else ""
    if not cfg.checks:
        for line in cfg.notes():
            print(line, file=sys.stderr)
        print(f"{cfg.path}: no check left to run ({len(cfg.skipped)} skipped): aipulse would watch "
              "nothing; set what they need, or remove them", file=sys.stderr)
        return 1
    pages = sum(1 for s in cfg.services if s.status_page)
    print(f"{cfg.path}: ok ({len(cfg.services)} services, {pages} with a status page, "
          f"{len(cfg.checks)} checks{skipped}{canaries})")
    for line in cfg.notes():
        print(line)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a whole number: "{text}"') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon

    cfg = _load(args)
    if cfg is None:
        return 1
    overrides: dict[str, object] = {}
    if args.listen:
        try:
            overrides["listen_host"], overrides["listen_port"] = parse_listen(args.listen)
        except ValueError as exc:
            print(f"--listen: {exc}", file=sys.stderr)
            return 2
    if args.location:
        if not LABEL_VALUE.fullmatch(args.location):
            print(f'--location: invalid "{args.location}" (use letters, digits, _ . : -)', file=sys.stderr)
            return 2
        overrides["location"] = args.location
    if args.db:
        overrides["storage_path"] = args.db
    if args.shard is not None:
        from monitor.shard import parse_shard

        try:
            overrides["shard"] = parse_shard(args.shard)
        except ValueError as exc:
            print(f"--shard: {exc}", file=sys.stderr)
            return 2
    cfg = dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]
    if cfg.web_config:
        try:  # an empty, unreadable or wrong web config must not start an open server
            load_web_config(cfg.web_config)
        except WebConfigError as exc:
            print(f"web_config: {exc}", file=sys.stderr)
            return 2
    try:
        factory = event_loop.loop_factory()  # asyncio's, or uvloop if AIPULSE_LOOP says so
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ImportError:
        print("AIPULSE_LOOP=uvloop, but uvloop is not installed (pip install 'aipulse[uvloop]')",
              file=sys.stderr)
        return 2
    _return_freed_memory()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(Daemon(cfg, overrides, lifecycle=args.enable_lifecycle,
                              max_connections=args.max_connections).run())
    except WebConfigError as exc:  # it changed between the check above and the start
        logging.getLogger("aipulse").error("cannot start: %s", exc)
        return 2
    except (OSError, StorageError) as exc:  # port taken, database unusable, ...
        logging.getLogger("aipulse").error("cannot start: %s", exc)
        return 1
    return 0


# How long a thread running Python code (a reload's config parse, the status page's
# template, the store's writer) keeps the GIL while the event loop waits for it.
# CPython's 5 ms is paid by the loop after every system call that released the GIL (a
# probe's connect, send, recv, close): with 333 probes/s and a reload parsing 10,000
# checks, the loop fell ~2 s behind and /healthz waited for the whole parse (2.2 s).
# At 0.1 ms: /healthz 0.6-0.7 s, scheduler lag p50 190 -> 3.8 ms (BENCHMARKS.md).
# Costs nothing while only one thread wants the GIL.
GIL_SWITCH_INTERVAL = 0.0001


def _return_freed_memory() -> None:
    """glibc raises its mmap threshold after a large buffer is freed (a /metrics body of
    30 MB at 10,000 checks), and from then on keeps such buffers in the heap: ~40 MB
    of RSS never returned. A fixed threshold (and two malloc arenas for our few
    threads) keeps the daemon's RSS at what it uses (BENCHMARKS.md). The environment
    (MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX) still wins; other C libraries: no-op."""
    import ctypes
    import os

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(-8, 2)  # M_ARENA_MAX


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import DemoError, run_demo

    try:
        return asyncio.run(run_demo(args.duration, args.speed, args.listen, verbose=args.verbose))
    except DemoError as exc:
        print(f"aipulse demo: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


def cmd_once(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 1
    results = asyncio.run(_probe_all(cfg))
    if args.json:
        print(json.dumps([_result_json(r) for r in results], indent=2))
    else:
        print(format_table(results))
    return 0 if all(r.success for r in results) else 1


async def _probe_all(cfg: Config) -> list[ProbeResult]:
    prober = Prober(cfg.secrets)
    try:
        scheduler = Scheduler(prober.run, _ignore, max_in_flight=cfg.max_in_flight,
                              per_host_rate=cfg.per_host_rate)
        return await scheduler.run_once(cfg.checks)
    finally:
        await prober.aclose()


async def _ignore(result: ProbeResult) -> None:
    pass


def _result_json(r: ProbeResult) -> dict[str, object]:
    return {
        "service": r.service, "check": r.check, "success": r.success, "reason": r.reason.value,
        "degraded": r.degraded, "status_code": r.status_code, "duration_seconds": round(r.duration, 6),
        "phases": {k: round(v, 6) for k, v in r.phases.items()}, "redirects": r.redirects,
        "cert_expiry": r.cert_expiry, "detail": r.detail,
    }


def cmd_outages(args: argparse.Namespace) -> int:
    from monitor.api import window_json
    from monitor.store import StorageError, query_windows

    path = database_path(args.db)
    if not Path(path).exists():
        print(f"{path}: no such database (aipulse run creates it; --db PATH to choose)", file=sys.stderr)
        return 1
    now = time.time()
    try:
        since = parse_time(args.since, now)
        until = parse_time(args.until, now) if args.until else None
    except ValueError as exc:
        print(f"aipulse outages: {exc}", file=sys.stderr)
        return 2
    try:
        windows = query_windows(path, service=args.service, check=args.check, since=since, until=until,
                                limit=args.limit + 1)  # one more: to say that more matched
    except StorageError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    truncated = len(windows) > args.limit
    rows = [window_json(w, now) for w in windows[:args.limit]]
    if args.json:
        print(json.dumps({"outages": rows, "truncated": truncated}, indent=2))
        return 0
    table = [("SERVICE", "CHECK", "KIND", "SEVERITY", "START", "END", "DURATION", "REASON")]
    for r in rows:
        table.append((r["service"], r["check"] or "-", r["kind"], r["severity"], r["start"],
                      r["end"] or "open", format_duration(r["duration_seconds"]), r["reason"]))
    print(_columns(table))
    if not rows:
        print(f"no outage windows since {rfc3339(since)}")
    if truncated:
        print(f"truncated: more than {args.limit} windows matched; these are the newest {args.limit} "
              "(--limit N for more, --since or --service for fewer)")
    return 0


def cmd_notify_test(args: argparse.Namespace) -> int:
    from monitor.delivery import describe, send_tests

    cfg = _load(args)
    if cfg is None:
        return 1
    if not cfg.targets:
        print(f"{cfg.path}: no notify.targets to test", file=sys.stderr)
        return 1
    names = [t.name for t in cfg.targets]
    if args.target is not None and args.target not in names:
        print(f'aipulse notify-test: no target named "{_printable(args.target)}" in {cfg.path} '
              f"(targets: {', '.join(names)})", file=sys.stderr)
        return 2
    results = send_tests(cfg, None if args.target is None else [args.target])
    table = [("TARGET", "RESULT", "TIME", "ANSWER")]
    for target, outcome in results:
        table.append((describe(target), "sent" if outcome.ok else "failed", f"{outcome.elapsed:.2f}s",
                      outcome.detail or "-"))
    print(_columns(table))
    return 0 if all(outcome.ok for _, outcome in results) else 1


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def _columns(rows: list[tuple[str, ...]]) -> str:
    # Cells quote what targets and notification services sent: control characters would
    # reach the operator's terminal (colours, cursor moves, a retitled window) unless escaped.
    rows = [tuple(printable(c).replace("\n", "\\n").replace("\t", "\\t") for c in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def format_table(results: list[ProbeResult]) -> str:
    rows = [("SERVICE", "CHECK", "RESULT", "HTTP", "TIME", "DETAIL")]
    for r in results:
        outcome = "degraded" if r.degraded else r.reason.value
        rows.append((r.service, r.check, outcome, str(r.status_code or "-"),
                     f"{r.duration * 1000:.0f}ms", printable(r.detail.replace("\n", " "))[:80]))
    return _columns(rows)


if __name__ == "__main__":
    sys.exit(main())
