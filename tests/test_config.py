"""Config validation, blackbox_exporter style.

Every file in tests/config/invalid/ breaks exactly one rule and is listed in INVALID with
the whole error text the user sees (`file:line: key.path: message`); a file without an
entry fails `test_every_invalid_file_has_an_expected_error`. The rest of the module pins
what valid configs mean: units, variables, defaults merging, request bodies, statuses.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from monitor.config import CheckConfig, Config, ConfigError, load_file, parse
from monitor.vendorformats import PageSpec

INVALID_DIR = Path(__file__).parent / "config" / "invalid"
# The environment the invalid files are read with (variables come from here, not os.environ).
INVALID_ENV = {"API_KEY": "sekrit-value-123"}
# Files that need $CREDENTIALS_DIRECTORY unset; the others get a directory holding only
# `binary-token` (not UTF-8).
NO_CREDENTIALS_DIRECTORY = {"credential-no-directory.yaml"}

# file name -> str(ConfigError), loaded as `load_file(name)` from inside INVALID_DIR.
INVALID: dict[str, str] = {
    'bad-bool.yaml':
        'bad-bool.yaml:6: services.demo.checks.home.critical: must be true or false, got a string',
    'bad-cert-min-days.yaml': (
        'bad-cert-min-days.yaml:6: services.demo.checks.home.expect.cert_min_days: must be a number '
        'above 0, got 0'
    ),
    'bad-check-id.yaml': (
        'bad-check-id.yaml:4: services.demo.checks.home.page: invalid check id "home.page" (use '
        'lowercase letters, digits, _ and -)'
    ),
    'bad-credential-name.yaml': (
        'bad-credential-name.yaml:6: services.demo.checks.home.headers.Authorization: invalid '
        'credential name "../token"'
    ),
    'bad-duration.yaml': (
        'bad-duration.yaml:6: services.demo.checks.home.interval: invalid duration "30x" (use e.g. '
        '500ms, 30s, 5m, 1h, 7d)'
    ),
    'bad-header-regex.yaml': (
        'bad-header-regex.yaml:7: services.demo.checks.home.expect.headers: invalid regex: nothing to '
        'repeat at position 0'
    ),
    'bad-jsonpath.yaml': (
        'bad-jsonpath.yaml:7: services.demo.checks.home.expect.json.$.data[: invalid JSONPath: '
        'unexpected end of query'
    ),
    'bad-kind.yaml': (
        'bad-kind.yaml:6: services.demo.checks.home.kind: must be one of http, flow, stream, got "b'
        'rowser"'
    ),
    'bad-limits.yaml': (
        'bad-limits.yaml:2: limits.max_in_flight: must be a whole number of at least 1, got 0\n'
        'bad-limits.yaml:3: limits.per_host_rate: must be a number above 0, got -5'
    ),
    'bad-listen-port.yaml': (
        'bad-listen-port.yaml:1: listen: invalid listen address "127.0.0.1:70000" (use HOST:PORT, e.g. '
        '127.0.0.1:9478)'
    ),
    'bad-listen.yaml': (
        'bad-listen.yaml:1: listen: invalid listen address "localhost" (use HOST:PORT, e.g. '
        '127.0.0.1:9478)'
    ),
    'bad-location.yaml':
        'bad-location.yaml:1: location: invalid location "eu west 1" (use letters, digits, _ . : -)',
    'bad-max-latency.yaml': (
        'bad-max-latency.yaml:6: services.demo.checks.home.expect.max_latency: invalid duration 2 (add '
        'a unit: 2s)'
    ),
    'bad-method.yaml': (
        'bad-method.yaml:6: services.demo.checks.home.method: must be one of DELETE, GET, HEAD, '
        'OPTIONS, PATCH, POST, PUT, got "FETCH"'
    ),
    'bad-positive-int.yaml': (
        'bad-positive-int.yaml:6: services.demo.checks.home.open_after: must be a whole number of at '
        'least 1, got 0'
    ),
    'bad-regex.yaml': (
        'bad-regex.yaml:6: services.demo.checks.home.expect.body_regex: invalid regex: missing ), '
        'unterminated subpattern at position 0'
    ),
    'bad-retention.yaml': (
        'bad-retention.yaml:3: storage.results_retention: invalid duration "2 weeks" (use e.g. 500ms, '
        '30s, 5m, 1h, 7d)'
    ),
    'bad-service-id.yaml': (
        'bad-service-id.yaml:2: services.DeepSeek: invalid service id "DeepSeek" (use lowercase '
        'letters, digits, _ and -)'
    ),
    'bad-size.yaml': (
        'bad-size.yaml:6: services.demo.checks.home.max_body_bytes: invalid size "1XB" (use e.g. '
        '512KiB, 1MiB, 10MB)'
    ),
    'bad-status-page.yaml': (
        'bad-status-page.yaml:3: services.demo.status_page: invalid URL "status.example.com" (must be '
        'http:// or https:// with a host)'
    ),
    'bad-status-page-format.yaml': (
        'bad-status-page-format.yaml:5: services.demo.status_page.format: must be one of auto, statuspage, '
        'incidentio, instatus, betterstack, rootly, gcloud, feed, got "atlassian"'
    ),
    'status-page-without-url.yaml': (
        'status-page-without-url.yaml:3: services.demo.status_page: missing required key "url"'
    ),
    'unknown-status-page-key.yaml': (
        'unknown-status-page-key.yaml:5: services.demo.status_page.component: unknown key "component" '
        '(known: components, format, max_body_bytes, url)'
    ),
    'bad-status-range.yaml': (
        'bad-status-range.yaml:6: services.demo.checks.home.expect.status: invalid status "299-200" '
        '(use codes 100-599, ranges like 2xx or 200-299)'
    ),
    'bad-status.yaml': (
        'bad-status.yaml:6: services.demo.checks.home.expect.status: invalid status "600" (use codes '
        '100-599, ranges like 2xx or 200-299)'
    ),
    'bad-url-ipv6.yaml': (
        'bad-url-ipv6.yaml:5: services.demo.checks.home.url: invalid URL "http://[::1/" (must be '
        'http:// or https:// with a host)'
    ),
    'bad-url-port.yaml': (
        'bad-url-port.yaml:5: services.demo.checks.home.url: invalid URL "https://example.com:99999/" '
        '(must be http:// or https:// with a host)'
    ),
    'bad-url-scheme.yaml': (
        'bad-url-scheme.yaml:5: services.demo.checks.home.url: invalid URL "ftp://example.com/" (must '
        'be http:// or https:// with a host)'
    ),
    'bad-var-name.yaml':
        'bad-var-name.yaml:6: services.demo.checks.home.body: invalid variable "${1ST_VAR}"',
    'body-and-json.yaml':
        'body-and-json.yaml:8: services.demo.checks.home.json: set either "body" or "json", not both',
    'control-character.yaml': (
        'control-character.yaml:7: invalid YAML: unacceptable character #x0007: control characters are '
        'not allowed'
    ),
    'credential-no-directory.yaml': (
        'credential-no-directory.yaml:4: notify.webhooks[0].secret: ${file:token} needs $CREDENTIAL'
        'S_DIRECTORY (systemd LoadCredential=)'
    ),
    'credential-not-utf8.yaml': (
        'credential-not-utf8.yaml:6: services.demo.checks.home.headers.Authorization: cannot read '
        'credential binary-token: not UTF-8 text'
    ),
    'deep-nesting.yaml':
        'deep-nesting.yaml:1: invalid YAML: while increasing flow level, exceeded maximum nesting depth',
    'defaults-bad-interval.yaml': (
        'defaults-bad-interval.yaml:2: defaults.interval: invalid duration "30x" (use e.g. 500ms, 30s, '
        '5m, 1h, 7d)'
    ),
    'defaults-bad-status.yaml': (
        'defaults-bad-status.yaml:3: defaults.expect.status: invalid status "700" (use codes 100-599, '
        'ranges like 2xx or 200-299)'
    ),
    'defaults-body-and-json.yaml': (
        'defaults-body-and-json.yaml:9: services.demo.checks.home.json: set either "body" or "json", '
        'not both'
    ),
    'defaults-timeout-exceeds-interval.yaml': (
        'defaults-timeout-exceeds-interval.yaml:3: defaults.timeout: timeout (6s) must not exceed '
        'interval (5s)'
    ),
    'defaults-unknown-expect-key.yaml': (
        'defaults-unknown-expect-key.yaml:3: defaults.expect.body: unknown key "body" (known: body_'
        'contains, body_not_contains, body_not_regex, body_regex, cert_min_days, headers, json, max'
        '_latency, max_stall, max_ttft, status)'
    ),
    'defaults-wrong-type-expect.yaml':
        'defaults-wrong-type-expect.yaml:2: defaults.expect: must be a mapping, got a list',
    'duplicate-key.yaml':
        'duplicate-key.yaml:8: services.demo.checks.home.interval: duplicate key',
    'duration-without-unit.yaml': (
        'duration-without-unit.yaml:6: services.demo.checks.home.timeout: invalid duration 5 (add a '
        'unit: 5s)'
    ),
    'empty-file.yaml':
        'empty-file.yaml:1: services: no checks configured (add at least one service with one check)',
    'empty-status.yaml':
        'empty-status.yaml:6: services.demo.checks.home.expect.status: must list at least one status',
    'interval-below-default-timeout.yaml': (
        'interval-below-default-timeout.yaml:6: services.demo.checks.home.interval: timeout (10s) must '
        'not exceed interval (5s)'
    ),
    'json-body-not-serializable.yaml': (
        'json-body-not-serializable.yaml:7: services.demo.checks.home.json: Object of type date is not '
        'JSON serializable'
    ),
    'merge-key.yaml':
        'merge-key.yaml:8: services.demo.checks.home.<<: YAML merge keys (<<) are not supported',
    'missing-credential.yaml': (
        'missing-credential.yaml:4: notify.webhooks[0].secret: cannot read credential missing-token'
        ': No such file or directory'
    ),
    'missing-url.yaml':
        'missing-url.yaml:4: services.demo.checks.home: missing required key "url"',
    'multiple-documents.yaml': (
        'multiple-documents.yaml:6: invalid YAML: expected a single document in the stream, but found '
        'another document'
    ),
    'negative-size.yaml': (
        'negative-size.yaml:6: services.demo.checks.home.max_body_bytes: invalid size -1 (must not be '
        'negative)'
    ),
    'no-checks.yaml':
        'no-checks.yaml:4: services.demo.checks: no checks (a service needs at least one)',
    'no-services.yaml':
        'no-services.yaml:2: services: no checks configured (add at least one service with one check)',
    'non-string-key.yaml':
        'non-string-key.yaml:8: services.demo.checks.home.expect.404: keys must be strings, got 404',
    'not-utf8.yaml':
        'not-utf8.yaml:3: not UTF-8 text',
    'recursive-alias.yaml':
        'recursive-alias.yaml:1: x-loop[1]: recursive YAML alias',
    'regex-too-large.yaml': (
        'regex-too-large.yaml:6: services.demo.checks.home.expect.body_regex: invalid regex: the '
        'repetition number is too large'
    ),
    'root-not-mapping.yaml':
        'root-not-mapping.yaml:1: must be a mapping, got a list',
    'secret-in-error.yaml': (
        'secret-in-error.yaml:5: services.demo.checks.home.url: invalid URL '
        '"example.com/v1/models?key=<redacted>" (must be http:// or https:// with a host)'
    ),
    'service-without-checks.yaml':
        'service-without-checks.yaml:2: services.demo: no checks (a service needs at least one)',
    'timeout-exceeds-interval.yaml': (
        'timeout-exceeds-interval.yaml:7: services.demo.checks.home.timeout: timeout (10s) must not '
        'exceed interval (5s)'
    ),
    'unclosed-var.yaml':
        'unclosed-var.yaml:6: services.demo.checks.home.body: unclosed "${" (write $$ for a literal $)',
    'unhashable-key.yaml':
        'unhashable-key.yaml:7: invalid YAML: while constructing a mapping, found unhashable key',
    'unknown-check-key.yaml': (
        'unknown-check-key.yaml:6: services.demo.checks.home.intervall: unknown key "intervall" (kn'
        'own: body, close_after, critical, expect, follow_redirects, format, headers, idle_timeout,'
        ' interval, ip_protocol, json, kind, max_body_bytes, method, open_after, proxy_url, steps, '
        'timeout, tls, url)'
    ),
    'unknown-defaults-key.yaml': (
        'unknown-defaults-key.yaml:2: defaults.intervall: unknown key "intervall" (known: body, clo'
        'se_after, critical, expect, follow_redirects, format, headers, idle_timeout, interval, ip_'
        'protocol, json, kind, max_body_bytes, method, open_after, proxy_url, steps, timeout, tls)'
    ),
    'unknown-expect-key.yaml': (
        'unknown-expect-key.yaml:8: services.demo.checks.home.expect.body_contain: unknown key "bod'
        'y_contain" (known: body_contains, body_not_contains, body_not_regex, body_regex, cert_min_'
        'days, headers, json, max_latency, max_stall, max_ttft, status)'
    ),
    'unknown-key.yaml': (
        'unknown-key.yaml:2: service: unknown key "service" (known: defaults, limits, listen, locat'
        'ion, notify, public_url, services, status_page_interval, storage, web_config)'
    ),
    'unknown-limits-key.yaml': (
        'unknown-limits-key.yaml:2: limits.max_inflight: unknown key "max_inflight" (known: '
        'max_in_flight, per_host_rate)'
    ),
    'unknown-service-key.yaml': (
        'unknown-service-key.yaml:3: services.demo.name: unknown key "name" (known: checks, '
        'maintenance, status_page, title)'
    ),
    'unknown-tag.yaml':
        "unknown-tag.yaml:6: invalid YAML: could not determine a constructor for the tag '!upper'",
    'unset-env.yaml': (
        'unset-env.yaml:4: notify.webhooks[0].secret: environment variable DEMO_TOKEN is not set (w'
        'rite ${DEMO_TOKEN:-default} to give a default)'
    ),
    'url-in-defaults.yaml': (
        'url-in-defaults.yaml:2: defaults.url: unknown key "url" (known: body, close_after, critica'
        'l, expect, follow_redirects, format, headers, idle_timeout, interval, ip_protocol, json, k'
        'ind, max_body_bytes, method, open_after, proxy_url, steps, timeout, tls)'
    ),
    'wrong-type-body-contains.yaml': (
        'wrong-type-body-contains.yaml:6: services.demo.checks.home.expect.body_contains: must be a '
        'string, got a mapping'
    ),
    'wrong-type-body.yaml':
        'wrong-type-body.yaml:7: services.demo.checks.home.body: must be a string, got a mapping',
    'wrong-type-check.yaml': (
        'wrong-type-check.yaml:4: services.demo.checks.home: must be a mapping, got a string\n'
        'wrong-type-check.yaml:4: services.demo.checks.home: missing required key "url"'
    ),
    'wrong-type-duration.yaml': (
        'wrong-type-duration.yaml:6: services.demo.checks.home.interval: must be a duration like 30s, '
        'got a boolean'
    ),
    'wrong-type-expect-headers.yaml': (
        'wrong-type-expect-headers.yaml:6: services.demo.checks.home.expect.headers: must be a mapping '
        'of header name to regex, got a list'
    ),
    'wrong-type-expect-json.yaml': (
        'wrong-type-expect-json.yaml:6: services.demo.checks.home.expect.json: must be a mapping, got '
        'a list'
    ),
    'wrong-type-expect.yaml':
        'wrong-type-expect.yaml:6: services.demo.checks.home.expect: must be a mapping, got a number',
    'wrong-type-header-value.yaml': (
        'wrong-type-header-value.yaml:6: services.demo.checks.home.headers: must be a string, got '
        'nothing'
    ),
    'wrong-type-headers.yaml': (
        'wrong-type-headers.yaml:6: services.demo.checks.home.headers: must be a mapping of header '
        'name to value, got a list'
    ),
    'wrong-type-listen.yaml':
        'wrong-type-listen.yaml:1: listen: must be a string, got a mapping',
    'wrong-type-method.yaml':
        'wrong-type-method.yaml:6: services.demo.checks.home.method: must be a string, got a list',
    'wrong-type-positive-int.yaml': (
        'wrong-type-positive-int.yaml:6: services.demo.checks.home.close_after: must be a whole number '
        "of at least 1, got '2'"
    ),
    'wrong-type-service.yaml': (
        'wrong-type-service.yaml:2: services.demo: must be a mapping, got a string\n'
        'wrong-type-service.yaml:2: services.demo: no checks (a service needs at least one)'
    ),
    'wrong-type-services.yaml':
        'wrong-type-services.yaml:1: services: must be a mapping, got a list',
    'wrong-type-storage-path.yaml':
        'wrong-type-storage-path.yaml:2: storage.path: must be a string, got a list',
    'wrong-type-storage.yaml':
        'wrong-type-storage.yaml:1: storage: must be a mapping, got a string',
    'wrong-type-title.yaml':
        'wrong-type-title.yaml:3: services.demo.title: must be a string, got a list',
    'yaml-syntax.yaml':
        'yaml-syntax.yaml:6: invalid YAML: while parsing a block mapping, did not find expected key',
    'yaml-tab-indent.yaml': (
        'yaml-tab-indent.yaml:2: invalid YAML: while scanning for the next token, found character that '
        'cannot start any token'
    ),
    'yaml-unclosed-flow.yaml': (
        'yaml-unclosed-flow.yaml:4: invalid YAML: while parsing a flow mapping, did not find expected '
        "',' or '}'"
    ),
    'zero-duration.yaml': (
        'zero-duration.yaml:6: services.demo.checks.home.interval: invalid duration "0s" (must be more '
        'than 0)'
    ),
    'bad-ip-protocol.yaml': (
        'bad-ip-protocol.yaml:6: services.demo.checks.home.ip_protocol: must be one of auto, ip4, i'
        'p6, got "ipv6"'
    ),
    'bad-proxy-url.yaml': (
        'bad-proxy-url.yaml:6: services.demo.checks.home.proxy_url: invalid proxy URL "https://prox'
        'y.example:3128/" (use http://[user:password@]host:port)'
    ),
    'tls-unknown-key.yaml': (
        'tls-unknown-key.yaml:7: services.demo.checks.home.tls.ca: unknown key "ca" (known: ca_file'
        ', cert_file, insecure_skip_verify, key_file, server_name)'
    ),
    'tls-missing-file.yaml': (
        'tls-missing-file.yaml:7: services.demo.checks.home.tls.ca_file: cannot use "no-such-ca.pem'
        '": No such file or directory'
    ),
    'tls-key-without-cert.yaml': (
        'tls-key-without-cert.yaml:6: services.demo.checks.home.tls.key_file: "key_file" needs "cer'
        't_file"'
    ),
    'max-stall-not-stream.yaml': (
        'max-stall-not-stream.yaml:6: services.demo.checks.home.expect.max_stall: "max_stall" needs'
        ' kind: stream'
    ),
    'bad-idna-host.yaml': (
        'bad-idna-host.yaml:5: services.demo.checks.home.url: invalid host name "a\u200db.example" in UR'
        "L (Joiner U+200D not allowed at position 2 in 'a\\u200db')"
    ),
    'bad-group-wait.yaml': (
        'bad-group-wait.yaml:2: notify.group_wait: invalid duration "soon" (use e.g. 500ms, 30s, 5m, 1h,'
        ' 7d)'
    ),
    'bad-public-url.yaml': (
        'bad-public-url.yaml:1: public_url: invalid URL "status.example.org" (must be http:// or https:/'
        '/ with a host)'
    ),
    'target-apprise-rejects.yaml': (
        'target-apprise-rejects.yaml:4: notify.targets[0].url: Apprise cannot use this slack:// URL: An '
        'invalid Slack (second) Token (<redacted>) was specified.'
    ),
    'target-bad-kind.yaml': (
        'target-bad-kind.yaml:5: notify.targets[0].kinds: must be one of down, degraded, closed, got "re'
        'covered"'
    ),
    'target-bad-name.yaml': (
        'target-bad-name.yaml:3: notify.targets[0].name: invalid target name "Ops Team" (use lowercase l'
        'etters, digits, _ and -)'
    ),
    'target-closed-only.yaml': (
        'target-closed-only.yaml:5: notify.targets[0].kinds: closed alone sends nothing: add down and/or'
        ' degraded'
    ),
    'target-duplicate-name.yaml': (
        'target-duplicate-name.yaml:5: notify.targets[1].name: duplicate target name "ops"'
    ),
    'target-missing-url.yaml': (
        'target-missing-url.yaml:3: notify.targets[0]: missing required key "url"'
    ),
    'target-secret-in-error.yaml': (
        'target-secret-in-error.yaml:4: notify.targets[0].url: Apprise cannot use this slack:// URL: An '
        'invalid Slack (second) Token (<redacted>) was specified.'
    ),
    'target-unknown-scheme.yaml': (
        'target-unknown-scheme.yaml:4: notify.targets[0].url: unknown Apprise scheme "fax://" (see https'
        '://appriseit.com/services/)'
    ),
    'target-unknown-service.yaml': (
        'target-unknown-service.yaml:5: notify.targets[0].services: unknown service "deepseek"'
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_config(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "binary-token").write_bytes(b"\xff\xfe\x00")
    if name in NO_CREDENTIALS_DIRECTORY:
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    else:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.chdir(INVALID_DIR)
    with pytest.raises(ConfigError) as info:
        load_file(name, env=INVALID_ENV)
    assert str(info.value) == INVALID[name]
    assert info.value.errors == INVALID[name].split("\n")


def test_every_invalid_file_has_an_expected_error() -> None:
    files = {p.name for p in INVALID_DIR.iterdir()}
    assert sorted(files - INVALID.keys()) == []  # new file: add its exact error to INVALID
    assert sorted(INVALID.keys() - files) == []  # entry without a file


def test_invalid_errors_never_show_a_secret() -> None:
    for expected in INVALID.values():
        assert INVALID_ENV["API_KEY"] not in expected
    assert "key=<redacted>" in INVALID["secret-in-error.yaml"]


def test_unreadable_file_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_file(INVALID_DIR / "does-not-exist.yaml", env={})
    assert str(info.value) == f"{INVALID_DIR / 'does-not-exist.yaml'}: cannot read: No such file or directory"


# --- valid configs -------------------------------------------------------------------------

def config(text: str, env: dict[str, str] | None = None) -> Config:
    return parse(textwrap.dedent(text), name="config.yaml", env=env or {})


def one_check(lines: str = "", env: dict[str, str] | None = None) -> CheckConfig:
    """The only check of a config; `lines` are the check's keys besides url."""
    body = textwrap.indent(textwrap.dedent(lines), " " * 8)
    text = "services:\n  demo:\n    checks:\n      home:\n        url: https://example.com/\n" + body
    cfg = parse(text, name="config.yaml", env=env or {})
    assert len(cfg.checks) == 1
    return cfg.checks[0]


