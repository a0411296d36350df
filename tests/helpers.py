"""Small helpers shared by tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from monitor.config import CheckConfig, Config, parse

T = TypeVar("T")


def make_config(checks: dict[str, dict[str, Any]], service: str = "svc", **top: Any) -> Config:
    """A real Config, parsed from YAML built from `checks` (check id -> check keys)."""
    doc = {"listen": "127.0.0.1:0", **top, "services": {service: {"checks": checks}}}
    return parse(yaml.safe_dump(doc), "test.yaml", env={})


def make_check(url: str, **keys: Any) -> CheckConfig:
    return make_config({"c": {"url": url, **keys}}).checks[0]


def wait_for(fn: Callable[[], T], timeout: float = 10.0, every: float = 0.02) -> T:
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(every)
