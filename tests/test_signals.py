"""Signals at awkward moments: a burst of SIGHUPs coalesces into at most one running
reload and one waiting, and a SIGHUP while aipulse is still starting up is held and
acted on once it is up, not fatal (`aipulse`, the console script, as systemd runs it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import free_port, start_daemon, wait_for

AIPULSE = [str(Path(sys.executable).parent / "aipulse")]


def many_checks(n: int, interval: str = "60s") -> dict[str, Any]:
    """`n` checks that take a while to parse, probing a closed port now and then."""
    return {
        "defaults": {"interval": interval, "timeout": "1s", "open_after": 5},
        "services": {f"s{j:02d}": {"checks": {f"c{i:04d}": {"url": f"http://127.0.0.1:9/{j}/{i}",
                                                             "expect": {"status": [200, 204]}}
                                              for i in range(n // 10)}} for j in range(10)},
    }


def test_a_burst_of_sighups_makes_two_reloads_not_150(tmp_path: Path) -> None:
    """Today's main queued every one: 150 reloads of this config, one after another."""
    with start_daemon(many_checks(2000), tmp_path, run_args=("--web.enable-lifecycle",)) as d:
        for _ in range(150):
            d.proc.send_signal(signal.SIGHUP)
        # Asked after the burst: answered by a reload that starts after it, not after 150.
        start = time.monotonic()
        r = httpx.post(d.url("/-/reload"), timeout=120)
        took = time.monotonic() - start
        assert r.status_code == 200, r.text
        reloads = d.log.read_text().count("config reloaded")
        assert 1 <= reloads <= 3, reloads
        time.sleep(min(5.0, took))  # nothing more is coming
        assert d.log.read_text().count("config reloaded") == reloads
        assert d.proc.poll() is None


def test_a_sighup_while_starting_is_held_then_reloads(tmp_path: Path) -> None:
    """Today's main died with exit 129 (SIGHUP's default action) when the signal came in
    the first second or so, before its event loop handled it; systemd's
    Restart=on-failure does not restart that."""
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}", **many_checks(3000)}))
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*AIPULSE, "run", "-c", str(cfg), "--db", str(tmp_path / "h.db")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        time.sleep(0.15)  # the interpreter is up; aipulse is importing and reading its config
        sent = 0
        while proc.poll() is None and "aipulse started" not in log.read_text():
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.05)
        assert proc.poll() is None, (proc.returncode, log.read_text())
        assert sent >= 3, sent  # it did arrive while starting
        wait_for(lambda: "config reloaded" in log.read_text(), timeout=30)
        text = log.read_text()
        assert "a SIGHUP came while starting: reloading the config now" in text
        assert text.count("config reloaded") <= 2, text  # held ones make one reload (two at most)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