def test_minimal_config_gets_builtin_defaults() -> None:
    cfg = config("""\
        services:
          demo:
            checks:
              home:
                url: https://example.com/
        """)
    assert (cfg.path, cfg.listen_host, cfg.listen_port) == ("config.yaml", "127.0.0.1", 9478)
    assert cfg.location == "local"
    assert (cfg.storage_path, cfg.results_retention) == (None, 14 * 86400)
    assert (cfg.max_in_flight, cfg.per_host_rate) == (1000, 20.0)
    assert cfg.secrets == frozenset()
    (service,) = cfg.services
    assert (service.id, service.title, service.status_page) == ("demo", "demo", None)
    (check,) = service.checks
    assert (check.key, check.url, check.host, check.line) == (("demo", "home"), "https://example.com/",
                                                              "example.com", 4)
    assert (check.kind, check.method, check.headers, check.body) == ("http", "GET", (), None)
    assert (check.interval, check.timeout, check.open_after, check.close_after) == (30.0, 10.0, 3, 2)
    assert (check.max_body_bytes, check.critical) == (1024 * 1024, True)
    assert check.expect.status is None
    assert [check.expect.accepts(s) for s in (199, 200, 204, 299, 300, 401)] == [False, True, True, True,
                                                                                 False, False]
    assert check.expect.needs_body is False


