"""Sharding: N instances in one location split one config without overlap or gaps (pure).

`aipulse run --shard I/N` (1-based) probes only the checks whose (service, check) hash
falls in shard I of N. Every instance of a location runs the *same* config, so each
check is probed by exactly one of them. The hash is stable across runs, machines and
Python hash seeds (blake2b, never `hash()`), and independent of the schedule spread
(its own personalisation).

The shard of a check is a jump consistent hash (Lamping and Veach, 2014) of that
digest: going from N to N+1 instances moves only about 1/(N+1) of the checks (all of
them to the new shard), so most instances keep their checks and their history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from monitor.config import Config

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_MASK = (1 << 64) - 1


def parse_shard(text: str) -> tuple[int, int]:
    """"2/3" -> (2, 3). ValueError with a message fit for the user otherwise."""
    m = _SPEC.fullmatch(text)
    if not m:
        raise ValueError(f'invalid shard "{text}" (use I/N: this instance is shard I of N, e.g. 2/3)')
    index, total = int(m.group(1)), int(m.group(2))
    if total < 1:
        raise ValueError(f'invalid shard "{text}": N must be at least 1')
    if not 1 <= index <= total:
        raise ValueError(f'invalid shard "{text}": I must be between 1 and N ({total})')
    return index, total


def format_shard(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def _key(service: str, check: str) -> int:
    digest = hashlib.blake2b(f"{service}/{check}".encode(), digest_size=8, person=b"aipulse-shard").digest()
    return int.from_bytes(digest, "big")


def _jump(key: int, buckets: int) -> int:
    """Jump consistent hash: a bucket in [0, buckets) for a 64-bit key."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(service: str, check: str, total: int) -> int:
    """The shard (1..total) that probes this check."""
    if total < 1:
        raise ValueError("total must be at least 1")
    return _jump(_key(service, check), total) + 1


def select(config: Config) -> Config:
    """`config` with only the checks of its shard (`config.shard`); services left
    without a check in this shard are dropped (no status, no vendor page polling)."""
    index, total = config.shard
    if total == 1:
        return config
    services = []
    for service in config.services:
        checks = tuple(c for c in service.checks if shard_of(c.service, c.id, total) == index)
        if checks:
            services.append(dataclasses.replace(service, checks=checks))
    return dataclasses.replace(config, services=tuple(services))
