"""Configuration: parse and validate (pure; the only I/O is reading the file).

Strict: unknown keys are errors, defaults are merged in one place (`_effective_check`),
regexes and JSONPaths are compiled here, and every error names file, line and key path::

    config.yaml:12: services.deepseek.checks.api.interval: invalid duration "30x" (...)
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import json as jsonlib
import math
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import idna
import jsonpath

from monitor.maintenance import Maintenance, parse_every, parse_start
from monitor.redact import Redactor
from monitor.units import parse_duration, parse_size
from monitor.vendorformats import FORMATS, PageSpec
from monitor.yamlsrc import KeyPath, LocatedError, Source, format_path, load

ID = re.compile(r"[a-z0-9_-]+")
LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
KINDS = ("http", "flow", "stream")
STREAM_FORMATS = ("openai", "openai_responses", "anthropic", "gemini")
IP_PROTOCOLS = ("auto", "ip4", "ip6")
TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_STATUS_CLASS = re.compile(r"([1-5])xx")
_STATUS_RANGE = re.compile(r"(\d{3})(?:-(\d{3}))?")  # 200-299, or "200" (e.g. from ${VAR})

DEFAULT_LISTEN = "127.0.0.1:9478"
CHECK_DEFAULTS: dict[str, Any] = {
    "kind": "http",
    "method": "GET",
    "interval": "30s",
    "timeout": "10s",
    "open_after": 3,
    "close_after": 2,
    "max_body_bytes": "1MiB",
    "critical": True,
    "follow_redirects": True,
    "ip_protocol": "auto",
}
CHECK_KEYS = frozenset(
    {"kind", "url", "method", "headers", "body", "json", "interval", "timeout",
     "open_after", "close_after", "max_body_bytes", "critical", "expect",
     "steps", "format", "idle_timeout", "follow_redirects", "ip_protocol", "proxy_url", "tls"}
)
TLS_KEYS = frozenset({"ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify"})
EXPECT_KEYS = frozenset(
    {"status", "body_contains", "body_regex", "json", "headers", "max_latency", "cert_min_days",
     "max_ttft", "max_stall", "body_not_contains", "body_not_regex"}
)
STEP_KEYS = frozenset({"name", "url", "method", "headers", "body", "json", "expect", "extract", "always_run"})


class ConfigError(Exception):
    """One or more config errors, each `file:line: key.path: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class JsonAssertion:
    path: str
    compiled: Any  # jsonpath.JSONPath
    expected: Any


@dataclass(frozen=True, slots=True)
class Expect:
    status: frozenset[int] | None = None  # None: any 2xx
    body_contains: tuple[str, ...] = ()
    body_regex: re.Pattern[str] | None = None
    json: tuple[JsonAssertion, ...] = ()
    headers: tuple[tuple[str, re.Pattern[str]], ...] = ()
    max_latency: float | None = None
    cert_min_days: float | None = None
    max_ttft: float | None = None  # stream: no content token by then -> timeout
    max_stall: float | None = None  # stream: a longer silence between output events -> degraded
    body_not_contains: tuple[str, ...] = ()
    body_not_regex: re.Pattern[str] | None = None

    def accepts(self, status: int) -> bool:
        return 200 <= status < 300 if self.status is None else status in self.status

    @property
    def needs_body(self) -> bool:
        return bool(self.body_contains or self.body_regex or self.json or self.body_not_contains
                    or self.body_not_regex)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """A check's `tls:` options (as blackbox_exporter's tls_config). Paths are absolute."""

    ca_file: str | None = None  # trust only this CA bundle (PEM) instead of the public roots
    cert_file: str | None = None  # client certificate (PEM)...
    key_file: str | None = None  # ... and its key, unless cert_file holds both
    server_name: str | None = None  # SNI and the name the certificate must match
    insecure_skip_verify: bool = False

    @property
    def needs_context(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.insecure_skip_verify)


@dataclass(frozen=True, slots=True)
class Extraction:
    """Take a value from a flow step's response into `{{var}}`."""

    var: str
    source: str  # "json" | "header" | "cookie" | "regex"
    expr: str  # as written (JSONPath, header or cookie name, regex)
    compiled: Any = None  # jsonpath.JSONPath or re.Pattern


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One request of a `kind: flow` check. url, headers and body may hold {{var}}."""

    name: str
    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    expect: Expect = field(default_factory=Expect)
    extract: tuple[Extraction, ...] = ()
    always_run: bool = False


@dataclass(frozen=True, slots=True)
class CheckConfig:
    service: str
    id: str
    url: str
    kind: str = "http"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    interval: float = 30.0
    timeout: float = 10.0
    open_after: int = 3
    close_after: int = 2
    max_body_bytes: int = 1024 * 1024
    critical: bool = True
    expect: Expect = field(default_factory=Expect)
    steps: tuple[FlowStep, ...] = ()  # kind: flow
    format: str | None = None  # kind: stream: openai | anthropic | gemini
    idle_timeout: float | None = None  # kind: stream: longest wait between content tokens
    follow_redirects: bool = True
    ip_protocol: str = "auto"  # auto (race IPv6 and IPv4, RFC 8305) | ip4 | ip6
    proxy_url: str | None = None  # http://[user:pass@]host:port (CONNECT for https targets)
    tls: TLSConfig | None = None
    line: int = field(default=0, compare=False)  # where it was written; not part of what it is

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.id)

    @property
    def host(self) -> str:
        return _hostname(self.url or (self.steps[0].url if self.steps else ""))


@functools.lru_cache(maxsize=65536)
def _hostname(url: str) -> str:
    """The host of a check's URL (cached: read for every probe and every result)."""
    return urlsplit(url).hostname or ""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    id: str
    title: str
    checks: tuple[CheckConfig, ...]
    status_page: str | None = None  # its URL
    maintenance: tuple[Maintenance, ...] = ()
    status_page_spec: PageSpec | None = None  # URL, format, components (monitor.vendorformats)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where outage windows are announced (notify.webhooks[])."""

    url: str
    format: str = "json"  # "json" | "slack"
    secret: str | None = None  # HMAC-SHA256 key for the X-Aipulse-Signature header
    timeout: float = 5.0  # per attempt
    max_attempts: int = 8
    retry_initial: float = 1.0  # first backoff; doubles (with jitter) up to 5 minutes


TARGET_KINDS = ("down", "degraded", "closed")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """Where people hear of outages (notify.targets[]): an Apprise URL and what to send there."""

    name: str  # the `target` label of aipulse_notifications_total
    url: str = field(repr=False)  # an Apprise URL; may hold tokens: never logged or shown
    services: frozenset[str] | None = None  # None: every service
    kinds: frozenset[str] = frozenset(TARGET_KINDS)
    min_duration: float = 0.0  # a window shorter than this is never announced
    max_attempts: int = 5
    retry_initial: float = 2.0  # first backoff; doubles (with jitter) up to a minute


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 9478
    location: str = "local"
    shard: tuple[int, int] = (1, 1)  # (I, N) from `--shard I/N`: probe only shard I of N (monitor.shard)
    storage_path: str | None = None  # None: the daemon picks ($STATE_DIRECTORY or ./)
    results_retention: float = 14 * 86400
    max_in_flight: int = 1000
    per_host_rate: float = 20.0
    services: tuple[ServiceConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    targets: tuple[TargetConfig, ...] = ()  # notify.targets: Apprise URLs
    group_wait: float = 30.0  # notify.group_wait: one service's events within it make one message
    public_url: str | None = None  # where people reach our status page (links in messages)
    status_page_interval: float = 120.0  # how often vendor status pages are polled
    web_config: str | None = None  # exporter-toolkit web config (TLS, basic auth) for our endpoints
    secrets: frozenset[str] = frozenset()
    # checks left out because this machine lacks a key: (service, check, "${VAR}")
    skipped: tuple[tuple[str, str, str], ...] = ()  # expanded variable values; never print these

    @property
    def checks(self) -> list[CheckConfig]:
        return [c for s in self.services for c in s.checks]

    def notes(self) -> list[str]:
        """Warnings about a valid config: one line per check left out for a missing key,
        and per host whose checks ask for more probes a second than `per_host_rate`
        lets start (they would queue behind the limit and start ever later)."""
        out = [f"skipping {service}/{check}: it needs {needs}, which is not available on this machine"
               for service, check, needs in self.skipped]
        demand: dict[str, float] = {}
        for c in self.checks:
            if c.interval:
                demand[c.host] = demand.get(c.host, 0.0) + max(1, len(c.steps)) / c.interval
        out += [f"host {host}: its checks ask for {rate:.3g} requests/s, above limits.per_host_rate "
                f"({self.per_host_rate:g}/s); they will start late" for host, rate in demand.items()
                if rate > self.per_host_rate]
        return out


def default_path() -> Path:
    """`./config.yaml`, else `/etc/aipulse/config.yaml`."""
    local = Path("config.yaml")
    return local if local.exists() else Path("/etc/aipulse/config.yaml")


def load_file(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text"]) from None
    with _no_cyclic_gc():
        return parse(text, str(path), env)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Parsing 10,000 checks allocates millions of objects (the YAML nodes, then the
    config) and none of them in reference cycles; the cyclic collector ran four full
    collections meanwhile (45-190 ms each, holding the GIL: the daemon's event loop
    stood still while a reload parsed in its thread). Off for the parse: half the
    time, and the loop's longest stall 13 ms instead of 190 (BENCHMARKS.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(text: str, name: str = "config.yaml", env: Mapping[str, str] | None = None) -> Config:
    try:
        src = load(text, name, env)
    except LocatedError as exc:
        where = f"{format_path(exc.path)}: " if exc.path else ""
        raise ConfigError([one_line(f"{name}:{exc.line}: {where}{exc.message}")]) from None
    return _Validator(src).config()


# Characters that would end or garble a line of `check-config` output: C0 controls
# (tab aside), DEL and what str.splitlines() also breaks at. Keys and values are user text.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with line breaks and control characters escaped (\\n, \\x1b, ...), so that
    every error stays one `file:line: message` line."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'invalid listen address "{text}" (use HOST:PORT, e.g. 127.0.0.1:9478)')
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Validator:
    def __init__(self, src: Source) -> None:
        self.src = src
        self.errors: list[str] = []
        self.redact = Redactor(frozenset(src.secrets))

    def err(self, path: KeyPath, message: str) -> None:
        where = f"{format_path(path)}: " if path else ""
        message = self.redact(message)  # e.g. an invalid URL with ?key=${API_KEY} in it
        self.errors.append(one_line(f"{self.src.name}:{self.src.line(path)}: {where}{message}"))

    def field(self, data: Mapping[str, Any], key: str, path: KeyPath, parse: Callable[[Any], Any],
              default: Any = None) -> Any:
        """Parse data[key] with `parse`; a ValueError becomes an error at that key."""
        if key not in data:
            return default
        try:
            return parse(data[key])
        except (ValueError, TypeError) as exc:
            self.err((*path, key), str(exc))
            return default

    def mapping(self, value: Any, path: KeyPath, allowed: frozenset[str] | None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.err(path, f"must be a mapping, got {_kind(value)}")
            return {}
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.err((*path, key), f'unknown key "{key}" (known: {", ".join(sorted(allowed))})')
        return value

    def config(self) -> Config:
        top_keys = frozenset({"listen", "location", "storage", "limits", "defaults", "services", "notify",
                              "status_page_interval", "web_config", "public_url"})
        data = self.mapping(self.src.data, (), top_keys)
        host, port = self.field(data, "listen", (), lambda v: parse_listen(_str(v)),
                                parse_listen(DEFAULT_LISTEN))
        location = self.field(data, "location", (), _label_value, "local")
        storage = self.mapping(data.get("storage"), ("storage",), frozenset({"path", "results_retention"}))
        limits = self.mapping(data.get("limits"), ("limits",), frozenset({"max_in_flight", "per_host_rate"}))
        defaults = self.mapping(data.get("defaults"), ("defaults",), CHECK_KEYS - {"url"})
        storage_path = self.field(storage, "path", ("storage",), _str)
        results_retention = self.field(storage, "results_retention", ("storage",), _duration, 14 * 86400.0)
        max_in_flight = self.field(limits, "max_in_flight", ("limits",), _positive_int, 1000)
        per_host_rate = self.field(limits, "per_host_rate", ("limits",), _positive_number, 20.0)
        services = self.services(data, defaults)
        webhooks = self.webhooks(data)
        targets = self.targets(data, {s.id for s in services})
        group_wait = self.field(self.mapping(data.get("notify"), ("notify",), None), "group_wait",
                                ("notify",), _non_negative_duration, 30.0)
        public_url = self.field(data, "public_url", (), lambda v: _url(v).rstrip("/"))
        status_page_interval = self.field(data, "status_page_interval", (), _duration, 120.0)
        web_config = self.field(data, "web_config", (), lambda v: str(Path(self.src.name).parent / _str(v)))
        if not self.errors and not any(s.checks for s in services) and not self.src.missing:
            self.err(("services",), "no checks configured (add at least one service with one check)")
        if self.errors:
            # An error in `defaults:` is found once per check that inherits it: say it once.
            raise ConfigError(list(dict.fromkeys(self.errors)))
        return Config(
            path=self.src.name,
            listen_host=host,
            listen_port=port,
            location=location,
            storage_path=storage_path,
            results_retention=results_retention,
            max_in_flight=max_in_flight,
            per_host_rate=per_host_rate,
            services=tuple(services),
            webhooks=webhooks,
            targets=targets,
            group_wait=group_wait,
            public_url=public_url,
            status_page_interval=status_page_interval,
            web_config=web_config,
            secrets=frozenset(self.src.secrets).union(*(
                sensitive_values(r.url, r.headers) for c in (c for s in services for c in s.checks)
                for r in (c, *c.steps))),
            skipped=tuple((s, c, needs) for (s, c), needs in self.src.missing.items()),
        )

    def services(self, data: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[ServiceConfig]:
        raw = self.mapping(data.get("services"), ("services",), None)
        out = []
        for sid, sdata in raw.items():
            path: KeyPath = ("services", sid)
            if not ID.fullmatch(sid):
                self.err(path, f'invalid service id "{sid}" (use lowercase letters, digits, _ and -)')
            sdata = self.mapping(sdata, path, frozenset({"title", "status_page", "maintenance", "checks"}))
            checks_raw = self.mapping(sdata.get("checks"), (*path, "checks"), None)
            if not checks_raw:
                where = (*path, "checks") if "checks" in sdata else path
                self.err(where, "no checks (a service needs at least one)")
            checks = []
            for cid, cdata in checks_raw.items():
                cpath: KeyPath = (*path, "checks", cid)
                if not ID.fullmatch(cid):
                    self.err(cpath, f'invalid check id "{cid}" (use lowercase letters, digits, _ and -)')
                check = self.check(sid, cid, cdata, defaults, cpath)
                if check is not None and (sid, cid) not in self.src.missing:
                    checks.append(check)
            page = self.status_page(sdata.get("status_page"), (*path, "status_page"))
            out.append(ServiceConfig(
                id=sid,
                title=self.field(sdata, "title", path, _str, sid),
                status_page=None if page is None else page.url,
                maintenance=self.maintenance(sdata.get("maintenance"), (*path, "maintenance")),
                checks=tuple(checks),
                status_page_spec=page,
            ))
        return out

    def status_page(self, raw: Any, path: KeyPath) -> PageSpec | None:
        """`status_page: URL`, or `{url, format, components, max_body_bytes}` when
        auto-detection cannot tell the format or only some components matter."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            url = self.field({"status_page": raw}, "status_page", path[:-1], _url)
            return None if url is None else PageSpec(url)
        data = self.mapping(raw, path, frozenset({"url", "format", "components", "max_body_bytes"}))
        if "url" not in data:
            self.err(path, 'missing required key "url"')
            return None
        url = self.field(data, "url", path, _url)
        fmt = self.field(data, "format", path, _choice(FORMATS), "auto")
        components = self.field(data, "components", path, _str_list, ())
        max_bytes = self.field(data, "max_body_bytes", path, parse_size)
        return None if url is None else PageSpec(url, fmt, components, max_bytes)

    def maintenance(self, raw: Any, path: KeyPath) -> tuple[Maintenance, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.err(path, f"must be a list of maintenance windows, got {_kind(raw)}")
            return ()
        out = []
        for i, item in enumerate(raw):
            ipath: KeyPath = (*path, i)
            item = self.mapping(item, ipath, frozenset({"start", "every", "duration"}))
            if not item:
                continue
            if ("start" in item) == ("every" in item):
                self.err(ipath, 'set either "start" (one-off) or "every" (recurring)')
                continue
            if "duration" not in item:
                self.err(ipath, 'missing required key "duration"')
                continue
            duration = self.field(item, "duration", ipath, _duration)
            start = self.field(item, "start", ipath, parse_start)
            every = self.field(item, "every", ipath, parse_every)
            if duration is None or (start is None and every is None):
                continue
            if every is not None:
                out.append(Maintenance(duration, weekdays=every[0], minute_of_day=every[1]))
            else:
                out.append(Maintenance(duration, start=start))
        return tuple(out)

    def webhooks(self, data: Mapping[str, Any]) -> tuple[WebhookConfig, ...]:
        notify = self.mapping(data.get("notify"), ("notify",),
                              frozenset({"webhooks", "targets", "group_wait"}))
        raw = notify.get("webhooks")
        if raw is None:
            return ()
        path: KeyPath = ("notify", "webhooks")
        if not isinstance(raw, list):
            self.err(path, f"must be a list of webhooks, got {_kind(raw)}")
            return ()
        keys = frozenset({"url", "format", "secret", "timeout", "max_attempts", "retry_initial"})
        out = []
        for i, item in enumerate(raw):
            ipath: KeyPath = (*path, i)
            item = self.mapping(item, ipath, keys)
            if "url" not in item:
                self.err(ipath, 'missing required key "url"')
                continue
            out.append(WebhookConfig(
                url=self.field(item, "url", ipath, _url),
                format=self.field(item, "format", ipath, _choice(("json", "slack")), "json"),
                secret=self.field(item, "secret", ipath, _str),
                timeout=self.field(item, "timeout", ipath, _duration, 5.0),
                max_attempts=self.field(item, "max_attempts", ipath, _positive_int, 8),
                retry_initial=self.field(item, "retry_initial", ipath, _duration, 1.0),
            ))
        return tuple(out)

    def targets(self, data: Mapping[str, Any], services: set[str]) -> tuple[TargetConfig, ...]:
        notify = data.get("notify")
        raw = notify.get("targets") if isinstance(notify, dict) else None
        if raw is None:
            return ()
        path: KeyPath = ("notify", "targets")
        if not isinstance(raw, list):
            self.err(path, f"must be a list of targets, got {_kind(raw)}")
            return ()
        keys = frozenset({"name", "url", "services", "kinds", "min_duration", "max_attempts",
                          "retry_initial"})
        out: list[TargetConfig] = []
        for i, item in enumerate(raw):
            ipath: KeyPath = (*path, i)
            item = self.mapping(item, ipath, keys)
            if not item:
                continue
            missing = [k for k in ("name", "url") if k not in item]
            if missing:
                self.err(ipath, f'missing required key "{missing[0]}"')
                continue
            name = self.field(item, "name", ipath, _target_name)
            if name is not None and any(t.name == name for t in out):
                self.err((*ipath, "name"), f'duplicate target name "{name}"')
            url = self.field(item, "url", ipath, _apprise_url)
            wanted = self.field(item, "services", ipath, _id_set)
            for sid in sorted(wanted or ()):
                if sid not in services:
                    self.err((*ipath, "services"), f'unknown service "{sid}"')
            kinds = self.field(item, "kinds", ipath, _target_kinds, frozenset(TARGET_KINDS))
            if name is None or url is None:
                continue
            out.append(TargetConfig(
                name=name, url=url, services=wanted, kinds=kinds,
                min_duration=self.field(item, "min_duration", ipath, _non_negative_duration, 0.0),
                max_attempts=self.field(item, "max_attempts", ipath, _positive_int, 5),
                retry_initial=self.field(item, "retry_initial", ipath, _duration, 2.0),
            ))
        return tuple(out)

    def check(self, sid: str, cid: str, cdata: Any, defaults: Mapping[str, Any],
              path: KeyPath) -> CheckConfig | None:
        cdata = self.mapping(cdata, path, CHECK_KEYS)
        before = len(self.errors)
        # Defaults are merged here and nowhere else: built-in < `defaults:` < the check.
        merged: dict[str, Any] = {**CHECK_DEFAULTS, **defaults, **cdata}
        d_expect, c_expect = defaults.get("expect"), cdata.get("expect")
        if isinstance(d_expect, dict) and isinstance(c_expect, dict):
            merged["expect"] = {**d_expect, **c_expect}  # expect merges key by key

        def at(key: str) -> KeyPath:
            # Errors in a value that came from `defaults:` point at `defaults:`.
            return path if key in cdata or key not in defaults else ("defaults",)

        def get(key: str, parse: Callable[[Any], Any]) -> Any:
            return self.field(merged, key, at(key), parse)

        kind = get("kind", _choice(KINDS))
        if kind == "stream" and "method" not in cdata and "method" not in defaults:
            merged["method"] = "POST"  # a streaming completion is a POST
        steps: tuple[FlowStep, ...] = ()
        if kind == "flow":
            for key in ("url", "body", "json", "format", "idle_timeout"):
                if key in cdata:
                    self.err((*path, key), f'"{key}" does not apply to kind flow (set it per step)')
            steps = self.steps(cdata.get("steps"), (*path, "steps"))
            url, method, headers, body = "", "GET", (), None
        else:
            if "url" not in cdata:
                self.err(path, 'missing required key "url"')
            if "steps" in cdata:
                self.err((*path, "steps"), '"steps" needs kind: flow')
            url, method, headers, body = self.request(merged, at, with_url="url" in cdata)
        fmt = None
        if kind == "stream":
            if "format" not in merged:
                self.err(path, f'missing required key "format" ({", ".join(STREAM_FORMATS)})')
            fmt = get("format", _choice(STREAM_FORMATS))
            for key in ("body_contains", "body_regex", "json"):
                if key in (merged.get("expect") or {}):
                    self.err((*at("expect"), "expect", key),
                             f'"{key}" does not apply to kind stream (the body is generated text)')
        elif "format" in cdata or "idle_timeout" in cdata:
            key = "format" if "format" in cdata else "idle_timeout"
            self.err((*path, key), f'"{key}" needs kind: stream')
        interval = get("interval", _duration)
        timeout = get("timeout", _duration)
        if interval and timeout and timeout > interval:
            culprit = "interval" if "interval" in cdata and "timeout" not in cdata else "timeout"
            self.err((*at(culprit), culprit),
                     f"timeout ({merged['timeout']}) must not exceed interval ({merged['interval']})")
        expect_path = (*at("expect"), "expect")

        def expect_at(key: str) -> KeyPath:
            # `expect` merges key by key, so each key is blamed where it was written.
            if isinstance(c_expect, dict) and isinstance(d_expect, dict) and key not in c_expect:
                return ("defaults", "expect")
            return expect_path

        expect = self.expect(merged.get("expect"), expect_path, expect_at)
        if expect is not None and expect.max_stall is not None and kind != "stream":
            self.err((*expect_at("max_stall"), "max_stall"), '"max_stall" needs kind: stream')
        check = CheckConfig(
            service=sid, id=cid, url=url or "", kind=kind, method=method, headers=headers,
            body=body, interval=interval, timeout=timeout,
            open_after=get("open_after", _positive_int), close_after=get("close_after", _positive_int),
            max_body_bytes=get("max_body_bytes", parse_size), critical=get("critical", _bool),
            expect=expect or Expect(), steps=steps, format=fmt,
            idle_timeout=get("idle_timeout", _duration) if kind == "stream" else None,
            follow_redirects=get("follow_redirects", _bool),
            ip_protocol=get("ip_protocol", _choice(IP_PROTOCOLS)),
            proxy_url=get("proxy_url", _proxy_url),
            tls=self.tls(merged.get("tls"), (*at("tls"), "tls")) if "tls" in merged else None,
            line=self.src.line(path),
        )
        return check if len(self.errors) == before else None

    def request(self, data: Mapping[str, Any], at: Callable[[str], KeyPath], with_url: bool = True,
                templates: bool = False) -> tuple[str, str, tuple[tuple[str, str], ...], bytes | None]:
        """url, method, headers and body of a check or a flow step."""
        def get(key: str, parse: Callable[[Any], Any]) -> Any:
            return self.field(data, key, at(key), parse)

        url = (get("url", _template_url if templates else _url) or "") if with_url else ""
        method = get("method", lambda v: _choice(tuple(sorted(METHODS)))(_str(v).upper())) or "GET"
        headers = get("headers", _headers) or ()
        body = get("body", lambda v: _str(v).encode())
        if "json" in data:
            if "body" in data:
                self.err((*at("json"), "json"), 'set either "body" or "json", not both')
            body = get("json", lambda v: jsonlib.dumps(v).encode())
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers = (*headers, ("Content-Type", "application/json"))
        return url, method, headers, body

    def steps(self, raw: Any, path: KeyPath) -> tuple[FlowStep, ...]:
        if not isinstance(raw, list) or not raw:
            self.err(path, "a flow needs a list of steps (each with a name and a url)")
            return ()
        out: list[FlowStep] = []
        known: set[str] = set()  # variables extracted by earlier steps
        names: set[str] = set()
        for i, item in enumerate(raw):
            spath: KeyPath = (*path, i)
            data = self.mapping(item, spath, STEP_KEYS)
            if not data:
                continue
            name = self.field(data, "name", spath, _str)
            if name is None:
                self.err(spath, 'missing required key "name"')
            elif not ID.fullmatch(name):
                self.err((*spath, "name"),
                         f'invalid step name "{name}" (use lowercase letters, digits, _ and -)')
            elif name in names:
                self.err((*spath, "name"), f'duplicate step name "{name}"')
            names.add(name or "")
            if "url" not in data:
                self.err(spath, 'missing required key "url"')
            def here(key: str, spath: KeyPath = spath) -> KeyPath:
                return spath

            url, method, headers, body = self.request(data, here, with_url="url" in data, templates=True)
            for where, text in [("url", url), *(("headers", v) for _, v in headers),
                                ("body", (body or b"").decode(errors="replace"))]:
                for var in TEMPLATE.findall(text):
                    if var not in known:
                        self.err((*spath, where), f"{{{{{var}}}}} is not extracted by an earlier step")
            extract = self.extractions(data.get("extract"), (*spath, "extract"))
            known.update(e.var for e in extract)
            expect_path: KeyPath = (*spath, "expect")
            step_expect = self.expect(data.get("expect"), expect_path, lambda key, p=expect_path: p)
            out.append(FlowStep(
                name=name or "", url=url, method=method, headers=headers, body=body,
                expect=step_expect or Expect(), extract=extract,
                always_run=self.field(data, "always_run", spath, _bool, False),
            ))
        return tuple(out)

    def extractions(self, raw: Any, path: KeyPath) -> tuple[Extraction, ...]:
        out = []
        for var, spec in self.mapping(raw, path, None).items():
            vpath: KeyPath = (*path, var)
            if not _VAR_NAME.fullmatch(var):
                self.err(vpath, f'invalid variable name "{var}" (letters, digits and _)')
                continue
            try:
                out.append(_extraction(var, _str(spec)))
            except ValueError as exc:
                self.err(vpath, str(exc))
        return tuple(out)

    def tls(self, raw: Any, path: KeyPath) -> TLSConfig | None:
        data = self.mapping(raw, path, TLS_KEYS)
        base = Path(self.src.name).parent
        files = {key: self.field(data, key, path, lambda v: str(base / _str(v)))
                 for key in ("ca_file", "cert_file", "key_file")}
        if files["key_file"] and not files["cert_file"]:
            self.err((*path, "key_file"), '"key_file" needs "cert_file"')
        tls = TLSConfig(**files, server_name=self.field(data, "server_name", path, _str),
                        insecure_skip_verify=self.field(data, "insecure_skip_verify", path, _bool, False))
        # The files are read at every start and reload: say now what is wrong with them.
        context = ssl.create_default_context()
        for key, read in (("ca_file", lambda: context.load_verify_locations(tls.ca_file)),
                          ("cert_file", lambda: context.load_cert_chain(tls.cert_file or "", tls.key_file))):
            if files[key]:
                try:
                    read()
                except (OSError, ssl.SSLError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    self.err((*path, key), f'cannot use "{data[key]}": {why.splitlines()[0]}')
        return tls

    def expect(self, raw: Any, path: KeyPath, at: Callable[[str], KeyPath]) -> Expect | None:
        data = self.mapping(raw, path, None)
        for key in data:
            if key not in EXPECT_KEYS:
                self.err((*at(key), key), f'unknown key "{key}" (known: {", ".join(sorted(EXPECT_KEYS))})')
        json_assertions = []
        for jpath, expected in self.mapping(data.get("json"), (*at("json"), "json"), None).items():
            try:
                json_assertions.append(JsonAssertion(jpath, jsonpath.compile(jpath), expected))
            except jsonpath.JSONPathError as exc:
                first = str(exc).splitlines()[0]
                self.err((*at("json"), "json", jpath), f"invalid JSONPath: {first}")
        contains = self.field(data, "body_contains", at("body_contains"), _str_list, ())
        return Expect(
            status=self.field(data, "status", at("status"), _status_set),
            body_contains=contains,
            body_regex=self.field(data, "body_regex", at("body_regex"), _regex),
            json=tuple(json_assertions),
            headers=self.field(data, "headers", at("headers"), _header_regexes, ()),
            max_latency=self.field(data, "max_latency", at("max_latency"), _duration),
            cert_min_days=self.field(data, "cert_min_days", at("cert_min_days"), _positive_number),
            max_ttft=self.field(data, "max_ttft", at("max_ttft"), _duration),
            max_stall=self.field(data, "max_stall", at("max_stall"), _duration),
            body_not_contains=self.field(data, "body_not_contains", at("body_not_contains"), _str_list, ()),
            body_not_regex=self.field(data, "body_not_regex", at("body_not_regex"), _regex),
        )


# Field parsers: each takes the raw YAML value and returns the typed value or raises
# ValueError with the message the user sees.

def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _str(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise ValueError(f"must be a string, got {_kind(value)}")
    return str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_kind(value)}")
    return value


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be a duration like 30s, got {_kind(value)}")
    if isinstance(value, (int, float)):
        raise ValueError(f"invalid duration {value} (add a unit: {value}s)")
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f'invalid duration "{value}" (must be more than 0)')
    return seconds


def _non_negative_duration(value: Any) -> float:
    """A duration that may be 0 (`0s`: no wait)."""
    if isinstance(value, str) and parse_duration(value) == 0:
        return 0.0
    return _duration(value)


def _target_name(value: Any) -> str:
    text = _str(value)
    if not ID.fullmatch(text):
        raise ValueError(f'invalid target name "{text}" (use lowercase letters, digits, _ and -)')
    return text


def _id_set(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise ValueError("must be a list of service ids")
    return frozenset(_str(v) for v in value)


def _target_kinds(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a list of {', '.join(TARGET_KINDS)}")
    kinds = frozenset(_choice(TARGET_KINDS)(v) for v in value)
    if not kinds & {"down", "degraded"}:
        raise ValueError("closed alone sends nothing: add down and/or degraded")
    return kinds


def _apprise_url(value: Any) -> str:
    """An Apprise URL (mailto://, slack://, ntfy://, json://, ...), checked by Apprise itself."""
    from monitor.apprise_url import check_apprise_url  # Apprise loads only when targets are configured

    text = _str(value)
    check_apprise_url(text)
    return text


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a whole number of at least 1, got {value!r}")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"must be a number above 0, got {value!r}")
    return float(value)


def _label_value(value: Any) -> str:
    text = _str(value)
    if not LABEL_VALUE.fullmatch(text):
        raise ValueError(f'invalid location "{text}" (use letters, digits, _ . : -)')
    return text


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value)
        if text not in options:
            raise ValueError(f'must be one of {", ".join(options)}, got "{text}"')
        return text
    return parse


def _url(value: Any) -> str:
    text = _str(value)
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not 0-65535
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f'invalid URL "{text}" (must be http:// or https:// with a host)')
    host = parts.hostname or ""
    if not host.isascii():
        try:
            idna.encode(host, uts46=True)  # as the probes will send it (IDNA 2008)
        except idna.IDNAError as exc:
            raise ValueError(f'invalid host name "{host}" in URL ({exc})') from None
    return text


def _proxy_url(value: Any) -> str:
    text = _url(value)
    parts = urlsplit(text)
    if parts.scheme != "http" or parts.path not in ("", "/") or parts.query:
        raise ValueError(f'invalid proxy URL "{text}" (use http://[user:password@]host:port)')
    return text


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _template_url(value: Any) -> str:
    """A URL that may hold {{var}}: valid once each {{var}} is replaced by a word."""
    text = _str(value)
    _url(TEMPLATE.sub("x", text))
    return text


def _extraction(var: str, spec: str) -> Extraction:
    """'$.json.path' | 'header:Name' | 'cookie:Name' | 'regex:...' (first group, or the match)."""
    if spec.startswith("$"):
        try:
            return Extraction(var, "json", spec, jsonpath.compile(spec))
        except jsonpath.JSONPathError as exc:
            raise ValueError(f"invalid JSONPath: {str(exc).splitlines()[0]}") from None
    source, sep, rest = spec.partition(":")
    if not sep or source not in ("header", "cookie", "regex") or not rest:
        raise ValueError(f'invalid extract "{spec}" (use $.json.path, header:Name, cookie:Name or regex:...)')
    if source == "regex":
        return Extraction(var, "regex", rest, _regex(rest))
    return Extraction(var, source, rest, rest.lower() if source == "header" else rest)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of header name to value, got {_kind(value)}")
    out = []
    for k, v in value.items():
        text = _str(v)
        if any(c in text for c in "\r\n\0"):  # never echo the value: it may be a key
            raise ValueError(f"header {k}: the value holds a line break or NUL (check the variable)")
        out.append((str(k), text))
    return tuple(out)


_SENSITIVE = re.compile(r"auth|key|token|secret|passw|cookie|signature|sig$|credential", re.IGNORECASE)


def sensitive_values(url: str, headers: tuple[tuple[str, str], ...]) -> set[str]:
    """Values that look like credentials even when written literally: those of headers
    and query parameters whose names say so. Redacted like ${VAR} values."""
    out = {v for k, v in headers if _SENSITIVE.search(k)}
    out |= {v.split(" ", 1)[1] for v in list(out) if " " in v}  # "Bearer sk-..." -> also "sk-..."
    for name, value in parse_qsl(urlsplit(url).query) if "?" in url else ():
        if _SENSITIVE.search(name):
            out.add(value)
    if "@" in url:  # user:password@ is sent as Basic auth: the password and the header's token
        parts = urlsplit(url)
        if parts.password:
            password = unquote(parts.password)
            token = base64.b64encode(f"{unquote(parts.username or '')}:{password}".encode()).decode()
            out |= {parts.password, password, token}
    return {v for v in out if len(v) >= 6}


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(_str(v) for v in value)
    return (_str(value),)


def _regex(value: Any) -> re.Pattern[str]:
    text = _str(value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None
    except (OverflowError, RecursionError) as exc:  # a{4294967296}, ((((...))))
        raise ValueError(f"invalid regex: {exc}") from None


def _header_regexes(value: Any) -> tuple[tuple[str, re.Pattern[str]], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of header name to regex, got {_kind(value)}")
    return tuple((str(k).lower(), _regex(v)) for k, v in value.items())


def _status_set(value: Any) -> frozenset[int]:
    items = value if isinstance(value, list) else [value]
    codes: set[int] = set()
    for item in items:
        text = str(item)
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            codes.add(item)
        elif m := _STATUS_CLASS.fullmatch(text):
            base = int(m.group(1)) * 100
            codes.update(range(base, base + 100))
        elif (m := _STATUS_RANGE.fullmatch(text)) and 100 <= int(m[1]) <= int(m[2] or m[1]) <= 599:
            codes.update(range(int(m[1]), int(m[2] or m[1]) + 1))
        else:
            raise ValueError(f'invalid status "{text}" (use codes 100-599, ranges like 2xx or 200-299)')
    if not codes:
        raise ValueError("must list at least one status")
    return frozenset(codes)


def database_path(configured: str | None, env: Mapping[str, str] | None = None) -> str:
    """Where the SQLite history lives: the configured path (relative paths are under
    $STATE_DIRECTORY when systemd sets it), else $STATE_DIRECTORY/aipulse.db, else
    ./aipulse.db."""
    env = os.environ if env is None else env
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if configured:
        path = Path(configured)
        return str(Path(state_dir) / path if state_dir and not path.is_absolute() else path)
    return str(Path(state_dir or ".") / "aipulse.db")