def test_top_level_keys() -> None:
    cfg = config("""\
        listen: 0.0.0.0:9100
        location: eu-west-1.a
        storage:
          path: /var/lib/aipulse/aipulse.db
          results_retention: 7d
        limits:
          max_in_flight: 50
          per_host_rate: 2.5
        services:
          deepseek:
            title: DeepSeek
            status_page: https://status.deepseek.com/api/v2/summary.json
            checks:
              website:
                url: https://www.deepseek.com/
        """)
    assert (cfg.listen_host, cfg.listen_port, cfg.location) == ("0.0.0.0", 9100, "eu-west-1.a")
    assert (cfg.storage_path, cfg.results_retention) == ("/var/lib/aipulse/aipulse.db", 7 * 86400.0)
    assert (cfg.max_in_flight, cfg.per_host_rate) == (50, 2.5)
    (service,) = cfg.services
    assert (service.id, service.title) == ("deepseek", "DeepSeek")
    assert service.status_page == "https://status.deepseek.com/api/v2/summary.json"
    assert service.status_page_spec == PageSpec("https://status.deepseek.com/api/v2/summary.json")


def test_status_page_with_format_and_components() -> None:
    cfg = parse(textwrap.dedent("""\
        services:
          gemini:
            status_page:
              url: https://status.cloud.google.com/incidents.json
              format: gcloud
              components: [Vertex Gemini API]
              max_body_bytes: 32MiB
            checks:
              api:
                url: https://generativelanguage.googleapis.com/v1beta/models
        """))
    (service,) = cfg.services
    assert service.status_page == "https://status.cloud.google.com/incidents.json"
    assert service.status_page_spec == PageSpec("https://status.cloud.google.com/incidents.json", "gcloud",
                                                ("Vertex Gemini API",), 32 * 1024 * 1024)


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:9478", "127.0.0.1", 9478),
    ("'[::1]:9100'", "::1", 9100),
    ("':9000'", "0.0.0.0", 9000),
    ("localhost:0", "localhost", 0),
])
def test_listen(listen: str, host: str, port: int) -> None:
    cfg = config(f"listen: {listen}\nservices: {{s: {{checks: {{c: {{url: http://x/}}}}}}}}\n")
    assert (cfg.listen_host, cfg.listen_port) == (host, port)


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("7d", 604800.0),
    ("1.5s", 1.5), ("1w", 604800.0), ("1m30s500ms", 90.5),
])
def test_durations(text: str, seconds: float) -> None:
    check = one_check(f"interval: {text}\ntimeout: 100ms\nexpect: {{max_latency: {text}}}")
    assert check.interval == seconds
    assert check.expect.max_latency == seconds
    assert check.timeout == 0.1


