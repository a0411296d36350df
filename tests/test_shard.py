"""`aipulse run --shard I/N`: N instances of one location split its checks.

The assignment is a pure function (table tests: every check in exactly one shard,
stable across runs and Python hash seeds, balanced, minimal movement when N grows);
the daemon applies it on start and on every reload, and a restart with another shard
closes the windows of the checks that moved away. The end-to-end view with several
locations and a real Prometheus is tests/test_global.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from targets import serve

from monitor.config import Config, load_file, parse
from monitor.daemon import Daemon
from monitor.shard import format_shard, parse_shard, select, shard_of
from monitor.store import query_windows

ROOT = Path(__file__).resolve().parent.parent

# (service, check) -> shard for N = 2, 3, 5. Fixed: changing the hash would move
# checks between the running instances of every sharded location.
GOLDEN = {
    ("deepseek", "website"): (2, 2, 5),
    ("deepseek", "api"): (2, 2, 2),
    ("deepseek", "login"): (1, 1, 1),
    ("openai", "api"): (2, 2, 2),
    ("anthropic", "api"): (2, 3, 4),
    ("gemini", "api"): (1, 1, 1),
}

KEYS = [(f"service-{i % 37}", f"check-{i}") for i in range(3000)]


@pytest.mark.parametrize(("text", "expected"), [
    ("1/1", (1, 1)), ("2/3", (2, 3)), ("3/3", (3, 3)), (" 4 / 10 ", (4, 10)),
])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected
    assert format_shard(expected) == text.replace(" ", "")


@pytest.mark.parametrize(("text", "message"), [
    ("0/3", "I must be between 1 and N (3)"),
    ("4/3", "I must be between 1 and N (3)"),
    ("1/0", "N must be at least 1"),
    ("x", "use I/N"),
    ("2", "use I/N"),
    ("1/2/3", "use I/N"),
    ("-1/3", "use I/N"),
    ("1.5/3", "use I/N"),
    ("", "use I/N"),
])
def test_parse_shard_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf'invalid shard "{text}"') as info:
        parse_shard(text)
    assert message in str(info.value)


def test_golden_assignments() -> None:
    for (service, check), shards in GOLDEN.items():
        assert tuple(shard_of(service, check, n) for n in (2, 3, 5)) == shards, (service, check)
    assert all(shard_of(s, c, 1) == 1 for s, c in KEYS)


def assignments() -> dict[str, list[int]]:
    return {str(n): [shard_of(s, c, n) for s, c in KEYS[:300]] for n in range(1, 6)}


def test_stable_across_python_hash_seeds() -> None:
    """The same assignment in fresh interpreters with different PYTHONHASHSEEDs."""
    code = ("import json; from test_shard import assignments; print(json.dumps(assignments()))")
    here = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=here,
                              env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": here})
             for seed in ("0", "1", "4242")]
    mine = assignments()
    for proc in procs:
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert json.loads(out) == mine


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_balanced(n: int) -> None:
    counts = Counter(shard_of(s, c, n) for s, c in KEYS)
    assert set(counts) == set(range(1, n + 1))
    mean = len(KEYS) / n
    assert all(abs(count - mean) < 0.1 * mean for count in counts.values()), counts


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_adding_a_shard_moves_checks_only_to_it(n: int) -> None:
    """Jump consistent hash: from N to N+1 instances about 1/(N+1) of the checks move,
    all to the new one; the others stay where their history is."""
    moved = 0
    for s, c in KEYS:
        before, after = shard_of(s, c, n), shard_of(s, c, n + 1)
        if before != after:
            assert after == n + 1
            moved += 1
    assert abs(moved / len(KEYS) - 1 / (n + 1)) < 0.03


def big_config() -> Config:
    services = {f"svc{i}": {"title": f"Service {i}", "checks": {
        f"check{j}": {"url": f"https://svc{i}.example/{j}"} for j in range(i * 7 % 11 + 1)}}
        for i in range(12)}
    return parse(yaml.safe_dump({"services": services}), "big.yaml", env={})


@pytest.mark.parametrize("config", [big_config, lambda: load_file(ROOT / "config.yaml", env={})],
                         ids=["synthetic", "bundled"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_check_in_exactly_one_shard(config: Callable[[], Config], n: int) -> None:
    full = config()
    keys = [c.key for c in full.checks]
    assert len(keys) == len(set(keys)) > 5
    seen: Counter[tuple[str, str]] = Counter()
    for i in range(1, n + 1):
        part = select(dataclasses.replace(full, shard=(i, n)))
        seen.update(c.key for c in part.checks)
        # services keep everything but the checks of other shards; none is left empty
        originals = {s.id: s for s in full.services}
        for service in part.services:
            assert service.checks
            assert dataclasses.replace(service, checks=originals[service.id].checks) == originals[service.id]
        assert select(part) == part  # idempotent: applying it again (a reload) changes nothing
    assert seen == Counter(keys)  # no gap, no overlap


def test_one_shard_is_the_whole_config() -> None:
    full = big_config()
    assert select(full) is full


@pytest.mark.parametrize("value", ["0/3", "4/3", "x"])
def test_cli_rejects_an_invalid_shard_with_exit_2(tmp_path: Path, value: str) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"services": {"s": {"checks": {"c": {"url": "http://127.0.0.1:9/"}}}}}))
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "-c", "config.yaml", "--shard", value],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert f'--shard: invalid shard "{value}"' in proc.stderr
    assert not (tmp_path / "aipulse.db").exists()  # refused before starting anything


# -- the daemon -------------------------------------------------------------------------

CHECKS = [f"c{i}" for i in range(8)]


def in_shard(i: int, n: int, checks: list[str] = CHECKS) -> set[tuple[str, str]]:
    return {("acme", c) for c in checks if shard_of("acme", c, n) == i}


def write_config(path: Path, url: Callable[[str], str], checks: list[str]) -> None:
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "defaults": {"interval": "200ms", "timeout": "200ms", "open_after": 2, "close_after": 2},
        "services": {"acme": {"checks": {c: {"url": url(f"/switch/shard-{c}")} for c in checks}}},
    }))


async def until(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := fn()):
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return value


async def run_daemon(path: Path, db: Path, shard: tuple[int, int]) -> tuple[Daemon, asyncio.Task[None]]:
    overrides = {"storage_path": str(db), "shard": shard}
    daemon = Daemon(dataclasses.replace(load_file(path), **overrides), overrides)  # type: ignore[arg-type]
    task = asyncio.create_task(daemon.run())
    await until(lambda: daemon.live.ready or task.done())
    assert not task.done(), task.exception()
    return daemon, task


def probed(daemon: Daemon) -> set[tuple[str, str]]:
    return {key for key, stats in daemon.live.checks.items() if stats.last is not None}


async def test_the_daemon_probes_its_shard_and_filters_again_on_reload(tmp_path: Path) -> None:
    assert in_shard(1, 2) and in_shard(2, 2)  # the names below split both ways
    with serve() as target:
        cfg = tmp_path / "config.yaml"
        write_config(cfg, target.url, CHECKS[:5])
        daemon, task = await run_daemon(cfg, tmp_path / "a.db", (2, 2))
        try:
            mine = in_shard(2, 2, CHECKS[:5])
            assert set(daemon.live.checks) == mine == {c.key for c in daemon.config.checks}
            await until(lambda: probed(daemon) == mine)

            # A new file: checks added and removed; the same filter applies to it.
            write_config(cfg, target.url, CHECKS[3:])
            assert await daemon.reload() is None
            mine = in_shard(2, 2, CHECKS[3:])
            assert set(daemon.live.checks) == mine
            await until(lambda: probed(daemon) == mine)
        finally:
            daemon.stop()
            await task
    # Only this shard's checks were ever asked for.
    assert {name.removeprefix("switch/shard-") for name in target.hits} == {
        c for _, c in in_shard(2, 2, CHECKS[:5]) | in_shard(2, 2, CHECKS[3:])}


async def test_a_restart_with_another_shard_closes_the_windows_of_checks_that_moved(tmp_path: Path) -> None:
    """One instance held every check and had an outage open on `gone`; restarted as
    shard I/2 where `gone` belongs to the other shard, it closes that window (the other
    instance now owns the check) and never reports it again."""
    [gone] = [c for c in CHECKS if shard_of("acme", c, 2) == 2][:1]
    stays = [c for c in CHECKS if shard_of("acme", c, 2) == 1][:2]
    with serve() as target:
        target.mode[f"shard-{gone}"] = "503"
        cfg = tmp_path / "config.yaml"
        write_config(cfg, target.url, [gone, *stays])
        db = tmp_path / "aipulse.db"
        daemon, task = await run_daemon(cfg, db, (1, 1))
        try:
            await until(lambda: daemon.live.checks["acme", gone].window is not None)
        finally:
            daemon.stop()
            await task
        [window] = query_windows(db, check=gone)
        assert window.end is None  # open across the restart, as long as the check is ours

        daemon, task = await run_daemon(cfg, db, (1, 2))
        try:
            assert set(daemon.live.checks) == {("acme", c) for c in stays}
            assert "acme/" + gone not in {f"{s}/{c}" for s, c in daemon.scheduler._tasks}
        finally:
            daemon.stop()
            await task
        [window] = query_windows(db, check=gone)
        assert window.end is not None


async def test_a_shard_without_checks_runs_and_says_so(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """More instances than checks: the spare one serves its endpoints, probes nothing."""
    cfg = tmp_path / "config.yaml"
    write_config(cfg, lambda path: f"http://127.0.0.1:9{path}", ["c0"])
    index = 2 if shard_of("acme", "c0", 2) == 1 else 1
    daemon, task = await run_daemon(cfg, tmp_path / "a.db", (index, 2))
    try:
        assert daemon.live.checks == {} and daemon.config.services == ()
        assert await daemon.reload() is None
    finally:
        daemon.stop()
        await task
    assert f"shard {index}/2 has none of the 1 checks in the config" in caplog.text