@pytest.mark.parametrize(("text", "size"), [
    ("1MiB", 1048576), ("512KB", 512000), ("512KiB", 524288), ("10 MB", 10_000_000), ("1GiB", 1 << 30),
    ("100B", 100), ("4096", 4096), ("0", 0), ('"2048"', 2048),
])
def test_sizes(text: str, size: int) -> None:
    assert one_check(f"max_body_bytes: {text}").max_body_bytes == size


def test_environment_variables() -> None:
    env = {"TOKEN": "tok-secret-1", "REGION": "eu", "EMPTY": ""}
    check = one_check("""\
        headers:
          Authorization: Bearer ${TOKEN}
          X-Region: ${REGION:-us}
          X-Tier: ${TIER:-free}
          X-Empty: "[${EMPTY:-unused}]"
          X-Price: $$5 or $${NOT_A_VAR}
        """, env=env)
    assert dict(check.headers) == {
        "Authorization": "Bearer tok-secret-1",
        "X-Region": "eu",            # set: the default is not used
        "X-Tier": "free",            # unset: the default
        "X-Empty": "[]",             # set to empty still counts as set
        "X-Price": "$5 or ${NOT_A_VAR}",
    }


def test_variable_values_are_secrets_defaults_are_not() -> None:
    cfg = parse(
        "services:\n  demo:\n    checks:\n      home:\n"
        "        url: https://${HOST}/v1?key=${KEY}\n        body: ${MODE:-plain}\n",
        name="config.yaml", env={"HOST": "api.example.com", "KEY": "k-123456"},
    )
    assert cfg.checks[0].url == "https://api.example.com/v1?key=k-123456"
    assert cfg.checks[0].body == b"plain"
    assert cfg.secrets == frozenset({"api.example.com", "k-123456"})


def test_variables_never_change_the_yaml_structure() -> None:
    check = one_check('body: "${PAYLOAD}"', env={"PAYLOAD": "a: [1]\nb: {c: 2}"})
    assert check.body == b"a: [1]\nb: {c: 2}"


def test_variables_only_in_strings() -> None:
    check = one_check("open_after: 4\nheaders: {X-Dollar: \"$\"}", env={})
    assert check.open_after == 4
    assert check.headers == (("X-Dollar", "$"),)  # a lone $ without { is kept as is


def test_credential_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "deepseek.key").write_text("sk-from-credential\n")  # the trailing newline is dropped
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = parse(
        "services:\n  demo:\n    checks:\n      home:\n        url: https://example.com/\n"
        "        headers: {Authorization: \"Bearer ${file:deepseek.key}\"}\n",
        name="config.yaml", env={},
    )
    assert cfg.checks[0].headers == (("Authorization", "Bearer sk-from-credential"),)
    # the variable's value, and the whole Authorization value (a credential header)
    assert cfg.secrets == frozenset({"sk-from-credential", "Bearer sk-from-credential"})


def test_defaults_are_merged_builtin_then_defaults_then_check() -> None:
    cfg = config("""\
        defaults:
          interval: 1m
          timeout: 5s
          open_after: 5
          critical: false
          headers: {User-Agent: aipulse}
          expect:
            status: [200]
            body_contains: ok
        services:
          demo:
            checks:
              fast:
                url: https://example.com/fast
                interval: 10s
                expect: {body_regex: "^ok"}
              plain:
                url: https://example.com/plain
              auth:
                url: https://example.com/auth
                headers: {Authorization: Bearer x}
                critical: true
                expect: {status: [401]}
        """)
    fast, plain, auth = cfg.checks
    # check > defaults > built-in
    assert (fast.interval, fast.timeout, fast.open_after, fast.close_after) == (10.0, 5.0, 5, 2)
    assert (plain.interval, plain.timeout, plain.open_after, plain.close_after) == (60.0, 5.0, 5, 2)
    assert (fast.critical, plain.critical, auth.critical) == (False, False, True)
    # a mapping other than `expect` is replaced, not merged
    assert plain.headers == (("User-Agent", "aipulse"),)
    assert auth.headers == (("Authorization", "Bearer x"),)
    # `expect` merges key by key
    assert fast.expect.status == frozenset({200})
    assert fast.expect.body_contains == ("ok",)
    assert fast.expect.body_regex is not None and fast.expect.body_regex.pattern == "^ok"
    assert (plain.expect.status, plain.expect.body_contains, plain.expect.body_regex) == (
        frozenset({200}), ("ok",), None)
    assert (auth.expect.status, auth.expect.body_contains) == (frozenset({401}), ("ok",))


def test_json_body_sets_content_type() -> None:
    check = one_check("method: post\njson: {model: deepseek-chat, max_tokens: 1, stream: false}")
    assert check.method == "POST"
    assert check.body == b'{"model": "deepseek-chat", "max_tokens": 1, "stream": false}'
    assert check.headers == (("Content-Type", "application/json"),)


def test_json_body_keeps_an_explicit_content_type() -> None:
    check = one_check("method: POST\nheaders: {content-type: application/vnd.api+json}\njson: [1, 2]")
    assert check.body == b"[1, 2]"
    assert check.headers == (("content-type", "application/vnd.api+json"),)


def test_string_body_is_sent_as_is() -> None:
    check = one_check("method: PUT\nbody: 'ping=1'")
    assert (check.method, check.body, check.headers) == ("PUT", b"ping=1", ())


@pytest.mark.parametrize(("status", "codes"), [
    ("[2xx]", set(range(200, 300))),
    ("['200-299']", set(range(200, 300))),
    ("[200, 401]", {200, 401}),
    ("[2xx, 404, 500-502]", {*range(200, 300), 404, 500, 501, 502}),
    ("204", {204}),
    ("5xx", set(range(500, 600))),
    ('["503"]', {503}),  # quoted, as from ${VAR}
])
def test_status_lists(status: str, codes: set[int]) -> None:
    expect = one_check(f"expect: {{status: {status}}}").expect
    assert expect.status == frozenset(codes)
    assert [s for s in (199, 200, 204, 299, 401, 404, 500, 502, 503, 599) if expect.accepts(s)] == sorted(
        codes & {199, 200, 204, 299, 401, 404, 500, 502, 503, 599})


def test_expect_assertions() -> None:
    expect = one_check("""\
        expect:
          body_contains: [DeepSeek, chat]
          body_regex: '"status":\\s*"ok"'
          json: {"$.data[0].id": deepseek-chat, "$.object": list}
          headers: {Content-Type: "^application/json"}
          max_latency: 2s
          cert_min_days: 14
        """).expect
    assert expect.body_contains == ("DeepSeek", "chat")
    assert expect.body_regex is not None and expect.body_regex.search('{"status":  "ok"}') is not None
    assert [(a.path, a.expected) for a in expect.json] == [("$.data[0].id", "deepseek-chat"),
                                                           ("$.object", "list")]
    assert expect.json[0].compiled.findall({"data": [{"id": "deepseek-chat"}]}) == ["deepseek-chat"]
    assert [(name, rx.pattern) for name, rx in expect.headers] == [("content-type", "^application/json")]
    assert (expect.max_latency, expect.cert_min_days, expect.needs_body) == (2.0, 14.0, True)
    assert one_check("expect: {body_contains: only}").expect.body_contains == ("only",)


def test_yaml_aliases_are_expanded() -> None:
    cfg = config("""\
        services:
          demo:
            checks:
              a:
                url: https://example.com/a
                headers: &common {Accept: application/json, User-Agent: aipulse}
              b:
                url: https://example.com/b
                headers: *common
        """)
    common = (("Accept", "application/json"), ("User-Agent", "aipulse"))
    assert [c.headers for c in cfg.checks] == [common, common]


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        config("""\
            listen: localhost
            limits: {max_in_flight: 0}
            services:
              Demo:
                checks:
                  home:
                    url: https://example.com/
                    interval: 30x
                  api:
                    expect: {status: [42]}
            """)
    assert info.value.errors == [
        'config.yaml:1: listen: invalid listen address "localhost" (use HOST:PORT, e.g. 127.0.0.1:9478)',
        "config.yaml:2: limits.max_in_flight: must be a whole number of at least 1, got 0",
        'config.yaml:4: services.Demo: invalid service id "Demo" (use lowercase letters, digits, _ and -)',
        'config.yaml:8: services.Demo.checks.home.interval: invalid duration "30x" '
        "(use e.g. 500ms, 30s, 5m, 1h, 7d)",
        'config.yaml:9: services.Demo.checks.api: missing required key "url"',
        'config.yaml:10: services.Demo.checks.api.expect.status: invalid status "42" '
        "(use codes 100-599, ranges like 2xx or 200-299)",
    ]
    assert str(info.value) == "\n".join(info.value.errors)


def test_error_format_is_file_line_keypath_message() -> None:
    pattern = re.compile(r"[\w.-]+\.yaml:\d+: (\S+: )?\S.*")  # the key path is absent for YAML errors
    for expected in INVALID.values():
        for line in expected.split("\n"):
            assert pattern.fullmatch(line), line


def test_a_check_needing_a_key_this_machine_lacks_is_skipped_not_failed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = parse("""
services:
  openai:
    checks:
      website: {url: "https://openai.com/"}
      inference:
        url: https://api.openai.com/v1/chat/completions
        headers: {Authorization: "Bearer ${OPENAI_API_KEY}"}
      billing:
        url: https://api.openai.com/v1/usage
        headers: {Authorization: "Bearer ${file:openai.key}"}
""", name="config.yaml", env={})
    assert [c.id for c in cfg.checks] == ["website"]
    assert cfg.skipped == (("openai", "inference", "${OPENAI_API_KEY}"),
                           ("openai", "billing", "${file:openai.key}"))


def test_a_config_whose_every_check_needs_a_missing_key_is_still_valid() -> None:
    cfg = parse("""
services:
  s:
    checks:
      c: {url: "https://x.example/?key=${KEY}"}
""", name="config.yaml", env={})
    assert cfg.checks == [] and cfg.skipped == (("s", "c", "${KEY}"),)


def test_literal_credentials_in_headers_and_queries_are_secrets_too() -> None:
    cfg = parse(
        "services:\n  demo:\n    checks:\n      home:\n"
        "        url: https://api.example.com/v1/models?key=AIzaLiteral123&page=2\n"
        "        headers: {x-api-key: sk-ant-literal-999, anthropic-version: '2023-06-01',"
        " Authorization: Bearer tok-abcdef}\n",
        name="config.yaml", env={},
    )
    assert cfg.secrets == frozenset({"AIzaLiteral123", "sk-ant-literal-999", "Bearer tok-abcdef",
                                     "tok-abcdef"})


def test_header_values_with_line_breaks_are_rejected_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        parse("services:\n  d:\n    checks:\n      c:\n        url: https://x.example/\n"
              "        headers: {Authorization: \"Bearer ${K}\"}\n",
              name="config.yaml", env={"K": "sk-secret-value\r"})
    assert str(info.value) == ("config.yaml:6: services.d.checks.c.headers: header Authorization: "
                               "the value holds a line break or NUL (check the variable)")


def test_a_host_asked_for_more_than_its_rate_is_warned_about() -> None:
    checks = "".join(f"      c{i}: {{url: 'http://api.example/{i}', interval: 1s, timeout: 1s}}\n"
                     for i in range(30))
    text = "limits: {per_host_rate: 20}\nservices:\n  s:\n    checks:\n" + checks
    text += "      other: {url: 'http://web.example/', interval: 1s, timeout: 1s}\n"
    cfg = parse(text, "c.yaml", env={})
    assert cfg.notes() == ["host api.example: its checks ask for 30 requests/s, above "
                           "limits.per_host_rate (20/s); they will start late"]
    assert parse(text.replace("per_host_rate: 20", "per_host_rate: 30"), "c.yaml", env={}).notes() == []


def test_notify_targets_defaults_and_their_urls_stay_out_of_reprs() -> None:
    cfg = config("""
        public_url: https://status.example.org/
        notify:
          targets:
            - name: ops-mail
              url: mailtos://alerts:${SMTP_PW}@mail.example.org?to=oncall@example.org
            - name: chat
              url: slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7
              services: [demo]
              kinds: [down, closed]
              min_duration: 2m
              max_attempts: 3
              retry_initial: 500ms
        services:
          demo:
            checks:
              home: {url: "https://example.com/"}
        """, env={"SMTP_PW": "hunter2-smtp"})
    mail, chat = cfg.targets
    assert (mail.name, mail.services, mail.kinds, mail.min_duration, mail.max_attempts) == (
        "ops-mail", None, frozenset({"down", "degraded", "closed"}), 0.0, 5)
    assert (chat.services, chat.kinds, chat.min_duration, chat.max_attempts, chat.retry_initial) == (
        frozenset({"demo"}), frozenset({"down", "closed"}), 120.0, 3, 0.5)
    assert (cfg.group_wait, cfg.public_url) == (30.0, "https://status.example.org")
    assert "hunter2-smtp" in cfg.secrets  # redacted wherever the probes' texts are
    assert "hunter2-smtp" not in repr(cfg.targets) and "TIiajkdnlazkcOXrIdevi7" not in repr(cfg.targets)
